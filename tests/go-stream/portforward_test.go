package conmontest

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"github.com/gorilla/websocket"
)

// The forwarding target: a container in its own network namespace (the
// fixture's bundle has one) with busybox nc servers on its loopback: 8080
// echoes, 8081 says "hi" and closes.
const (
	echoPort  = 8080
	helloPort = 8081
)

func (e *env) ncContainer(cl *client.ConmonClient) string {
	e.t.Helper()

	_, pid := e.running(cl, false, "/busybox", "sh", "-c", fmt.Sprintf(
		"/busybox nc -ll -p %d -e /busybox cat & /busybox nc -ll -p %d -e /busybox echo hi",
		echoPort, helloPort))

	return fmt.Sprintf("/proc/%d/ns/net", pid)
}

// pfSession is one port-forward websocket in kubelet's protocol.
type pfSession struct {
	t    *testing.T
	conn *websocket.Conn
}

func (e *env) dialPortForward(cl *client.ConmonClient, netns string, ports ...int) *pfSession {
	e.t.Helper()

	res, err := cl.ServePortForwardContainer(rpcCtx(e.t), &client.ServePortForwardContainerConfig{NetNsPath: netns})
	if err != nil {
		e.t.Fatalf("ServePortForwardContainer: %v", err)
	}

	checkURL(e.t, res.URL, "port-forward")

	q := make([]string, 0, len(ports))
	for _, p := range ports {
		q = append(q, fmt.Sprintf("port=%d", p))
	}

	wsURL := "ws" + strings.TrimPrefix(res.URL, "http") + "?" + strings.Join(q, "&")
	dialer := websocket.Dialer{Subprotocols: []string{"v4.channel.k8s.io"}, HandshakeTimeout: 5 * time.Second}

	conn, resp, err := dialer.Dial(wsURL, nil)
	if err != nil {
		e.t.Fatalf("dial %s: %v (response %v)", wsURL, err, resp)
	}

	if conn.Subprotocol() != "v4.channel.k8s.io" {
		e.t.Errorf("negotiated %q, want v4.channel.k8s.io", conn.Subprotocol())
	}

	_ = conn.SetReadDeadline(time.Now().Add(streamTimeout))
	s := &pfSession{t: e.t, conn: conn}
	e.t.Cleanup(func() { conn.Close() })

	// Each channel opens with its port number (little endian).
	for i, p := range ports {
		for _, ch := range []byte{byte(2 * i), byte(2*i + 1)} {
			gotCh, data := s.read()
			if gotCh != ch || len(data) != 2 || int(binary.LittleEndian.Uint16(data)) != p {
				e.t.Fatalf("first message: channel %d data %v, want channel %d port %d", gotCh, data, ch, p)
			}
		}
	}

	return s
}

func (s *pfSession) read() (byte, []byte) {
	s.t.Helper()

	kind, data, err := s.conn.ReadMessage()
	if err != nil {
		s.t.Fatalf("read: %v", err)
	}

	if kind != websocket.BinaryMessage || len(data) == 0 {
		s.t.Fatalf("message type %d, %d bytes: want a binary channel message", kind, len(data))
	}

	return data[0], data[1:]
}

func (s *pfSession) write(ch byte, data string) {
	s.t.Helper()

	if err := s.conn.WriteMessage(websocket.BinaryMessage, append([]byte{ch}, data...)); err != nil {
		s.t.Fatalf("write: %v", err)
	}
}

// expectDone reads until the server's close frame, which must be 1000.
func (s *pfSession) expectDone() {
	s.t.Helper()

	for {
		_, _, err := s.conn.ReadMessage()
		if err == nil {
			continue
		}

		if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
			s.t.Fatalf("session end: %v, want a close frame 1000", err)
		}

		return
	}
}

// waitListening retries until nc listens on port inside the container.
func (e *env) waitListening(cl *client.ConmonClient, netns string) {
	e.t.Helper()

	deadline := time.Now().Add(startTimeout)

	for {
		s := e.dialPortForward(cl, netns, helloPort)

		ch, data := s.read()
		if ch == 0 && string(data) == "hi\n" {
			s.expectDone()
			return
		}

		s.conn.Close()

		if time.Now().After(deadline) {
			e.t.Fatalf("nc does not listen on %d: channel %d said %q", helloPort, ch, data)
		}

		time.Sleep(100 * time.Millisecond)
	}
}

func TestServePortForwardWebsocket(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	netns := e.ncContainer(cl)
	e.waitListening(cl, netns)

	// Two ports in one session; data both ways; the remote end closing
	// one port does not end the session while the other is open.
	t.Run("echo", func(t *testing.T) {
		s := e.dialPortForward(cl, netns, helloPort, echoPort)

		if ch, data := s.read(); ch != 0 || string(data) != "hi\n" {
			t.Fatalf("channel %d said %q, want channel 0 %q", ch, data, "hi\n")
		}

		// Pings are answered (client-go's executor needs the pongs).
		pong := make(chan string, 1)
		s.conn.SetPongHandler(func(data string) error {
			pong <- data
			return nil
		})

		if err := s.conn.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(5*time.Second)); err != nil {
			t.Fatalf("ping: %v", err)
		}

		payload := strings.Repeat("ping through the namespace\n", 2000)
		go s.write(2, payload)

		var got strings.Builder
		for got.Len() < len(payload) {
			ch, data := s.read()
			if ch != 2 {
				t.Fatalf("channel %d said %q, want echo data on channel 2", ch, data)
			}

			got.Write(data)
		}

		if got.String() != payload {
			t.Errorf("echo differs: %d bytes back, want %d", got.Len(), len(payload))
		}

		select {
		case data := <-pong:
			if data != "are you there" {
				t.Errorf("pong %q, want the ping's payload", data)
			}
		default:
			t.Error("no pong for the ping")
		}

		if err := s.conn.WriteMessage(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")); err != nil {
			t.Fatalf("close: %v", err)
		}

		s.expectDone()
	})

	// Nothing listens there: the error channel says so, then a clean end.
	t.Run("refused", func(t *testing.T) {
		s := e.dialPortForward(cl, netns, 9999)

		ch, data := s.read()
		if ch != 1 || !strings.Contains(string(data), "9999") {
			t.Fatalf("channel %d said %q, want an error on channel 1 naming the port", ch, data)
		}

		s.expectDone()
	})

	// A namespace path that does not exist: an error, no crash.
	t.Run("bad namespace", func(t *testing.T) {
		s := e.dialPortForward(cl, "/proc/0/ns/net", echoPort)

		if ch, _ := s.read(); ch != 1 {
			t.Fatalf("channel %d, want an error on channel 1", ch)
		}

		s.expectDone()
	})
}

// rawRequest sends a hand-made HTTP request and returns the status code.
func rawRequest(t *testing.T, addr, request string) int {
	t.Helper()

	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()

	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))

	if _, err := conn.Write([]byte(request)); err != nil {
		t.Fatalf("write: %v", err)
	}

	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response to %q: %v", request, err)
	}
	resp.Body.Close()

	return resp.StatusCode
}

func upgradeRequest(method, path, extra string) string {
	return method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n"
}

func TestStreamingMalformedRequests(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	c, _ := e.running(cl, false, "/busybox", "sleep", "600")

	session := func() (addr, path string) {
		res, err := cl.ServeExecContainer(rpcCtx(t), &client.ServeExecContainerConfig{
			ID: c.id, Command: []string{"/busybox", "true"}, Stdout: true,
		})
		if err != nil {
			t.Fatalf("ServeExecContainer: %v", err)
		}

		rest := strings.TrimPrefix(res.URL, "http://")
		i := strings.IndexByte(rest, '/')

		return rest[:i], rest[i:]
	}

	addr, valid := session()
	unknown := "/exec/0f8fad5b-d9cb-469f-a165-70867728950e"

	cases := []struct {
		name    string
		request string
		want    int
	}{
		{"unknown path", upgradeRequest("GET", "/nope/"+strings.TrimPrefix(valid, "/exec/"), ""), http.StatusNotFound},
		{"token not a uuid", upgradeRequest("GET", "/exec/not-a-token", ""), http.StatusBadRequest},
		{"unknown token", upgradeRequest("GET", unknown, ""), http.StatusNotFound},
		{"POST (SPDY)", upgradeRequest("POST", valid, ""), http.StatusMethodNotAllowed},
		{"GET without upgrade", "GET " + valid + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", http.StatusUpgradeRequired},
		{"garbage", "\x16\x03\x01 not http\r\n\r\n", http.StatusBadRequest},
		{"port-forward without a port", upgradeRequest("GET", "/port-forward/"+strings.TrimPrefix(valid, "/exec/"), ""), http.StatusBadRequest},
		{"wrong sub-protocol", upgradeRequest("GET", valid, "Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n"), http.StatusBadRequest},
		// The token was spent by the request before (single use).
		{"spent token", upgradeRequest("GET", valid, "Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n"), http.StatusNotFound},
	}
	for _, tc := range cases {
		if got := rawRequest(t, addr, tc.request); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}

	// A client that connects and says nothing, or hangs up mid-head, does
	// not hurt the server.
	if conn, err := net.Dial("tcp", addr); err == nil {
		_, _ = conn.Write([]byte("GET /exec/"))
		conn.Close()
	}

	// Still serving: a fresh session works.
	stdout, _, err := execStream(t, cl, c.id, execCase{command: []string{"/busybox", "echo", "-n", "alive"}})
	if err != nil || stdout != "alive" {
		t.Errorf("exec after the bad requests: %q, %v", stdout, err)
	}

	// The session store keeps at most 25: the oldest of 26 is gone.
	first := ""
	for i := 0; i < 26; i++ {
		_, p := session()
		if i == 0 {
			first = p
		}
	}

	if got := rawRequest(t, addr, upgradeRequest("GET", first, "")); got != http.StatusNotFound {
		t.Errorf("evicted session: status %d, want 404", got)
	}
}

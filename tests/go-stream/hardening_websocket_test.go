package conmontest

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"github.com/gorilla/websocket"
)

// A websocket message over the 1 MiB limit ends the session with close
// code 1009 (message too big) instead of being buffered.
func TestWebsocketMessageSizeLimit(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	conn := dialSpdyTunnel(t, cl, daemonNetns)

	// Zeros are empty SPDY DATA frames for stream 0: harmless if taken.
	go func() {
		_ = conn.SetWriteDeadline(time.Now().Add(streamTimeout))
		_ = conn.WriteMessage(websocket.BinaryMessage, make([]byte, 2<<20))
	}()

	_ = conn.SetReadDeadline(time.Now().Add(answerTimeout))

	for {
		_, _, err := conn.ReadMessage()
		if err == nil {
			continue
		}

		if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) {
			t.Fatalf("after a 2 MiB message: %v, want close code 1009", err)
		}

		if !strings.Contains(err.Error(), "1048576") {
			t.Errorf("close reason %q does not name the limit", err)
		}

		break
	}

	expectVersion(t, cl, "after the large message")
}

// At most 128 websocket sessions at a time: the next upgrade gets a 503
// that says why, and a slot freed is usable again.
func TestWebsocketSessionLimit(t *testing.T) {
	const maxSessions = 128

	e := newEnv(t)
	cl := e.startServer()

	conns := make([]*websocket.Conn, 0, maxSessions)
	for i := 0; i < maxSessions; i++ {
		conns = append(conns, dialSpdyTunnel(t, cl, daemonNetns))
	}

	res, err := cl.ServePortForwardContainer(rpcCtx(t), &client.ServePortForwardContainerConfig{NetNsPath: daemonNetns})
	if err != nil {
		t.Fatalf("ServePortForwardContainer: %v", err)
	}

	wsURL := "ws" + strings.TrimPrefix(res.URL, "http")
	dialer := websocket.Dialer{Subprotocols: []string{"SPDY/3.1+portforward.k8s.io"}, HandshakeTimeout: answerTimeout}

	over, resp, err := dialer.Dial(wsURL, nil)
	if err == nil {
		over.Close()
		t.Fatalf("session %d was accepted, want a 503", maxSessions+1)
	}

	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("session %d: %v (response %v), want 503", maxSessions+1, err, resp)
	}

	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "too many streaming sessions") {
		t.Errorf("503 body %q does not say why", body)
	}

	expectVersion(t, cl, "with every session slot taken")

	// The refused client kept its token (the check comes first): once a
	// session ends, the same URL works.
	conns[0].Close()

	if !waitFor(answerTimeout, func() bool {
		c, _, err := dialer.Dial(wsURL, nil)
		if err != nil {
			return false
		}

		c.Close()

		return true
	}) {
		t.Error("no session possible after one ended")
	}
}

package conmontest

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"github.com/gorilla/websocket"
)

// Hostile clients of the streaming server: each test checks that the
// daemon stays responsive (conmon.sock answers, new sessions work) and that
// its resources stay bounded.

// answerTimeout is how quickly a healthy daemon answers `version`.
const answerTimeout = 5 * time.Second

// expectVersion fails the test if the daemon does not answer `version`
// over conmon.sock within answerTimeout. A daemon that does not answer is
// killed, so that the test's cleanup does not wait for it forever.
func expectVersion(t *testing.T, cl *client.ConmonClient, when string) {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), answerTimeout)
	defer cancel()

	start := time.Now()
	if _, err := cl.Version(ctx, &client.VersionConfig{}); err != nil {
		_ = syscall.Kill(int(cl.PID()), syscall.SIGKILL)
		t.Fatalf("%s: version did not answer within %v (%v): %v", when, answerTimeout, time.Since(start), err)
	}
}

// spdyControl is a SPDY/3 control frame.
func spdyControl(kind uint16, flags byte, body []byte) []byte {
	f := make([]byte, 8, 8+len(body))
	binary.BigEndian.PutUint16(f[0:], 0x8003)
	binary.BigEndian.PutUint16(f[2:], kind)
	f[4] = flags
	f[5], f[6], f[7] = byte(len(body)>>16), byte(len(body)>>8), byte(len(body))

	return append(f, body...)
}

// spdySynStream is a SYN_STREAM carrying an already compressed header block.
func spdySynStream(streamID uint32, block []byte) []byte {
	body := make([]byte, 10, 10+len(block))
	binary.BigEndian.PutUint32(body[0:], streamID)

	return spdyControl(1, 0, append(body, block...))
}

// dialSpdyTunnel opens a port-forward session in client-go's SPDY tunnel
// protocol (the handshake only; the test writes frames itself).
func dialSpdyTunnel(t *testing.T, cl *client.ConmonClient, netns string) *websocket.Conn {
	t.Helper()

	res, err := cl.ServePortForwardContainer(rpcCtx(t), &client.ServePortForwardContainerConfig{NetNsPath: netns})
	if err != nil {
		t.Fatalf("ServePortForwardContainer: %v", err)
	}

	wsURL := "ws" + strings.TrimPrefix(res.URL, "http")
	dialer := websocket.Dialer{Subprotocols: []string{"SPDY/3.1+portforward.k8s.io"}, HandshakeTimeout: answerTimeout}

	conn, resp, err := dialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (response %v)", wsURL, err, resp)
	}

	t.Cleanup(func() { conn.Close() })

	return conn
}

// A header block whose zlib stream was finished (Z_FINISH) followed by a
// second header-carrying frame: the second block can never be
// decompressed. The daemon must drop the session, not spin on it.
func TestHostileSpdyHeaderStreamKeepsDaemonResponsive(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	expectVersion(t, cl, "before the session")

	conn := dialSpdyTunnel(t, cl, "/proc/self/ns/net")

	var block bytes.Buffer
	z := zlib.NewWriter(&block)
	header := []byte{0, 0, 0, 1, 0, 0, 0, 10, 's', 't', 'r', 'e', 'a', 'm', 't', 'y', 'p', 'e', 0, 0, 0, 5, 'e', 'r', 'r', 'o', 'r'}
	_, _ = z.Write(header)
	_ = z.Close() // ends the stream: nothing after it is decompressible

	msg := append(spdySynStream(1, block.Bytes()), spdySynStream(3, []byte{0x78, 0x9c, 0x01, 0x02, 0x03})...)
	if err := conn.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		t.Fatalf("write: %v", err)
	}

	// Give the daemon time to take the message in.
	time.Sleep(200 * time.Millisecond)
	expectVersion(t, cl, "after the hostile SPDY stream")

	// The session itself ends: the daemon closes the tunnel.
	_ = conn.SetReadDeadline(time.Now().Add(answerTimeout))

	for {
		if _, _, err := conn.ReadMessage(); err != nil {
			break
		}
	}
}

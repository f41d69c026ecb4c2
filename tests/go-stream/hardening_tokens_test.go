package conmontest

import (
	"bytes"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"github.com/gorilla/websocket"
)

// A streaming URL is good for 30 s only, and the daemon's log (at its most
// verbose) never holds a token whole.
func TestStreamingTokensExpireAndStayOutOfLogs(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	serve := func() string {
		res, err := cl.ServePortForwardContainer(rpcCtx(t), &client.ServePortForwardContainerConfig{NetNsPath: daemonNetns})
		if err != nil {
			t.Fatalf("ServePortForwardContainer: %v", err)
		}

		return res.URL
	}

	stale := serve()
	used := serve()

	// A used token stays out of the log too.
	dialer := websocket.Dialer{Subprotocols: []string{"SPDY/3.1+portforward.k8s.io"}, HandshakeTimeout: answerTimeout}

	c, _, err := dialer.Dial("ws"+strings.TrimPrefix(used, "http"), nil)
	if err != nil {
		t.Fatalf("dial a fresh URL: %v", err)
	}

	c.Close()

	time.Sleep(31 * time.Second)

	addr := strings.TrimPrefix(stale, "http://")
	path := addr[strings.IndexByte(addr, '/'):]
	addr = addr[:strings.IndexByte(addr, '/')]

	if got := rawRequest(t, addr, upgradeRequest("GET", path, "Sec-WebSocket-Protocol: SPDY/3.1+portforward.k8s.io\r\n")); got != http.StatusNotFound {
		t.Errorf("URL used after 31 s: status %d, want 404 (expired)", got)
	}

	log, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}

	for _, u := range []string{stale, used} {
		token := u[strings.LastIndexByte(u, '/')+1:]
		if bytes.Contains(log, []byte(token)) {
			t.Errorf("the server log holds the session token %s", token)
		}
	}

	if !bytes.Contains(log, []byte("streaming session added")) {
		t.Error("the server log has no session lines at all (log level?)")
	}
}

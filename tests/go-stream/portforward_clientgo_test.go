package conmontest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
)

// client-go's port-forwarder, as kubectl port-forward drives it over
// websockets: SPDY/3.1 tunnelled through the websocket
// (SPDY/3.1+portforward.k8s.io), one error and one data stream per
// forwarded connection.
func TestServePortForwardClientGo(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	netns := e.ncContainer(cl)
	e.waitListening(cl, netns)

	res, err := cl.ServePortForwardContainer(rpcCtx(t), &client.ServePortForwardContainerConfig{NetNsPath: netns})
	if err != nil {
		t.Fatalf("ServePortForwardContainer: %v", err)
	}

	u, err := url.Parse(res.URL)
	if err != nil {
		t.Fatal(err)
	}

	dialer, err := portforward.NewSPDYOverWebsocketDialer(u, &rest.Config{Host: u.Scheme + "://" + u.Host})
	if err != nil {
		t.Fatalf("NewSPDYOverWebsocketDialer: %v", err)
	}

	stop := make(chan struct{})
	ready := make(chan struct{})

	var out, errOut safeBuffer

	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"},
		[]string{fmt.Sprintf("0:%d", echoPort), fmt.Sprintf("0:%d", helloPort)}, stop, ready, &out, &errOut)
	if err != nil {
		t.Fatalf("portforward.New: %v", err)
	}

	done := make(chan error, 1)

	go func() { done <- pf.ForwardPorts() }()

	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("ForwardPorts: %v (stderr %q)", err, errOut.String())
	case <-time.After(streamTimeout):
		t.Fatal("port-forwarder not ready")
	}

	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 2 {
		t.Fatalf("GetPorts: %v %v", ports, err)
	}

	// Several connections through the one tunnel, each its own streams.
	for i := 0; i < 3; i++ {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local), 5*time.Second)
		if err != nil {
			t.Fatalf("dial the forwarded port: %v", err)
		}

		_ = conn.SetDeadline(time.Now().Add(streamTimeout))
		payload := []byte(strings.Repeat(fmt.Sprintf("round %d through client-go\n", i), 3000))

		go func() {
			_, _ = conn.Write(payload)
			_ = conn.(*net.TCPConn).CloseWrite()
		}()

		got, err := io.ReadAll(conn)
		conn.Close()

		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("round %d: echoed %d bytes (err %v), want %d", i, len(got), err, len(payload))
		}
	}

	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports[1].Local), 5*time.Second)
	if err != nil {
		t.Fatalf("dial the second forwarded port: %v", err)
	}

	_ = conn.SetDeadline(time.Now().Add(streamTimeout))

	got, err := io.ReadAll(conn)
	conn.Close()

	if err != nil || string(got) != "hi\n" {
		t.Errorf("second port said %q (err %v), want %q", got, err, "hi\n")
	}

	close(stop)

	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ForwardPorts: %v", err)
		}
	case <-time.After(streamTimeout):
		t.Error("ForwardPorts did not return after stop")
	}

	if s := errOut.String(); s != "" {
		t.Errorf("port-forwarder errors: %q", s)
	}
}

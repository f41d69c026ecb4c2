package conmontest

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"github.com/gorilla/websocket"
	"github.com/moby/spdystream/spdy"
)

// spdyTunnel speaks SPDY/3.1 frames over a port-forward websocket: every
// frame written goes out as one binary message, frames read come from the
// concatenated messages.
type spdyTunnel struct {
	t      *testing.T
	conn   *websocket.Conn
	out    bytes.Buffer
	in     io.Reader
	framer *spdy.Framer
}

func (s *spdyTunnel) Read(p []byte) (int, error) {
	for {
		if s.in != nil {
			n, err := s.in.Read(p)
			if err == io.EOF {
				s.in = nil
				if n > 0 {
					return n, nil
				}

				continue
			}

			return n, err
		}

		_, r, err := s.conn.NextReader()
		if err != nil {
			return 0, err
		}

		s.in = r
	}
}

func newSpdyTunnel(t *testing.T, cl *client.ConmonClient, netns string) *spdyTunnel {
	t.Helper()

	s := &spdyTunnel{t: t, conn: dialSpdyTunnel(t, cl, netns)}

	framer, err := spdy.NewFramer(&s.out, s)
	if err != nil {
		t.Fatal(err)
	}

	s.framer = framer

	return s
}

// send writes frames as one websocket message.
func (s *spdyTunnel) send(frames ...spdy.Frame) error {
	s.out.Reset()

	for _, f := range frames {
		if err := s.framer.WriteFrame(f); err != nil {
			return err
		}
	}

	_ = s.conn.SetWriteDeadline(time.Now().Add(answerTimeout))

	return s.conn.WriteMessage(websocket.BinaryMessage, s.out.Bytes())
}

func dataSyn(id uint32, port int) *spdy.SynStreamFrame {
	h := http.Header{}
	h.Set("streamtype", "data")
	h.Set("port", strconv.Itoa(port))
	h.Set("requestid", strconv.Itoa(int(id)))

	return &spdy.SynStreamFrame{StreamId: spdy.StreamId(id), Headers: h}
}

// holdingListener accepts connections on 127.0.0.1 and keeps them open,
// unread, until the test ends (or release is called).
type holdingListener struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newHoldingListener(t *testing.T) *holdingListener {
	t.Helper()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	h := &holdingListener{ln: ln}

	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}

			h.mu.Lock()
			h.conns = append(h.conns, c)
			h.mu.Unlock()
		}
	}()

	t.Cleanup(func() {
		ln.Close()
		h.release()
	})

	return h
}

func (h *holdingListener) port() int { return h.ln.Addr().(*net.TCPAddr).Port }

func (h *holdingListener) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()

	return len(h.conns)
}

func (h *holdingListener) release() {
	h.mu.Lock()
	defer h.mu.Unlock()

	for _, c := range h.conns {
		c.Close()
	}

	h.conns = nil
}

// More SYN_STREAMs than a session takes are refused with RST_STREAM
// (REFUSED_STREAM) instead of each getting a connect; finished streams
// leave the session, so the same number is accepted again afterwards.
func TestSpdyPortForwardBoundsStreams(t *testing.T) {
	const (
		maxStreams = 128
		offered    = 200
	)

	e := newEnv(t)
	cl := e.startServer()
	backend := newHoldingListener(t)
	s := newSpdyTunnel(t, cl, daemonNetns)

	// answers reads frames until every stream in ids got a SYN_REPLY or a
	// RST_STREAM; returns the replied and the refused ones.
	answers := func(ids map[uint32]bool) (replied, refused []uint32) {
		_ = s.conn.SetReadDeadline(time.Now().Add(streamTimeout))

		for len(replied)+len(refused) < len(ids) {
			f, err := s.framer.ReadFrame()
			if err != nil {
				t.Fatalf("read frame (%d replied, %d refused so far): %v", len(replied), len(refused), err)
			}

			switch f := f.(type) {
			case *spdy.SynReplyFrame:
				if ids[uint32(f.StreamId)] {
					replied = append(replied, uint32(f.StreamId))
				}
			case *spdy.RstStreamFrame:
				if ids[uint32(f.StreamId)] {
					if f.Status != spdy.RefusedStream {
						t.Errorf("stream %d reset with status %d, want REFUSED_STREAM", f.StreamId, f.Status)
					}

					refused = append(refused, uint32(f.StreamId))
				}
			}
		}

		return replied, refused
	}

	open := func(first uint32, n int) map[uint32]bool {
		ids := map[uint32]bool{}

		var frames []spdy.Frame

		for i := 0; i < n; i++ {
			id := first + uint32(2*i)
			ids[id] = true
			frames = append(frames, dataSyn(id, backend.port()))
		}

		if err := s.send(frames...); err != nil {
			t.Fatalf("send SYN_STREAMs: %v", err)
		}

		return ids
	}

	replied, refused := answers(open(1, offered))
	if len(replied) != maxStreams || len(refused) != offered-maxStreams {
		t.Fatalf("%d streams accepted and %d refused, want %d and %d", len(replied), len(refused), maxStreams, offered-maxStreams)
	}

	if !waitFor(answerTimeout, func() bool { return backend.count() == maxStreams }) || backend.count() != maxStreams {
		t.Errorf("backend saw %d connections, want %d", backend.count(), maxStreams)
	}

	expectVersion(t, cl, "with the session full")

	// Finish every accepted stream from both sides.
	backend.release()

	var fins []spdy.Frame
	for _, id := range replied {
		fins = append(fins, &spdy.DataFrame{StreamId: spdy.StreamId(id), Flags: spdy.DataFlagFin})
	}

	if err := s.send(fins...); err != nil {
		t.Fatalf("send FINs: %v", err)
	}

	time.Sleep(time.Second)

	replied, refused = answers(open(1001, maxStreams))
	if len(refused) != 0 {
		t.Errorf("after the first streams finished, %d of %d new streams were refused (finished streams still count)", len(refused), maxStreams)
	}
}

// One backend that never reads does not stall the other streams of the
// session: a second stream still echoes.
func TestSpdyPortForwardSlowBackendStallsOnlyItsStream(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	slow := newHoldingListener(t)

	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()

	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}

			go func() {
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()

	s := newSpdyTunnel(t, cl, daemonNetns)
	if err := s.send(dataSyn(1, slow.port())); err != nil {
		t.Fatal(err)
	}

	// 16 MiB for the backend that does not read, then the second stream.
	go func() {
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		for i := 0; i < 512; i++ {
			if err := s.send(&spdy.DataFrame{StreamId: 1, Data: chunk}); err != nil {
				return
			}
		}

		_ = s.send(dataSyn(3, echo.Addr().(*net.TCPAddr).Port), &spdy.DataFrame{StreamId: 3, Data: []byte("still there?")})
	}()

	_ = s.conn.SetReadDeadline(time.Now().Add(3 * streamTimeout / 2))

	for {
		f, err := s.framer.ReadFrame()
		if err != nil {
			_ = syscall.Kill(int(cl.PID()), syscall.SIGKILL)
			t.Fatalf("no echo on the second stream while the first backend does not read: %v", err)
		}

		if d, ok := f.(*spdy.DataFrame); ok && d.StreamId == 3 && len(d.Data) > 0 {
			if string(d.Data) != "still there?" {
				t.Errorf("echo %q", d.Data)
			}

			break
		}
	}

	expectVersion(t, cl, "after the slow backend")
}

// The same for kubelet's websocket port-forward protocol: a port whose
// backend does not read holds up only that port; the other port of the
// session still echoes.
func TestWebsocketPortForwardSlowBackendStallsOnlyItsPort(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	slow := newHoldingListener(t)

	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()

	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}

			go func() {
				_, _ = io.Copy(c, c)
				c.Close()
			}()
		}
	}()

	s := e.dialPortForward(cl, daemonNetns, slow.port(), echo.Addr().(*net.TCPAddr).Port)

	// 16 MiB for the backend that does not read (channel 0), then data
	// for the echo port (channel 2).
	go func() {
		chunk := append([]byte{0}, bytes.Repeat([]byte("x"), 32<<10)...)
		_ = s.conn.SetWriteDeadline(time.Now().Add(streamTimeout))

		for i := 0; i < 512; i++ {
			if err := s.conn.WriteMessage(websocket.BinaryMessage, chunk); err != nil {
				return
			}
		}

		_ = s.conn.WriteMessage(websocket.BinaryMessage, append([]byte{2}, "still there?"...))
	}()

	_ = s.conn.SetReadDeadline(time.Now().Add(3 * streamTimeout / 2))

	for {
		kind, data, err := s.conn.ReadMessage()
		if err != nil {
			_ = syscall.Kill(int(cl.PID()), syscall.SIGKILL)
			t.Fatalf("no echo on the second port while the first backend does not read: %v", err)
		}

		if kind == websocket.BinaryMessage && len(data) > 1 && data[0] == 2 {
			if string(data[1:]) != "still there?" {
				t.Errorf("echo %q", data[1:])
			}

			break
		}
	}

	expectVersion(t, cl, "after the slow backend")
}

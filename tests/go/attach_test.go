package conmontest

// Socket attach (attachContainer) and window size (setWindowSizeContainer)
// through the real Go client's AttachContainer, the way CRI-O and podman use
// it: attach first, start the container from PreAttachFunc, then talk to it
// through the attach streams.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"go.podman.io/common/pkg/resize"
)

// busybox ash's interactive prompt as root in "/": the prompt followed by
// the cursor position query ash sends before every line edit.
const shellPrompt = "/ # \x1b[6n"

// sttyLine matches the output of `stty size` followed by the next prompt.
var sttyLine = regexp.MustCompile(`\r\n(\d+ \d+)\r\n/ # `)

// syncBuffer is an io.WriteCloser collecting one attach output stream.
type syncBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	closed bool
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.Write(p)
}

func (b *syncBuffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()

	b.closed = true

	return nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.String()
}

func (b *syncBuffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()

	b.buf.Reset()
}

// attachSession is one running AttachContainer call.
type attachSession struct {
	t      *testing.T
	name   string
	stdin  *io.PipeWriter
	stdout *syncBuffer
	stderr *syncBuffer

	result   chan error // receives AttachContainer's return value once
	finished bool
	err      error
}

// attachAndStart runs AttachContainer (StopAfterStdinEOF, container stdin)
// for c in the background; the container is started by the runtime from
// PreAttachFunc, i.e. after the attach connection exists, so no output is
// missed.
func (e *env) attachAndStart(
	cl *client.ConmonClient, c *container, terminal bool, resizeCh <-chan resize.TerminalSize,
) *attachSession {
	e.t.Helper()

	pr, pw := io.Pipe()
	s := &attachSession{
		t:      e.t,
		name:   "attach " + c.id[:12],
		stdin:  pw,
		stdout: &syncBuffer{},
		stderr: &syncBuffer{},
		result: make(chan error, 1),
	}

	ctx, cancel := context.WithCancel(context.Background())

	cfg := &client.AttachConfig{
		ID:                c.id,
		SocketPath:        filepath.Join(filepath.Dir(c.bundle), "attach"),
		Tty:               terminal,
		StopAfterStdinEOF: true,
		ContainerStdin:    true,
		Resize:            resizeCh,
		Streams: client.AttachStreams{
			Stdin:  &client.In{ReadCloser: pr},
			Stdout: &client.Out{WriteCloser: s.stdout},
			Stderr: &client.Out{WriteCloser: s.stderr},
		},
		PreAttachFunc: func() error {
			_, err := e.runtime("start", c.id)

			return err
		},
	}

	go func() { s.result <- cl.AttachContainer(ctx, cfg) }()

	e.t.Cleanup(func() {
		_ = pw.Close()
		cancel()
	})

	return s
}

// poll records AttachContainer's result if it has returned.
func (s *attachSession) poll() bool {
	if s.finished {
		return true
	}

	select {
	case err := <-s.result:
		s.finished, s.err = true, err

		return true
	default:
		return false
	}
}

// failIfEnded fails (or skips, for a server without attach) the test when
// AttachContainer returned with an error while output was still expected.
func (s *attachSession) failIfEnded(waitingFor string) {
	s.t.Helper()

	if !s.poll() || s.err == nil {
		return
	}

	skipIfUnimplemented(s.t, s.err)
	s.t.Fatalf("%s: AttachContainer failed while waiting for %s: %v", s.name, waitingFor, s.err)
}

// waitOutput polls buf until cond holds (bounded by startTimeout) and
// returns its content.
func (s *attachSession) waitOutput(buf *syncBuffer, what string, cond func(string) bool) string {
	s.t.Helper()

	deadline := time.Now().Add(startTimeout)

	for {
		got := buf.String()
		if cond(got) {
			return got
		}

		s.failIfEnded(what)

		if time.Now().After(deadline) {
			s.t.Fatalf("%s: timed out waiting for %s; have stdout %q, stderr %q",
				s.name, what, s.stdout.String(), s.stderr.String())
		}

		time.Sleep(20 * time.Millisecond)
	}
}

// waitExact waits until buf holds at least len(want) bytes and checks that
// it is exactly want.
func (s *attachSession) waitExact(buf *syncBuffer, stream, want string) {
	s.t.Helper()

	got := s.waitOutput(buf, fmt.Sprintf("%d bytes on %s", len(want), stream),
		func(got string) bool { return len(got) >= len(want) })
	if got != want {
		s.t.Fatalf("%s: %s = %q, want exactly %q", s.name, stream, got, want)
	}
}

// send writes data to the attach stdin (bounded: the write blocks until the
// client's copy loop takes it).
func (s *attachSession) send(data string) {
	s.t.Helper()

	written := make(chan error, 1)

	go func() {
		_, err := s.stdin.Write([]byte(data))
		written <- err
	}()

	deadline := time.After(startTimeout)

	for {
		select {
		case err := <-written:
			if err != nil {
				s.failIfEnded(fmt.Sprintf("stdin write %q", data))
				s.t.Fatalf("%s: stdin write %q: %v", s.name, data, err)
			}

			return
		case <-deadline:
			s.t.Fatalf("%s: stdin write %q not consumed within %v", s.name, data, startTimeout)
		case <-time.After(20 * time.Millisecond):
			s.failIfEnded(fmt.Sprintf("stdin write %q", data))
		}
	}
}

// wait waits for AttachContainer to return and returns its error.
func (s *attachSession) wait(timeout time.Duration) error {
	s.t.Helper()

	if s.poll() {
		return s.err
	}

	select {
	case err := <-s.result:
		s.finished, s.err = true, err

		return err
	case <-time.After(timeout):
		s.t.Fatalf("%s: AttachContainer did not return within %v; stdout %q, stderr %q",
			s.name, timeout, s.stdout.String(), s.stderr.String())
	}

	return nil
}

// shellContainer creates a /busybox sh container with stdin.
func (e *env) shellContainer(cl *client.ConmonClient, terminal bool) *container {
	e.t.Helper()

	c := e.newContainer(terminal, "/busybox", "sh")
	cfg := c.createConfig(terminal)
	cfg.Stdin = true

	if _, err := cl.CreateContainer(rpcContext(e.t), cfg); err != nil {
		e.t.Fatalf("CreateContainer: %v", err)
	}

	return c
}

// checkExitFile waits for the container's exit file and checks its content.
func checkExitFile(t *testing.T, c *container, want string) {
	t.Helper()

	if exit := waitForFile(t, c.exitPath, startTimeout); string(exit) != want {
		t.Errorf("exit file content = %q, want %q", exit, want)
	}
}

// The upstream Attach cases: commands written to a shell's stdin, their
// output read back exactly (terminal: echo of the command, CRLF, output,
// next prompt; pipes: only the output, on the right stream), then `exit`
// ends the attach session and the container.
func TestAttachShell(t *testing.T) {
	terminalModes(t, func(t *testing.T, terminal bool) {
		e := newEnv(t)
		cl := e.startServer()
		c := e.shellContainer(cl, terminal)
		s := e.attachAndStart(cl, c, terminal, nil)

		if terminal {
			// Started after the attach: the banner and the first prompt
			// arrive too. Commands are only sent once the shell waits for
			// input, so the line editor (not the pty) echoes them.
			s.waitOutput(s.stdout, "the first prompt", func(got string) bool {
				return strings.HasSuffix(got, shellPrompt)
			})

			for _, cmd := range []string{"/busybox echo -n stdout", "/busybox echo -n stdout", "/busybox echo -n stderr >&2"} {
				s.stdout.Reset()
				s.send(cmd + "\n")

				want := cmd + "\r\n" + strings.Fields(cmd)[3] + shellPrompt
				s.waitExact(s.stdout, "terminal output", want)
			}

			if got := s.stderr.String(); got != "" {
				t.Errorf("terminal attach delivered stderr packets: %q", got)
			}
		} else {
			for i := 0; i < 2; i++ {
				s.stdout.Reset()
				s.send("/busybox echo -n stdout\n")
				s.waitExact(s.stdout, "stdout", "stdout")
			}

			if got := s.stderr.String(); got != "" {
				t.Fatalf("stderr = %q before anything was written to it", got)
			}

			s.stdout.Reset()

			for i := 0; i < 2; i++ {
				s.stderr.Reset()
				s.send("/busybox echo -n stderr >&2\n")
				s.waitExact(s.stderr, "stderr", "stderr")
			}

			if got := s.stdout.String(); got != "" {
				t.Errorf("stderr output also arrived on stdout: %q", got)
			}
		}

		s.send("exit\n")

		if err := s.wait(startTimeout); err != nil {
			t.Fatalf("AttachContainer after exit: %v", err)
		}

		checkExitFile(t, c, "0")
	})
}

// Closing the attach stdin with StopAfterStdinEOF closes the container's
// stdin: cat sees EOF and exits 0.
func TestAttachStdinEOFEndsContainer(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	c := e.newContainer(false, "/busybox", "cat")
	cfg := c.createConfig(false)
	cfg.Stdin = true

	if _, err := cl.CreateContainer(rpcContext(t), cfg); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	s := e.attachAndStart(cl, c, false, nil)

	s.send("hello attach\n")
	s.waitExact(s.stdout, "stdout", "hello attach\n")

	s.send("second line\n")
	s.waitExact(s.stdout, "stdout", "hello attach\nsecond line\n")

	if st, err := e.state(c.id); err != nil || st != "running" {
		t.Fatalf("container state before stdin EOF = %q (err %v), want running", st, err)
	}

	// EOF on the client's stdin: with StopAfterStdinEOF the client returns
	// right away and closes the connection; the server must close cat's
	// stdin.
	if err := s.stdin.Close(); err != nil {
		t.Fatal(err)
	}

	if err := s.wait(startTimeout); err != nil {
		t.Fatalf("AttachContainer after stdin EOF: %v", err)
	}

	checkExitFile(t, c, "0")
	waitForLogLine(t, c.logPath, "second line")

	if got := s.stderr.String(); got != "" {
		t.Errorf("stderr = %q, want empty", got)
	}
}

// Window size: AttachConfig.Resize events and SetWindowSizeContainer reach
// the container's pty (checked with `stty size` inside); without a terminal
// SetWindowSizeContainer fails.
func TestAttachWindowSize(t *testing.T) {
	t.Run("terminal", func(t *testing.T) {
		e := newEnv(t)
		cl := e.startServer()
		c := e.shellContainer(cl, true)

		resizeCh := make(chan resize.TerminalSize, 4)
		t.Cleanup(func() { close(resizeCh) })

		s := e.attachAndStart(cl, c, true, resizeCh)
		s.waitOutput(s.stdout, "the first prompt", func(got string) bool {
			return strings.HasSuffix(got, shellPrompt)
		})

		// stty prints "<rows> <columns>"; rows = height, columns = width.
		sttyUntil := func(want string, attempts int) {
			t.Helper()

			for i := 0; ; i++ {
				s.stdout.Reset()
				s.send("/busybox stty size\n")
				// A window change makes the line editor redraw the line
				// being typed (possibly in the middle of the echoed
				// command), so only the line before the next prompt counts.
				got := s.waitOutput(s.stdout, "stty output and prompt", func(got string) bool {
					return sttyLine.MatchString(got)
				})

				m := sttyLine.FindAllStringSubmatch(got, -1)
				if last := m[len(m)-1][1]; last == want {
					return
				}

				if i+1 >= attempts {
					t.Fatalf("stty size output %q does not contain %q", got, want)
				}

				time.Sleep(100 * time.Millisecond)
			}
		}

		// Resize events are forwarded asynchronously by the client
		// (errors only logged): poll a few times.
		// Widths above the command line's length: a narrower terminal makes
		// the line editor wrap the echoed command.
		resizeCh <- resize.TerminalSize{Width: 97, Height: 11}
		sttyUntil("11 97", 50)

		// The RPC itself is synchronous.
		if err := cl.SetWindowSizeContainer(rpcContext(t), &client.SetWindowSizeContainerConfig{
			ID:   c.id,
			Size: &resize.TerminalSize{Width: 123, Height: 45},
		}); err != nil {
			t.Fatalf("SetWindowSizeContainer with terminal: %v", err)
		}

		sttyUntil("45 123", 1)

		s.send("exit\n")

		if err := s.wait(startTimeout); err != nil {
			t.Fatalf("AttachContainer after exit: %v", err)
		}

		checkExitFile(t, c, "0")
	})

	t.Run("pipes", func(t *testing.T) {
		e := newEnv(t)
		cl := e.startServer()
		c := e.newContainer(false, "/busybox", "sleep", "600")

		if _, err := cl.CreateContainer(rpcContext(t), c.createConfig(false)); err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}

		err := cl.SetWindowSizeContainer(rpcContext(t), &client.SetWindowSizeContainerConfig{
			ID:   c.id,
			Size: &resize.TerminalSize{Width: 20, Height: 10},
		})
		if err == nil {
			t.Fatal("SetWindowSizeContainer succeeded for a container without terminal")
		}

		if !strings.Contains(err.Error(), "container has no terminal") {
			t.Errorf("error = %v, want it to mention %q", err, "container has no terminal")
		}
	})
}

// attachContainer for an unknown container fails with "child not available"
// and creates no socket.
func TestAttachUnknownContainer(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	socketPath := filepath.Join(e.dir, "nowhere", "attach")

	err := cl.AttachContainer(rpcContext(t), &client.AttachConfig{
		ID:         "does-not-exist",
		SocketPath: socketPath,
		Streams:    client.AttachStreams{Stdout: &client.Out{WriteCloser: &syncBuffer{}}},
	})
	if err == nil {
		t.Fatal("AttachContainer to an unknown container succeeded")
	}

	skipIfUnimplemented(t, err)

	if !strings.Contains(err.Error(), "child not available") {
		t.Errorf("error = %v, want it to mention %q", err, "child not available")
	}

	if _, statErr := os.Stat(socketPath); !errors.Is(statErr, os.ErrNotExist) {
		t.Errorf("attach socket created for an unknown container (stat err: %v)", statErr)
	}

	// The connection stays usable after the failed call.
	if _, err := cl.Version(rpcContext(t), &client.VersionConfig{}); err != nil {
		t.Errorf("Version after failed attach: %v", err)
	}
}

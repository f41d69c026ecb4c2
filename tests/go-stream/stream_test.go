package conmontest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

// streamTimeout bounds one streaming session of a test.
const streamTimeout = 20 * time.Second

func rpcCtx(t *testing.T) context.Context {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	t.Cleanup(cancel)

	return ctx
}

// safeBuffer is a bytes.Buffer that client-go's stream goroutines may
// write while the test reads it.
type safeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.String()
}

// running creates and starts a container running args (pipes, stdin as
// given) and returns it with its pid.
func (e *env) running(cl *client.ConmonClient, stdin bool, args ...string) (*container, uint32) {
	e.t.Helper()

	c := e.newContainer(false, args...)
	cfg := c.createConfig(false)
	cfg.Stdin = stdin

	res, err := cl.CreateContainer(rpcCtx(e.t), cfg)
	if err != nil {
		e.t.Fatalf("CreateContainer: %v", err)
	}

	if _, err := e.runtime("start", c.id); err != nil {
		e.t.Fatalf("start: %v", err)
	}

	return c, res.PID
}

// executor is client-go's websocket executor for a streaming URL.
func executor(t *testing.T, rawURL string) remotecommand.Executor {
	t.Helper()

	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse URL %q: %v", rawURL, err)
	}

	ex, err := remotecommand.NewWebSocketExecutor(&rest.Config{Host: u.Scheme + "://" + u.Host}, http.MethodGet, rawURL)
	if err != nil {
		t.Fatalf("NewWebSocketExecutor: %v", err)
	}

	return ex
}

func checkURL(t *testing.T, rawURL, kind string) {
	t.Helper()

	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" || u.Hostname() != "127.0.0.1" || u.Port() == "" ||
		!strings.HasPrefix(u.Path, "/"+kind+"/") || len(strings.TrimPrefix(u.Path, "/"+kind+"/")) != 36 {
		t.Fatalf("URL %q (err %v) is not http://127.0.0.1:<port>/%s/<uuid>", rawURL, err, kind)
	}
}

type execCase struct {
	command []string
	tty     bool
	stdin   io.Reader
}

// execStream runs one exec session through client-go and returns stdout,
// stderr and the error StreamWithContext returned.
func execStream(t *testing.T, cl *client.ConmonClient, id string, tc execCase) (string, string, error) {
	t.Helper()

	res, err := cl.ServeExecContainer(rpcCtx(t), &client.ServeExecContainerConfig{
		ID:      id,
		Command: tc.command,
		Tty:     tc.tty,
		Stdin:   tc.stdin != nil,
		Stdout:  true,
		Stderr:  !tc.tty,
	})
	if err != nil {
		t.Fatalf("ServeExecContainer: %v", err)
	}

	checkURL(t, res.URL, "exec")

	var stdout, stderr safeBuffer

	opts := remotecommand.StreamOptions{Stdin: tc.stdin, Stdout: &stdout, Tty: tc.tty}
	if !tc.tty {
		opts.Stderr = &stderr
	}

	ctx, cancel := context.WithTimeout(context.Background(), streamTimeout)
	defer cancel()

	err = executor(t, res.URL).StreamWithContext(ctx, opts)

	return stdout.String(), stderr.String(), err
}

func TestServeExecOutput(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	c, _ := e.running(cl, false, "/busybox", "sleep", "600")

	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprintf("tty=%v", tty), func(t *testing.T) {
			stdout, stderr, err := execStream(t, cl, c.id, execCase{
				command: []string{"/busybox", "sh", "-c", "echo -n stdout && echo -n stderr >&2"},
				tty:     tty,
			})
			if err != nil {
				t.Fatalf("StreamWithContext: %v", err)
			}

			wantOut, wantErr := "stdout", "stderr"
			if tty {
				wantOut, wantErr = "stdoutstderr", ""
			}

			if stdout != wantOut || stderr != wantErr {
				t.Errorf("stdout %q stderr %q; want %q and %q", stdout, stderr, wantOut, wantErr)
			}
		})
	}

	// Output written right before the exit is not lost (drained before
	// the status), also when there is a lot of it.
	t.Run("large", func(t *testing.T) {
		stdout, _, err := execStream(t, cl, c.id, execCase{
			command: []string{"/busybox", "sh", "-c", "/busybox seq 1 20000"},
		})
		if err != nil {
			t.Fatalf("StreamWithContext: %v", err)
		}

		lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
		if len(lines) != 20000 || lines[19999] != "20000" {
			t.Errorf("got %d lines (last %q), want 20000", len(lines), lines[len(lines)-1])
		}
	})
}

func TestServeExecExitCode(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	c, _ := e.running(cl, false, "/busybox", "sleep", "600")

	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprintf("tty=%v", tty), func(t *testing.T) {
			stdout, _, err := execStream(t, cl, c.id, execCase{
				command: []string{"/busybox", "sh", "-c", "echo -n before; exit 3"},
				tty:     tty,
			})

			var exitErr utilexec.ExitError
			if !errors.As(err, &exitErr) {
				t.Fatalf("StreamWithContext error %v (%T), want an exec.ExitError", err, err)
			}

			if !exitErr.Exited() || exitErr.ExitStatus() != 3 {
				t.Errorf("exit status %d (exited %v), want 3", exitErr.ExitStatus(), exitErr.Exited())
			}

			if stdout != "before" {
				t.Errorf("stdout %q, want %q", stdout, "before")
			}
		})
	}
}

func TestServeExecStdin(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	c, _ := e.running(cl, false, "/busybox", "sleep", "600")

	// v5 closes stdin with the close-stream signal: cat sees EOF and exits,
	// and its output still arrives (closing stdin does not end the session).
	t.Run("pipe", func(t *testing.T) {
		input := strings.Repeat("hello stdin\n", 5000)

		stdout, stderr, err := execStream(t, cl, c.id, execCase{
			command: []string{"/busybox", "cat"},
			stdin:   strings.NewReader(input),
		})
		if err != nil {
			t.Fatalf("StreamWithContext: %v", err)
		}

		if stdout != input || stderr != "" {
			t.Errorf("stdout has %d bytes (want %d), stderr %q", len(stdout), len(input), stderr)
		}
	})

	t.Run("tty", func(t *testing.T) {
		stdout, _, err := execStream(t, cl, c.id, execCase{
			command: []string{"/busybox", "sh", "-c", "read line; echo got:$line"},
			tty:     true,
			stdin:   strings.NewReader("abc\n"),
		})
		if err != nil {
			t.Fatalf("StreamWithContext: %v", err)
		}

		if !strings.Contains(stdout, "got:abc") {
			t.Errorf("stdout %q, want it to contain %q", stdout, "got:abc")
		}
	})
}

// sizeQueue hands client-go one terminal size, then blocks until done.
type sizeQueue struct {
	sizes chan remotecommand.TerminalSize
}

func (q *sizeQueue) Next() *remotecommand.TerminalSize {
	s, ok := <-q.sizes
	if !ok {
		return nil
	}

	return &s
}

func TestServeExecResize(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	c, _ := e.running(cl, false, "/busybox", "sleep", "600")

	res, err := cl.ServeExecContainer(rpcCtx(t), &client.ServeExecContainerConfig{
		ID:      c.id,
		Command: []string{"/busybox", "sh", "-c", "/busybox sleep 1; /busybox stty size"},
		Tty:     true,
		Stdout:  true,
	})
	if err != nil {
		t.Fatalf("ServeExecContainer: %v", err)
	}

	q := &sizeQueue{sizes: make(chan remotecommand.TerminalSize, 1)}
	q.sizes <- remotecommand.TerminalSize{Width: 123, Height: 45}
	defer close(q.sizes)

	var stdout safeBuffer

	ctx, cancel := context.WithTimeout(context.Background(), streamTimeout)
	defer cancel()

	err = executor(t, res.URL).StreamWithContext(ctx, remotecommand.StreamOptions{
		Stdout: &stdout, Tty: true, TerminalSizeQueue: q,
	})
	if err != nil {
		t.Fatalf("StreamWithContext: %v", err)
	}

	if got := strings.TrimSpace(stdout.String()); got != "45 123" {
		t.Errorf("stty size said %q, want %q", got, "45 123")
	}
}

func TestServeExecUnknownContainer(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	id := randomID(t)

	_, err := cl.ServeExecContainer(rpcCtx(t), &client.ServeExecContainerConfig{
		ID: id, Command: []string{"/busybox", "true"}, Stdout: true,
	})
	if err == nil || !strings.Contains(err.Error(), "child not available") || !strings.Contains(err.Error(), id) {
		t.Errorf("ServeExecContainer on an unknown container: %v; want a 'child not available' error naming it", err)
	}

	_, err = cl.ServeAttachContainer(rpcCtx(t), &client.ServeAttachContainerConfig{ID: id, Stdout: true})
	if err == nil || !strings.Contains(err.Error(), "child not available") {
		t.Errorf("ServeAttachContainer on an unknown container: %v; want 'child not available'", err)
	}
}

func TestServeAttach(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	t.Run("output", func(t *testing.T) {
		c, _ := e.running(cl, false, "/busybox", "sh", "-c", "while true; do echo test; /busybox sleep 0.1; done")

		res, err := cl.ServeAttachContainer(rpcCtx(t), &client.ServeAttachContainerConfig{
			ID: c.id, Stdout: true, Stderr: true,
		})
		if err != nil {
			t.Fatalf("ServeAttachContainer: %v", err)
		}

		checkURL(t, res.URL, "attach")

		var stdout, stderr safeBuffer

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()

		err = executor(t, res.URL).StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("StreamWithContext: %v, want the context deadline (the container keeps running)", err)
		}

		if !strings.Contains(stdout.String(), "test\n") {
			t.Errorf("stdout %q, want it to contain %q", stdout.String(), "test\n")
		}
	})

	// Stdin reaches the container; its exit ends the session cleanly.
	t.Run("stdin", func(t *testing.T) {
		c, _ := e.running(cl, true, "/busybox", "sh", "-c", "read line; echo got:$line; echo err:$line >&2")

		res, err := cl.ServeAttachContainer(rpcCtx(t), &client.ServeAttachContainerConfig{
			ID: c.id, Stdin: true, Stdout: true, Stderr: true,
		})
		if err != nil {
			t.Fatalf("ServeAttachContainer: %v", err)
		}

		var stdout, stderr safeBuffer

		ctx, cancel := context.WithTimeout(context.Background(), streamTimeout)
		defer cancel()

		err = executor(t, res.URL).StreamWithContext(ctx, remotecommand.StreamOptions{
			Stdin: strings.NewReader("hello\n"), Stdout: &stdout, Stderr: &stderr,
		})
		if err != nil {
			t.Fatalf("StreamWithContext: %v", err)
		}

		if stdout.String() != "got:hello\n" || stderr.String() != "err:hello\n" {
			t.Errorf("stdout %q stderr %q; want %q and %q", stdout.String(), stderr.String(), "got:hello\n", "err:hello\n")
		}
	})
}

// Attach to a container with a terminal: output with \r\n line ends, and
// resizes reach the container's pty.
func TestServeAttachTerminal(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	c := e.newContainer(true, "/busybox", "sh", "-c", "while true; do /busybox stty size; /busybox sleep 0.1; done")
	if _, err := cl.CreateContainer(rpcCtx(t), c.createConfig(true)); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	if _, err := e.runtime("start", c.id); err != nil {
		t.Fatalf("start: %v", err)
	}

	res, err := cl.ServeAttachContainer(rpcCtx(t), &client.ServeAttachContainerConfig{ID: c.id, Stdout: true})
	if err != nil {
		t.Fatalf("ServeAttachContainer: %v", err)
	}

	q := &sizeQueue{sizes: make(chan remotecommand.TerminalSize, 1)}
	q.sizes <- remotecommand.TerminalSize{Width: 99, Height: 11}
	defer close(q.sizes)

	var stdout safeBuffer

	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()

	err = executor(t, res.URL).StreamWithContext(ctx, remotecommand.StreamOptions{
		Stdout: &stdout, Tty: true, TerminalSizeQueue: q,
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("StreamWithContext: %v, want the context deadline", err)
	}

	if !strings.Contains(stdout.String(), "11 99\r\n") {
		t.Errorf("stdout %q, want the new size %q", stdout.String(), "11 99\r\n")
	}
}

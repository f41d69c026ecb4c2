package conmontest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"k8s.io/client-go/tools/remotecommand"
)

// stdinOnceAnnotation is where CRI-O writes a container's stdin_once into
// its bundle's config.json.
const stdinOnceAnnotation = "io.kubernetes.cri-o.StdinOnce"

// annotate adds annotations to the config.json of a bundle written by
// writeBundle.
func annotate(t *testing.T, bundle string, annotations map[string]string) {
	t.Helper()

	path := filepath.Join(bundle, "config.json")

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	var config map[string]any
	if err := json.Unmarshal(data, &config); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}

	config["annotations"] = annotations

	if data, err = json.MarshalIndent(config, "", "  "); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// runningWithStdin creates and starts a container with piped stdin whose
// bundle carries the StdinOnce annotation with the given value ("": none).
func (e *env) runningWithStdin(cl *client.ConmonClient, stdinOnce string, args ...string) *container {
	e.t.Helper()

	c := e.newContainer(false, args...)
	if stdinOnce != "" {
		annotate(e.t, c.bundle, map[string]string{stdinOnceAnnotation: stdinOnce})
	}

	cfg := c.createConfig(false)
	cfg.Stdin = true

	if _, err := cl.CreateContainer(rpcCtx(e.t), cfg); err != nil {
		e.t.Fatalf("CreateContainer: %v", err)
	}

	if _, err := e.runtime("start", c.id); err != nil {
		e.t.Fatalf("start: %v", err)
	}

	return c
}

// attachStream runs one attach session of the container through client-go
// (v5 over websocket) until it ends or ctx is done.
func attachStream(ctx context.Context, t *testing.T, cl *client.ConmonClient, id string, stdin io.Reader, stdout io.Writer) error {
	t.Helper()

	res, err := cl.ServeAttachContainer(rpcCtx(t), &client.ServeAttachContainerConfig{
		ID: id, Stdin: stdin != nil, Stdout: true, Stderr: true,
	})
	if err != nil {
		t.Fatalf("ServeAttachContainer: %v", err)
	}

	return executor(t, res.URL).StreamWithContext(ctx, remotecommand.StreamOptions{
		Stdin: stdin, Stdout: stdout, Stderr: stdout,
	})
}

// waitForOutput polls until buf contains want.
func waitForOutput(t *testing.T, buf *safeBuffer, want string) {
	t.Helper()

	if !waitFor(streamTimeout, func() bool { return strings.Contains(buf.String(), want) }) {
		t.Fatalf("output %q does not contain %q", buf.String(), want)
	}
}

// Piped stdin into a stdin_once container (crictl attach -i < file): the
// client's close of stdin closes the container's stdin, so the container
// reads EOF, exits, and its exit ends the session.
func TestServeAttachStdinOnceCloseEndsSession(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	c := e.runningWithStdin(cl, "true", "/busybox", "sh", "-c", "/busybox cat; echo eof")

	input := strings.Repeat("piped line\n", 2000)

	var stdout safeBuffer

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	err := attachStream(ctx, t, cl, c.id, strings.NewReader(input), &stdout)
	if err != nil {
		t.Fatalf("StreamWithContext: %v (the close of stdin did not reach the container)", err)
	}

	if got := stdout.String(); got != input+"eof\n" {
		t.Errorf("output has %d bytes (ends %q), want the input and %q", len(got), got[max(0, len(got)-20):], "eof\n")
	}

	if code := strings.TrimSpace(string(waitForFile(t, c.exitPath, streamTimeout))); code != "0" {
		t.Errorf("exit file says %q, want 0", code)
	}
}

// A container that is not stdin_once (annotation "false", absent, or not a
// boolean, which is warned about): the close of one attach's stdin ends
// only that client's input; the container's stdin stays open and a second
// attach can still type. The first session goes on after its close.
func TestServeAttachCloseKeepsStdinOpen(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	for _, stdinOnce := range []string{"false", "", "yes"} {
		t.Run("annotation="+stdinOnce, func(t *testing.T) {
			c := e.runningWithStdin(cl, stdinOnce, "/busybox", "sh", "-c",
				"while read line; do echo got:$line; done; echo eof")

			// First attach: one line, then stdin closes.
			var first safeBuffer

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)

			go func() { done <- attachStream(ctx, t, cl, c.id, strings.NewReader("first\n"), &first) }()

			waitForOutput(t, &first, "got:first\n")

			select {
			case err := <-done:
				t.Fatalf("the first session ended after its stdin closed: %v (output %q)", err, first.String())
			case <-time.After(500 * time.Millisecond):
			}

			cancel()

			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("first session: %v, want context.Canceled", err)
			}

			// Second attach: the container still reads what it types.
			var second safeBuffer

			stdinR, stdinW := io.Pipe()
			ctx, cancel = context.WithTimeout(context.Background(), streamTimeout)
			defer cancel()

			go func() { done <- attachStream(ctx, t, cl, c.id, stdinR, &second) }()

			if _, err := stdinW.Write([]byte("second\n")); err != nil {
				t.Fatalf("write stdin: %v", err)
			}

			waitForOutput(t, &second, "got:second\n")

			_ = stdinW.Close()

			time.Sleep(300 * time.Millisecond)

			if st, err := e.state(c.id); err != nil || st != "running" {
				t.Errorf("container state %q (%v) after the second attach closed stdin, want running", st, err)
			}

			if strings.Contains(second.String(), "eof") {
				t.Errorf("the container read EOF: %q", second.String())
			}

			cancel()
			<-done
		})
	}

	log, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}

	if !strings.Contains(string(log), stdinOnceAnnotation) || !strings.Contains(string(log), "'yes'") {
		t.Errorf("server log has no warning naming %s and 'yes'", stdinOnceAnnotation)
	}
}

// Kubernetes keeps a stdin_once container's stdin open "until the client
// disconnects": an attach with stdin that goes away without closing stdin
// closes the container's stdin too, while an attach without stdin that
// goes away leaves it open.
func TestServeAttachStdinOnceDisconnect(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	c := e.runningWithStdin(cl, "true", "/busybox", "sh", "-c", "/busybox cat; echo eof")

	// Output only: leaving changes nothing.
	var watcher safeBuffer

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()

	if err := attachStream(ctx, t, cl, c.id, nil, &watcher); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("output-only attach: %v, want the context deadline", err)
	}

	time.Sleep(300 * time.Millisecond)

	if st, err := e.state(c.id); err != nil || st != "running" {
		t.Fatalf("container state %q (%v) after an output-only attach left, want running", st, err)
	}

	// With stdin: typed input arrives, and leaving closes the stdin.
	var typist safeBuffer

	stdinR, stdinW := io.Pipe()
	defer stdinW.Close()

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()

	done := make(chan error, 1)

	go func() { done <- attachStream(ctx, t, cl, c.id, stdinR, &typist) }()

	if _, err := stdinW.Write([]byte("typed\n")); err != nil {
		t.Fatalf("write stdin: %v", err)
	}

	waitForOutput(t, &typist, "typed\n")
	cancel()
	<-done

	if code := strings.TrimSpace(string(waitForFile(t, c.exitPath, 10*time.Second))); code != "0" {
		t.Errorf("exit file says %q, want 0 (cat read EOF)", code)
	}
}

package conmontest

// The Go client v1.0.1 (and, through the symlink in tests/go-legacy, the
// legacy client v0.7.3) against a server whose worker is killed every few
// seconds (issue 16, the keeper). Opt-in: it runs only with
// RINGMON_TEST_KEEPER_KILLS=1, against a ringmon build with the keeper, e.g.
//
//	cd tests/go && RINGMON_TEST_KEEPER_KILLS=1 RUNTIME_BINARY=/usr/sbin/runc \
//	    go test -count=1 -run TestKeeperKillLoop -v ./...
//
// or the whole Go step: RINGMON_TEST_KEEPER_KILLS=1 GO_TEST_RUN=TestKeeperKillLoop
// RINGMON_GO_ONLY=1 bash tools/test.sh.
//
// RINGMON_TEST_KEEPER_ROUNDS sets the number of rounds (default 15), each one
// createContainer + runtime start, execSyncContainer and a full attach
// (stdin in, output back, stdin EOF ends it); each worker is killed 3 s after
// it appeared. The client dials per call,
// so a call in flight during a kill fails (its connection is reset) and the
// same call made again must succeed: each step may fail once, never twice.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
)

const keeperKillPeriod = 1500 * time.Millisecond

// keeperMinKills is how many worker kills the loop goes on for, at least.
const keeperMinKills = 10

// keeperMaxRounds bounds the loop whatever the kills.
const keeperMaxRounds = 500

// retryOnce runs step, and again if it failed; a third failure fails the
// test. Two tries may fail for one kill: the call the kill cut, and the
// next one, which the client still makes on the dead connection when the
// cut call did not end in an RPC error (an attach stream that just ended);
// the client redials after that.
func retryOnce(t *testing.T, name string, step func() error) {
	t.Helper()

	var err error

	for attempt := 1; attempt <= 3; attempt++ {
		if err = step(); err == nil {
			return
		}

		t.Logf("%s failed (attempt %d; a kill in flight?): %v", name, attempt, err)
	}

	t.Fatalf("%s failed three times: %v", name, err)
}

func callContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), rpcTimeout)
}

// createAndStart creates a container running args and starts it.
func (e *env) createAndStart(cl *client.ConmonClient, args ...string) (*container, error) {
	c := e.newContainer(false, args...)

	ctx, cancel := callContext()
	defer cancel()

	if _, err := cl.CreateContainer(ctx, c.createConfig(false)); err != nil {
		return nil, fmt.Errorf("CreateContainer: %w", err)
	}

	if _, err := e.runtime("start", c.id); err != nil {
		return nil, err
	}

	return c, nil
}

// attachRound attaches to a new `cat` container, sends a line, waits for it
// to come back and ends the session with stdin EOF.
func (e *env) attachRound(cl *client.ConmonClient, round int) error {
	c := e.newContainer(false, "/busybox", "cat")
	cfg := c.createConfig(false)
	cfg.Stdin = true

	ctx, cancel := callContext()
	defer cancel()

	if _, err := cl.CreateContainer(ctx, cfg); err != nil {
		return fmt.Errorf("CreateContainer (cat): %w", err)
	}

	pr, pw := io.Pipe()
	defer pw.Close()

	stdout := &syncBuffer{}
	result := make(chan error, 1)
	attach := &client.AttachConfig{
		ID:                c.id,
		SocketPath:        filepath.Join(filepath.Dir(c.bundle), "attach"),
		StopAfterStdinEOF: true,
		ContainerStdin:    true,
		Streams: client.AttachStreams{
			Stdin:  &client.In{ReadCloser: pr},
			Stdout: &client.Out{WriteCloser: stdout},
			Stderr: &client.Out{WriteCloser: &syncBuffer{}},
		},
		PreAttachFunc: func() error {
			_, err := e.runtime("start", c.id)

			return err
		},
	}

	go func() { result <- cl.AttachContainer(ctx, attach) }()

	line := fmt.Sprintf("ping %d\n", round)
	written := make(chan error, 1)

	go func() {
		_, err := pw.Write([]byte(line))
		written <- err
	}()

	deadline := time.After(startTimeout)

	for !strings.Contains(stdout.String(), line) {
		select {
		case err := <-result:
			return fmt.Errorf("AttachContainer ended before the echo (stdout %q): %v", stdout.String(), err)
		case err := <-written:
			if err != nil {
				return fmt.Errorf("attach stdin write: %w", err)
			}

			written = nil
		case <-deadline:
			return fmt.Errorf("no echo of %q within %v (stdout %q)", line, startTimeout, stdout.String())
		case <-time.After(20 * time.Millisecond):
		}
	}

	_ = pw.Close()

	select {
	case err := <-result:
		if err != nil {
			return fmt.Errorf("AttachContainer: %w", err)
		}
	case <-time.After(startTimeout):
		return fmt.Errorf("AttachContainer did not return within %v after stdin EOF", startTimeout)
	}

	// A kill between the echo and the stdin EOF loses the session (and with
	// it the EOF for cat): an error to retry, not a failure.
	var exit []byte

	if !waitFor(startTimeout, func() bool {
		exit, _ = os.ReadFile(c.exitPath)

		return len(exit) > 0
	}) {
		return fmt.Errorf("cat did not exit within %v of the stdin EOF", startTimeout)
	}

	if string(exit) != "0" {
		return fmt.Errorf("cat exit file %q, want 0", exit)
	}

	return nil
}

func TestKeeperKillLoop(t *testing.T) {
	if os.Getenv("RINGMON_TEST_KEEPER_KILLS") != "1" {
		t.Skip("set RINGMON_TEST_KEEPER_KILLS=1 to run the Go client under a worker kill loop")
	}

	rounds := 15
	if v := os.Getenv("RINGMON_TEST_KEEPER_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("RINGMON_TEST_KEEPER_ROUNDS=%q is not a positive count", v)
		}

		rounds = n
	}

	e := newEnv(t)
	cl := e.startServer()
	keeper := int(cl.PID())

	if workerOf(keeper) == 0 {
		t.Fatalf("server %d has no worker child named conmonrs (a build without the keeper?)", keeper)
	}

	var (
		mu    sync.Mutex
		kills int
	)

	stop := make(chan struct{})
	killerDone := make(chan struct{})

	// Each worker is killed keeperKillPeriod after it appeared, so every
	// worker serves that long: longer than the keeper's quick-death rule
	// (1 s), so each kill is followed by an immediate restart, as in a
	// crash, not by the crash-loop back-off.
	go func() {
		defer close(killerDone)

		var (
			current int
			seen    time.Time
		)

		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}

			w := workerOf(keeper)
			if w != current {
				current, seen = w, time.Now()
			}

			if w != 0 && time.Since(seen) >= keeperKillPeriod && syscall.Kill(w, syscall.SIGKILL) == nil {
				mu.Lock()
				kills++
				mu.Unlock()

				current = 0
			}
		}
	}()

	defer func() {
		close(stop)
		<-killerDone
	}()

	killed := func() int {
		mu.Lock()
		defer mu.Unlock()

		return kills
	}

	round := 0
	for ; round < keeperMaxRounds && (round < rounds || killed() < keeperMinKills); round++ {
		var c *container

		retryOnce(t, fmt.Sprintf("round %d: create and start", round), func() error {
			var err error
			c, err = e.createAndStart(cl, "/busybox", "sleep", "600")

			return err
		})

		retryOnce(t, fmt.Sprintf("round %d: exec sync", round), func() error {
			ctx, cancel := callContext()
			defer cancel()

			want := fmt.Sprintf("hello %d", round)

			res, err := cl.ExecSyncContainer(ctx, &client.ExecSyncConfig{
				ID:      c.id,
				Command: []string{"/busybox", "echo", "-n", want},
			})
			if err != nil {
				return fmt.Errorf("ExecSyncContainer: %w", err)
			}

			if res.ExitCode != 0 || string(res.Stdout) != want {
				return fmt.Errorf("exec sync: exit %d stdout %q, want 0 %q", res.ExitCode, res.Stdout, want)
			}

			return nil
		})

		retryOnce(t, fmt.Sprintf("round %d: attach", round), func() error {
			return e.attachRound(cl, round)
		})

		// The sleeping container's exit still reaches its exit file across
		// the kills.
		if _, err := e.runtime("kill", c.id, "KILL"); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}

		if got := waitForFile(t, c.exitPath, startTimeout); string(got) != "137" {
			t.Fatalf("round %d: exit file %q, want 137", round, got)
		}
	}

	mu.Lock()
	defer mu.Unlock()

	t.Logf("%d rounds, %d worker kills", round, kills)

	if kills < keeperMinKills {
		t.Fatalf("only %d worker kills during %d rounds, want %d", kills, round, keeperMinKills)
	}
}

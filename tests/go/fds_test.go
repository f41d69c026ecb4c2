package conmontest

import (
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
)

// pipePair returns a pipe whose ends are closed when the test ends (closing
// one early is fine: the second Close only reports an error).
func pipePair(t *testing.T) (r, w *os.File) {
	t.Helper()

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		r.Close()
		w.Close()
	})

	return r, w
}

// TestRemoteFDsReachTheContainer passes the read end of a pipe through the
// client's RemoteFDs as additionalFds (the container reads it as fd 3) and
// the write end of a second pipe as leakFds (held by the server until the
// container exits), the way podman passes preserved fds and sync pipes.
func TestRemoteFDsReachTheContainer(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	c := e.newContainer(false, "/busybox", "sh", "-c", "/busybox cat <&3")

	dataR, dataW := pipePair(t)
	leakR, leakW := pipePair(t)

	remote, err := cl.RemoteFDs(rpcContext(t))
	if err != nil {
		t.Fatalf("RemoteFDs: %v", err)
	}
	defer remote.Close()

	slots, err := remote.Send(int(dataR.Fd()), int(leakW.Fd()))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}

	if len(slots) != 2 || slots[0] == 0 || slots[1] == 0 || slots[0] == slots[1] {
		t.Fatalf("slots = %v, want two distinct non-zero slots", slots)
	}

	// The server holds its own copies now.
	dataR.Close()
	leakW.Close()

	cfg := c.createConfig(false)
	cfg.CommandArgs = []string{"--preserve-fds", "1"}
	cfg.AdditionalFDs = []client.RemoteFD{slots[0]}
	cfg.LeakFDs = []client.RemoteFD{slots[1]}

	if _, err := cl.CreateContainer(rpcContext(t), cfg); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	// As podman does: the fd connection stays open until create returned.
	remote.Close()

	if _, err := e.runtime("start", c.id); err != nil {
		t.Fatalf("start: %v", err)
	}

	// The container waits in `cat <&3`; the leaked write end is open in the
	// server, so our read end must not see EOF.
	if err := leakR.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}

	buf := make([]byte, 1)
	if _, err := leakR.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of the leaked pipe while the container runs: %v, want a timeout", err)
	}

	if _, err := dataW.WriteString("hello through fd 3\n"); err != nil {
		t.Fatal(err)
	}

	dataW.Close()

	if exit := waitForFile(t, c.exitPath, startTimeout); string(exit) != "0" {
		t.Errorf("exit file = %q, want 0", exit)
	}

	waitForLogLine(t, c.logPath, "hello through fd 3")

	// The container was forgotten: its leaked fd is closed, we read EOF.
	if err := leakR.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}

	if n, err := leakR.Read(buf); n != 0 || err == nil || !strings.Contains(err.Error(), "EOF") {
		t.Fatalf("read of the leaked pipe after exit: n=%d err=%v, want EOF", n, err)
	}
}

// TestRemoteFDsBadSlots: unknown slots, slots of a closed connection and
// spent slots are refused with an error naming the slot; the server stays
// usable.
func TestRemoteFDsBadSlots(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	create := func(additional, leak []client.RemoteFD) error {
		c := e.newContainer(false, "/busybox", "true")
		cfg := c.createConfig(false)
		cfg.AdditionalFDs = additional
		cfg.LeakFDs = leak
		_, err := cl.CreateContainer(rpcContext(t), cfg)

		return err
	}

	wantSlotError := func(err error, slot client.RemoteFD) {
		t.Helper()

		want := "no file descriptor in slot " + strings.TrimSuffix(strings.TrimPrefix(slot.String(), "RemoteFD("), ")")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("CreateContainer error = %v, want one containing %q", err, want)
		}
	}

	wantSlotError(create([]client.RemoteFD{4242}, nil), 4242)

	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()

	// Slots of a connection that closed are gone.
	remote, err := cl.RemoteFDs(rpcContext(t))
	if err != nil {
		t.Fatalf("RemoteFDs: %v", err)
	}

	closed, err := remote.Send(int(devnull.Fd()))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}

	remote.Close()

	if !waitFor(5*time.Second, func() bool {
		err := create(nil, closed)

		return err != nil && strings.Contains(err.Error(), "no file descriptor in slot")
	}) {
		t.Fatalf("slot %v of a closed connection still accepted", closed[0])
	}

	// A slot is used once.
	remote, err = cl.RemoteFDs(rpcContext(t))
	if err != nil {
		t.Fatalf("RemoteFDs: %v", err)
	}
	defer remote.Close()

	once, err := remote.Send(int(devnull.Fd()))
	if err != nil {
		t.Fatalf("Send: %v", err)
	}

	if err := create(once, nil); err != nil {
		t.Fatalf("CreateContainer with a fresh slot: %v", err)
	}

	wantSlotError(create(once, nil), once[0])

	// The client refuses more than 253 fds itself; 253 are served.
	many := make([]int, 253)
	for i := range many {
		many[i] = int(devnull.Fd())
	}

	slots, err := remote.Send(many...)
	if err != nil || len(slots) != 253 {
		t.Fatalf("Send of 253 fds: %d slots, err %v", len(slots), err)
	}

	if _, err := remote.Send(append(many, int(devnull.Fd()))...); err == nil {
		t.Fatal("Send of 254 fds succeeded")
	}

	if _, err := cl.Version(rpcContext(t), &client.VersionConfig{}); err != nil {
		t.Fatalf("Version after bad slots: %v", err)
	}
}

// TestStartFdSocketPath: the socket lives in the run dir and is removed at
// shutdown.
func TestStartFdSocketPath(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	remote, err := cl.RemoteFDs(rpcContext(t))
	if err != nil {
		t.Fatalf("RemoteFDs: %v", err)
	}
	remote.Close()

	path := e.runDir + "/conmon-fd.sock"

	st, err := os.Stat(path)
	if err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("stat %s: %v (mode %v)", path, err, st)
	}

	if err := cl.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	if _, err := os.Stat(path); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("%s after shutdown: %v, want ENOENT", path, err)
	}
}

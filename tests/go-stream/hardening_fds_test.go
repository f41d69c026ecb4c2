package conmontest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"
)

// The daemon's own network namespace (the forwarding thread opens it in
// the daemon): the test's listeners on 127.0.0.1 are reachable there.
const daemonNetns = "/proc/self/ns/net"

// streamingAddr starts the streaming server and returns its address.
func streamingAddr(t *testing.T, cl *client.ConmonClient) string {
	t.Helper()

	res, err := cl.ServePortForwardContainer(rpcCtx(t), &client.ServePortForwardContainerConfig{NetNsPath: daemonNetns})
	if err != nil {
		t.Fatalf("ServePortForwardContainer: %v", err)
	}

	addr := strings.TrimPrefix(res.URL, "http://")

	return addr[:strings.IndexByte(addr, '/')]
}

func fdCount(t *testing.T, pid uint32) int {
	t.Helper()

	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("list the daemon's fds: %v", err)
	}

	return len(entries)
}

// countLines counts the lines of the server log that contain s.
func countLines(t *testing.T, e *env, s string) int {
	t.Helper()

	data, err := os.ReadFile(e.logFile)
	if err != nil {
		t.Fatal(err)
	}

	return bytes.Count(data, []byte(s))
}

// idleConnections opens n connections to addr, each sending half a
// request head; the caller closes them.
func idleConnections(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()

	conns := make([]net.Conn, 0, n)

	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, answerTimeout)
		if err != nil {
			t.Logf("connection %d: %v", i, err)
			break
		}

		_, _ = c.Write([]byte("GET /exec/"))
		conns = append(conns, c)
	}

	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})

	return conns
}

// 1100 idle connections (any local user can make them) neither take the
// daemon's descriptors nor stop conmon.sock from answering; once they are
// gone, streaming works again.
func TestStreamingIdleConnectionsAreBounded(t *testing.T) {
	const (
		idle = 1100
		// Pending connections are capped at 64; the rest of the daemon
		// (sockets, logs, engine) needs a few dozen.
		maxFds = 200
	)

	e := newEnv(t)
	cl := e.startServer()
	addr := streamingAddr(t, cl)
	before := fdCount(t, servingPID(cl.PID()))

	conns := idleConnections(t, addr, idle)
	time.Sleep(500 * time.Millisecond)

	if n := fdCount(t, servingPID(cl.PID())); n > maxFds {
		t.Errorf("%d idle connections: the daemon holds %d fds (%d before), want at most %d", len(conns), n, before, maxFds)
	}

	expectVersion(t, cl, fmt.Sprintf("with %d idle streaming connections", len(conns)))

	if n := countLines(t, e, "streaming server accept"); n > 1 {
		t.Errorf("%d accept warnings in the log", n)
	}

	for _, c := range conns {
		c.Close()
	}

	if !waitFor(answerTimeout, func() bool {
		res, err := cl.ServePortForwardContainer(rpcCtx(t), &client.ServePortForwardContainerConfig{NetNsPath: daemonNetns})
		if err != nil {
			return false
		}

		dialer := websocket.Dialer{Subprotocols: []string{"SPDY/3.1+portforward.k8s.io"}, HandshakeTimeout: answerTimeout}

		c, _, err := dialer.Dial("ws"+strings.TrimPrefix(res.URL, "http"), nil)
		if err != nil {
			return false
		}

		c.Close()

		return true
	}) {
		t.Error("no streaming session possible after the idle connections closed")
	}
}

// A daemon out of descriptors (EMFILE on accept) backs off: it neither
// spins nor fills its log, and serves again once descriptors are free.
func TestStreamingAcceptEmfileBacksOff(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	addr := streamingAddr(t, cl)
	// The process that accepts: the keeper's worker.
	pid := int(servingPID(cl.PID()))

	var orig unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &orig); err != nil {
		t.Fatalf("prlimit: %v", err)
	}

	// Room for 4 more descriptors: the 5th connection hits EMFILE.
	tight := unix.Rlimit{Cur: uint64(fdCount(t, uint32(pid)) + 4), Max: orig.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &tight, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}

	restored := false
	restore := func() {
		if !restored {
			restored = true
			_ = unix.Prlimit(pid, unix.RLIMIT_NOFILE, &orig, nil)
		}
	}
	defer restore()

	warningsBefore := countLines(t, e, "streaming server accept")
	cpuBefore := cpuTicks(t, pid)
	conns := idleConnections(t, addr, 40)

	time.Sleep(3 * time.Second)

	warnings := countLines(t, e, "streaming server accept") - warningsBefore
	cpu := cpuTicks(t, pid) - cpuBefore

	restore()

	if warnings > 2 {
		t.Errorf("%d accept warnings in 3 s at EMFILE, want at most 2 (rate-limited)", warnings)
	}

	if warnings == 0 {
		t.Errorf("no accept warning at all: did the daemon hit EMFILE? (%d connections)", len(conns))
	}

	// 100 ticks per second: 3 s of spinning would be ~300.
	if cpu > 50 {
		t.Errorf("the daemon used %d CPU ticks in 3 s at EMFILE", cpu)
	}

	for _, c := range conns {
		c.Close()
	}

	expectVersion(t, cl, "after the descriptors were freed")
}

// cpuTicks is utime + stime of pid, in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()

	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}

	fields := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	utime, _ := strconv.Atoi(fields[11])
	stime, _ := strconv.Atoi(fields[12])

	return utime + stime
}

// The daemon raises its soft descriptor limit to the hard one, but the
// runtime and a container without an rlimit of its own get the limit the
// daemon started with.
func TestDaemonRaisesNofileButNotForContainers(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}

	// Start the daemon with a soft limit below the hard one.
	const startSoft = 1000

	low := syscall.Rlimit{Cur: startSoft, Max: orig.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}

	e := newEnv(t)
	cl := e.startServer()

	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}

	var daemon unix.Rlimit
	if err := unix.Prlimit(int(servingPID(cl.PID())), unix.RLIMIT_NOFILE, nil, &daemon); err != nil {
		t.Fatalf("prlimit: %v", err)
	}

	if daemon.Cur != daemon.Max {
		t.Errorf("daemon RLIMIT_NOFILE soft %d, hard %d: want the soft limit raised to the hard one", daemon.Cur, daemon.Max)
	}

	// What a container without rlimits of its own sees when its runtime
	// starts with the daemon's starting limit (runc raises its own, crun
	// does not): the reference, run by the runtime directly.
	ref := e.newContainer(false, "/busybox", "sh", "-c", "ulimit -n")
	withoutRlimits(t, ref)

	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}

	refOut, refErr := e.runtime("run", "--bundle", ref.bundle, ref.id)

	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}

	if refErr != nil {
		t.Fatalf("reference run: %v", refErr)
	}

	c := e.newContainer(false, "/busybox", "sh", "-c", "ulimit -n")
	withoutRlimits(t, c)

	if _, err := cl.CreateContainer(rpcCtx(t), c.createConfig(false)); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	if _, err := e.runtime("start", c.id); err != nil {
		t.Fatalf("start: %v", err)
	}

	waitForFile(t, c.exitPath, startTimeout)

	logData, err := os.ReadFile(c.logPath)
	if err != nil {
		t.Fatal(err)
	}

	want := " " + strings.TrimSpace(refOut) + "\n"
	if !strings.Contains(string(logData), want) {
		t.Errorf("container log %q: want the limit %q it gets when its runtime starts with the daemon's starting soft limit %d",
			logData, strings.TrimSpace(refOut), startSoft)
	}
}

// withoutRlimits drops the rlimits of c's spec: the container inherits the
// runtime's.
func withoutRlimits(t *testing.T, c *container) {
	t.Helper()

	cfgPath := filepath.Join(c.bundle, "config.json")

	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}

	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}

	delete(spec["process"].(map[string]any), "rlimits")

	if raw, err = json.Marshal(spec); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(cfgPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

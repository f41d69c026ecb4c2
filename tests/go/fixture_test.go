package conmontest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
)

// Generous limits: CI machines are small and shared.
const (
	startTimeout = 20 * time.Second // container start -> exit file present
	rpcTimeout   = 30 * time.Second // a single RPC
)

var (
	serverBinary  string // RINGMON_BINARY
	runtimeBinary string // RUNTIME_BINARY
	busyboxBinary string // statically linked busybox copied into every rootfs
	baseDir       string // every per-test directory lives below this one
)

func TestMain(m *testing.M) {
	// Started by ensureJournal as the stand-in journal: serve, no tests.
	if os.Getenv(standInEnv) == "serve" {
		os.Exit(standInProcess())
	}

	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	var err error

	serverBinary, err = locateServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}

	runtimeBinary, err = locateRuntime()
	if err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}

	busyboxBinary, err = locateBusybox()
	if err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}

	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "setup: these tests create containers and must run as root")
		return 1
	}

	baseDir, err = os.MkdirTemp("", "ringmon-gotest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}

	fmt.Printf("server:  %s\nruntime: %s\nbusybox: %s\nbase:    %s\n",
		serverBinary, runtimeBinary, busyboxBinary, baseDir)

	code := m.Run()

	// Every server the tests launched must be gone by now (each test shuts
	// its server down). Anything left over is a leak: report and kill it.
	if leaked := processesMentioning(baseDir); len(leaked) > 0 {
		for pid, cmdline := range leaked {
			fmt.Fprintf(os.Stderr, "leaked process %d still running: %s\n", pid, cmdline)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}

		if code == 0 {
			code = 1
		}
	}

	if code == 0 {
		_ = os.RemoveAll(baseDir)
	} else {
		fmt.Fprintf(os.Stderr, "keeping %s for inspection\n", baseDir)
	}

	return code
}

func locateServer() (string, error) {
	candidates := []string{os.Getenv("RINGMON_BINARY")}
	if candidates[0] == "" {
		candidates = []string{"../../target/release/ringmon", "../../target/debug/ringmon"}
	}

	for _, c := range candidates {
		if c == "" {
			continue
		}

		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return filepath.Abs(c)
		}
	}

	return "", fmt.Errorf("server binary not found (set RINGMON_BINARY; tried %v)", candidates)
}

func locateRuntime() (string, error) {
	rt := os.Getenv("RUNTIME_BINARY")
	if rt == "" {
		rt = "runc"
	}

	path, err := exec.LookPath(rt)
	if err != nil {
		return "", fmt.Errorf("OCI runtime %q not found (set RUNTIME_BINARY): %w", rt, err)
	}

	return filepath.Abs(path)
}

func locateBusybox() (string, error) {
	for _, c := range []string{os.Getenv("BUSYBOX_BINARY"), "/usr/bin/busybox", "/bin/busybox"} {
		if c == "" {
			continue
		}

		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c, nil
		}
	}

	return "", errors.New("static busybox not found (apt-get install busybox-static, or set BUSYBOX_BINARY)")
}

// processesMentioning returns pid -> command line of every process whose
// command line contains s.
func processesMentioning(s string) map[int]string {
	found := map[int]string{}

	entries, err := os.ReadDir("/proc")
	if err != nil {
		return found
	}

	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}

		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}

		cmdline := strings.TrimSpace(string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '})))
		if strings.Contains(cmdline, s) && !isZombie(pid) {
			found[pid] = cmdline
		}
	}

	return found
}

// servingPID is the process that serves for the server pid the client
// knows: with the keeper (the default), the keeper's live child named
// conmonrs; else (--no-keeper) pid itself.
func servingPID(pid uint32) uint32 {
	if worker := workerOf(int(pid)); worker != 0 {
		return uint32(worker)
	}

	return pid
}

// workerOf is the keeper's child named conmonrs (0 if there is none now).
func workerOf(keeper int) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}

	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}

		stat, err := os.ReadFile(filepath.Join("/proc", entry.Name(), "stat"))
		if err != nil {
			continue
		}

		text := string(stat)
		open, end := strings.IndexByte(text, '('), strings.LastIndexByte(text, ')')
		if open < 0 || end < open {
			continue
		}

		fields := strings.Fields(text[end+1:])
		if len(fields) < 2 || fields[0] == "Z" {
			continue
		}

		if ppid, err := strconv.Atoi(fields[1]); err == nil && ppid == keeper && text[open+1:end] == "conmonrs" {
			return pid
		}
	}

	return 0
}

// isZombie reports whether pid exists but has already exited (state Z).
func isZombie(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// Format: "pid (comm) S ..."; comm may contain spaces and parentheses.
	s := string(raw)
	i := strings.LastIndexByte(s, ')')

	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// processGone reports whether pid no longer runs (absent or a zombie).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}

	return isZombie(pid)
}

// env is the per-test scratch area.
type env struct {
	t       *testing.T
	dir     string // root of the scratch area
	runDir  string // server run dir (conmon.sock, pidfile)
	rtRoot  string // runtime --root
	logFile string // server stdout/stderr
	// configure, if set, adjusts every server configuration of this env
	// (e.g. a recording runtime wrapper, tracing).
	configure func(*client.ConmonServerConfig)
}

func newEnv(t *testing.T) *env {
	t.Helper()

	dir, err := os.MkdirTemp(baseDir, "t-")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		if !t.Failed() {
			_ = os.RemoveAll(dir)
		}
	})

	return &env{
		t:       t,
		dir:     dir,
		runDir:  filepath.Join(dir, "run"),
		rtRoot:  filepath.Join(dir, "root"),
		logFile: filepath.Join(dir, "server.log"),
	}
}

// serverConfig returns the client configuration used for every launch.
func (e *env) serverConfig() *client.ConmonServerConfig {
	cfg := client.NewConmonServerConfig(runtimeBinary, e.rtRoot, e.runDir)
	cfg.ConmonServerPath = serverBinary
	// Trace is the most verbose server log level, and (unlike debug, warn
	// and error) it adds no --log-level flag to crun's argv: Debian 12's
	// crun 1.8.1 predates that flag and rejects it.
	cfg.LogLevel = client.LogLevelTrace
	if lvl := os.Getenv("RINGMON_TEST_LOG_LEVEL"); lvl != "" {
		cfg.LogLevel = client.LogLevel(lvl)
	}
	cfg.LogDriver = client.LogDriverStdout
	// PID 1 of the test machines is not systemd.
	cfg.CgroupManager = client.CgroupManagerCgroupfs

	if e.configure != nil {
		e.configure(cfg)
	}

	return cfg
}

// startServer launches (or reuses) a server for this env and registers its
// shutdown. The server's own log goes to e.logFile and is printed if the
// test fails.
func (e *env) startServer() *client.ConmonClient {
	e.t.Helper()

	out, err := os.OpenFile(e.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}

	cfg := e.serverConfig()
	cfg.Stdout = out
	cfg.Stderr = out

	cl, err := client.New(cfg)

	out.Close()

	if err != nil {
		e.dumpServerLog()
		e.t.Fatalf("client.New: %v", err)
	}

	e.t.Cleanup(func() {
		if err := cl.Shutdown(); err != nil {
			e.t.Errorf("cleanup: Shutdown: %v", err)
		}

		if e.t.Failed() {
			e.dumpServerLog()
		}
	})

	return cl
}

func (e *env) dumpServerLog() {
	data, err := os.ReadFile(e.logFile)
	if err != nil || len(data) == 0 {
		return
	}

	const max = 16 << 10
	if len(data) > max {
		data = append([]byte("...\n"), data[len(data)-max:]...)
	}

	e.t.Logf("server log (%s):\n%s", e.logFile, data)
}

// runtime runs the OCI runtime with --root set to this env's root.
func (e *env) runtime(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()

	full := append([]string{"--root", e.rtRoot}, args...)
	out, err := exec.CommandContext(ctx, runtimeBinary, full...).CombinedOutput()

	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", runtimeBinary, strings.Join(full, " "), err, out)
	}

	return string(out), nil
}

// state returns the runtime's status string for id ("created", "running",
// "stopped", ...).
func (e *env) state(id string) (string, error) {
	out, err := e.runtime("state", id)
	if err != nil {
		return "", err
	}

	var st struct {
		Status string `json:"status"`
	}

	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return "", fmt.Errorf("parse state %q: %w", out, err)
	}

	return st.Status, nil
}

// container describes one container of a test: its bundle and the files the
// server writes for it.
type container struct {
	id       string
	bundle   string
	logPath  string
	exitPath string
	oomPath  string
}

func randomID(t *testing.T) string {
	t.Helper()

	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}

	return hex.EncodeToString(b)
}

// newContainer writes a bundle running args and registers a forced runtime
// delete for the end of the test (it runs before the server shutdown).
func (e *env) newContainer(terminal bool, args ...string) *container {
	e.t.Helper()

	id := randomID(e.t)
	dir := filepath.Join(e.dir, "c-"+id[:12])
	c := &container{
		id:       id,
		bundle:   filepath.Join(dir, "bundle"),
		logPath:  filepath.Join(dir, "log"),
		exitPath: filepath.Join(dir, "exit"),
		oomPath:  filepath.Join(dir, "oom_exit"),
	}

	if err := writeBundle(c.bundle, id, terminal, args); err != nil {
		e.t.Fatalf("write bundle: %v", err)
	}

	e.t.Cleanup(func() {
		// Ignore errors: the container may never have been created.
		_, _ = e.runtime("delete", "--force", id)
	})

	return c
}

// createConfig is the CreateContainer request used by most tests: a CRI log
// file, one exit file and one OOM file.
func (c *container) createConfig(terminal bool) *client.CreateContainerConfig {
	return &client.CreateContainerConfig{
		ID:           c.id,
		BundlePath:   c.bundle,
		Terminal:     terminal,
		ExitPaths:    []string{c.exitPath},
		OOMExitPaths: []string{c.oomPath},
		LogDrivers: []client.ContainerLogDriver{{
			Type: client.LogDriverTypeContainerRuntimeInterface,
			Path: c.logPath,
		}},
		// The cgroup manager sent on the wire comes from the server config
		// (cgroupfs); a per-request value is only honoured with
		// CgroupManagerPerCommand, so it is left unset here.
	}
}

// waitForFile polls until path exists with non-empty content and returns it.
func waitForFile(t *testing.T, path string, timeout time.Duration) []byte {
	t.Helper()

	deadline := time.Now().Add(timeout)

	for {
		data, err := os.ReadFile(path)
		if err == nil && len(data) > 0 {
			return data
		}

		if time.Now().After(deadline) {
			t.Fatalf("%s not written within %v (last error: %v)", path, timeout, err)
		}

		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond until it returns true or the timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)

	for {
		if cond() {
			return true
		}

		if time.Now().After(deadline) {
			return false
		}

		time.Sleep(50 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Bundle generation
// ---------------------------------------------------------------------------

// The subset of the OCI runtime spec the tests need, written out by hand.
type ociSpec struct {
	OCIVersion string      `json:"ociVersion"`
	Process    ociProcess  `json:"process"`
	Root       ociRoot     `json:"root"`
	Hostname   string      `json:"hostname"`
	Mounts     []ociMount  `json:"mounts"`
	Linux      ociLinuxCfg `json:"linux"`
}

type ociProcess struct {
	Terminal        bool            `json:"terminal"`
	User            ociUser         `json:"user"`
	Args            []string        `json:"args"`
	Env             []string        `json:"env"`
	Cwd             string          `json:"cwd"`
	Capabilities    ociCapabilities `json:"capabilities"`
	Rlimits         []ociRlimit     `json:"rlimits"`
	NoNewPrivileges bool            `json:"noNewPrivileges"`
}

type ociUser struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

type ociCapabilities struct {
	Bounding  []string `json:"bounding"`
	Effective []string `json:"effective"`
	Permitted []string `json:"permitted"`
}

type ociRlimit struct {
	Type string `json:"type"`
	Hard uint64 `json:"hard"`
	Soft uint64 `json:"soft"`
}

type ociRoot struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
}

type ociMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type"`
	Source      string   `json:"source"`
	Options     []string `json:"options,omitempty"`
}

type ociNamespace struct {
	Type string `json:"type"`
}

type ociLinuxCfg struct {
	CgroupsPath   string         `json:"cgroupsPath,omitempty"`
	Namespaces    []ociNamespace `json:"namespaces"`
	MaskedPaths   []string       `json:"maskedPaths"`
	ReadonlyPaths []string       `json:"readonlyPaths"`
}

// writeBundle creates <bundle>/rootfs (busybox only) and <bundle>/config.json.
func writeBundle(bundle, id string, terminal bool, args []string) error {
	rootfs := filepath.Join(bundle, "rootfs")

	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}

	if err := copyFile(busyboxBinary, filepath.Join(rootfs, "busybox"), 0o755); err != nil {
		return fmt.Errorf("copy busybox: %w", err)
	}

	for _, applet := range []string{"sh", "echo", "cat", "ls", "sleep", "true", "false", "printf"} {
		if err := os.Symlink("/busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			return err
		}
	}

	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	spec := ociSpec{
		OCIVersion: "1.0.2",
		Process: ociProcess{
			Terminal: terminal,
			Args:     args,
			Env:      []string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin", "TERM=xterm"},
			Cwd:      "/",
			Capabilities: ociCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []ociRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     ociRoot{Path: "rootfs", Readonly: true},
		Hostname: "ringmon-test",
		Mounts: []ociMount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs",
				Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts",
				Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm",
				Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs",
				Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs",
				Options: []string{"nosuid", "nodev", "mode=1777"}},
		},
		Linux: ociLinuxCfg{
			// A unique cgroupfs path (relative to each controller's root);
			// the runtime removes it on delete.
			CgroupsPath: "/ringmon-test-" + id[:16],
			Namespaces: []ociNamespace{
				{Type: "pid"}, {Type: "network"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
				"/proc/scsi", "/sys/firmware",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}

	data, err := json.MarshalIndent(&spec, "", "  ")
	if err != nil {
		return err
	}

	return os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()

	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}

	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}

	return out.Close()
}

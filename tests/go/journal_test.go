package conmontest

// The journal the journald log driver writes to, for the tests: the Go twin
// of tests/common/journal.rs (same lock file, same stand-in entry file, same
// rules), so Rust and Go tests running at once share one journal.
//
//   - systemd-journald, whenever one runs or its binary is installed: if
//     /run/systemd/journal/socket does not accept a connect, the binary is
//     started detached and left running; entries are read with
//     `journalctl -o json`.
//   - a stand-in listener, only on machines without journald (or with
//     RINGMON_TEST_JOURNALD=none): a detached helper process (this test
//     binary, see standInProcess) binds the socket, parses the native
//     protocol and appends each entry (journalctl's JSON form) to
//     standInEntries, which the tests read. It exits after 10 idle minutes.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

const (
	journalSocket  = "/run/systemd/journal/socket"
	journalLock    = "/run/ringmon-test-journal.lock"
	standInEntries = "/run/ringmon-test-journal/entries.jsonl"
)

type journalKind int

const (
	kindJournald journalKind = iota
	kindStandIn
)

func (k journalKind) String() string {
	if k == kindJournald {
		return "systemd-journald"
	}

	return "stand-in listener"
}

// journalEntry is one entry sent by a conmonrs process.
type journalEntry struct {
	Priority string
	Message  []byte
}

// journaldBinary is the systemd-journald binary, or "" when there is none
// (or RINGMON_TEST_JOURNALD=none forces the stand-in).
func journaldBinary() string {
	switch v := os.Getenv("RINGMON_TEST_JOURNALD"); v {
	case "none":
		return ""
	case "":
	default:
		return v
	}

	for _, p := range []string{"/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}

	return ""
}

// journaldRunning reports whether a process with comm "systemd-journal"
// (the kernel truncates the name to 15 bytes) runs.
func journaldRunning() bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}

	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}

		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == "systemd-journal" {
			return true
		}
	}

	return false
}

// journalAccepts reports whether a datagram connect to the socket works.
func journalAccepts() bool {
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: journalSocket, Net: "unixgram"})
	if err != nil {
		return false
	}

	conn.Close()

	return true
}

// journalStart serializes starts within this process; the flock does so
// across processes.
var journalStart sync.Mutex

// ensureJournal makes sure something reads the journal socket (starting
// systemd-journald, or binding the stand-in) and says which. Cheap when the
// journal is up; every journald test calls it.
func ensureJournal(t *testing.T) journalKind {
	t.Helper()

	kind := kindStandIn
	if os.Getenv("RINGMON_TEST_JOURNALD") != "none" && (journaldBinary() != "" || journaldRunning()) {
		kind = kindJournald
	}

	if journalAccepts() {
		return kind
	}

	journalStart.Lock()
	defer journalStart.Unlock()

	lock, err := os.OpenFile(journalLock, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()

	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("flock %s: %v", journalLock, err)
	}
	// Closing the file releases the lock.

	if journalAccepts() {
		return kind
	}

	if err := os.MkdirAll(filepath.Dir(journalSocket), 0o755); err != nil {
		t.Fatal(err)
	}
	// A socket file left by a dead journal would make a bind fail.
	_ = os.Remove(journalSocket)

	switch {
	case kind == kindJournald && journaldBinary() == "":
		t.Fatalf("a journald runs, but not on %s, and there is no binary to start", journalSocket)
	case kind == kindJournald:
		startJournald(t, journaldBinary())
	default:
		startStandIn(t)
	}

	if !journalAccepts() {
		t.Fatalf("%s still refuses datagrams", journalSocket)
	}

	return kind
}

// startJournald starts journald detached (own process group, stdio on
// /dev/null) and leaves it running for every later test and test process.
func startJournald(t *testing.T, bin string) {
	t.Helper()
	t.Logf("starting %s (no journald listens on %s)", bin, journalSocket)

	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}

	waitForSocket(t, cmd, bin)
}

// standInEnv turns this test binary into the stand-in journal process.
const standInEnv = "RINGMON_JOURNAL_STAND_IN"

// standInIdle: the stand-in exits after this long without a datagram.
const standInIdle = 10 * time.Minute

// startStandIn starts the stand-in as a detached process (this test binary,
// see TestMain) so that it outlives this test process and keeps serving
// concurrent test processes; waits for its socket.
func startStandIn(t *testing.T) {
	t.Helper()
	t.Logf("no journald on this machine: starting a stand-in listener on %s", journalSocket)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), standInEnv+"=serve")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	if err := cmd.Start(); err != nil {
		t.Fatalf("start the stand-in journal: %v", err)
	}

	waitForSocket(t, cmd, "the stand-in journal")
}

// waitForSocket waits up to 10 s until cmd (just started) serves the
// journal socket, failing early if it exits.
func waitForSocket(t *testing.T, cmd *exec.Cmd, what string) {
	t.Helper()

	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.Now().Add(10 * time.Second)
	for !journalAccepts() {
		select {
		case err := <-exited:
			t.Fatalf("%s exited: %v", what, err)
		default:
		}

		if time.Now().After(deadline) {
			t.Fatalf("%s did not open %s within 10 s", what, journalSocket)
		}

		time.Sleep(20 * time.Millisecond)
	}
}

// standInProcess is the stand-in journal (TestMain runs it instead of the
// tests when standInEnv is "serve"): binds the socket and serves it until
// idle for standInIdle. The socket file stays behind and refuses, so the
// next ensureJournal starts a new stand-in.
func standInProcess() int {
	if err := os.MkdirAll(filepath.Dir(standInEntries), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: journalSocket, Net: "unixgram"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	raw, err := conn.SyscallConn()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_PASSCRED, 1)
	}); err != nil || sockErr != nil {
		fmt.Fprintln(os.Stderr, "SO_PASSCRED:", err, sockErr)
		return 1
	}

	// journald's socket is world-writable.
	_ = os.Chmod(journalSocket, 0o666)

	buf := make([]byte, 1<<20)
	oob := make([]byte, 4096)

	for {
		_ = conn.SetReadDeadline(time.Now().Add(standInIdle))

		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0
		}

		if err != nil {
			continue
		}

		payload := append([]byte(nil), buf[:n]...)
		pid := 0

		msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
		for i := range msgs {
			if creds, err := syscall.ParseUnixCredentials(&msgs[i]); err == nil {
				pid = int(creds.Pid)
			}

			// A sealed memfd carrying an entry too large for a datagram.
			if fds, err := syscall.ParseUnixRights(&msgs[i]); err == nil {
				for j, fd := range fds {
					if j == 0 {
						if data, err := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil {
							payload = data
						}
					}

					syscall.Close(fd)
				}
			}
		}

		object := map[string]any{
			"__REALTIME_TIMESTAMP": strconv.FormatInt(time.Now().UnixMicro(), 10),
		}

		for _, f := range parseNative(payload) {
			object[f.name] = fieldJSON(f.value)
		}

		if pid != 0 {
			object["_PID"] = strconv.Itoa(pid)
			if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
				object["_COMM"] = strings.TrimSpace(string(comm))
			}
		}

		line, _ := json.Marshal(object)

		f, err := os.OpenFile(standInEntries, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err == nil {
			_, _ = f.Write(append(line, '\n'))
			f.Close()
		}
	}
}

// fieldJSON is a value the way journalctl -o json shows it: a string when
// it is UTF-8, else an array of byte values.
func fieldJSON(v []byte) any {
	if utf8.Valid(v) {
		return string(v)
	}

	ints := make([]int, len(v))
	for i, b := range v {
		ints[i] = int(b)
	}

	return ints
}

type nativeField struct {
	name  string
	value []byte
}

// parseNative parses a native-protocol datagram: NAME=value\n fields, or
// NAME\n + little-endian uint64 length + bytes + \n.
func parseNative(data []byte) []nativeField {
	var fields []nativeField

	for len(data) > 0 {
		end := bytes.IndexAny(data, "\n=")
		if end < 0 {
			break
		}

		name := string(data[:end])
		rest := data[end+1:]

		if data[end] == '=' {
			stop := bytes.IndexByte(rest, '\n')
			if stop < 0 {
				stop = len(rest)
			}

			fields = append(fields, nativeField{name, rest[:stop]})
			data = rest[min(stop+1, len(rest)):]

			continue
		}

		if len(rest) < 8 {
			break
		}

		n := binary.LittleEndian.Uint64(rest[:8])
		if uint64(len(rest)-8) < n {
			break
		}

		fields = append(fields, nativeField{name, rest[8 : 8+n]})
		data = rest[min(8+n+1, uint64(len(rest))):]
	}

	return fields
}

// journalField reads a field of a journalctl JSON object: a string, or an
// array of byte values.
func journalField(raw json.RawMessage) ([]byte, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return []byte(s), true
	}

	var ints []int
	if err := json.Unmarshal(raw, &ints); err == nil {
		out := make([]byte, len(ints))
		for i, b := range ints {
			out[i] = byte(b)
		}

		return out, true
	}

	return nil, false
}

// journalObjects returns the entries (as raw JSON objects) that conmonrs
// processes sent, optionally only those of pid and not before since.
func journalObjects(t *testing.T, kind journalKind, pid uint32, since time.Time) []map[string]json.RawMessage {
	t.Helper()

	var data []byte

	if kind == kindJournald {
		args := []string{"-o", "json", "--all", "--no-pager", "_COMM=conmonrs",
			fmt.Sprintf("--since=@%d", since.Unix())}
		if pid != 0 {
			args = append(args, fmt.Sprintf("_PID=%d", servingPID(pid)))
		}

		out, err := exec.Command("journalctl", args...).Output()
		if err != nil {
			t.Fatalf("journalctl %v: %v", args, err)
		}

		data = out
	} else {
		data, _ = os.ReadFile(standInEntries)
	}

	var objects []map[string]json.RawMessage

	for _, line := range bytes.Split(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}

		var o map[string]json.RawMessage
		if err := json.Unmarshal(line, &o); err != nil {
			t.Fatalf("journal line is not a JSON object: %v: %q", err, line)
		}

		if comm, _ := journalField(o["_COMM"]); string(comm) != "conmonrs" {
			continue
		}

		if p, _ := journalField(o["_PID"]); pid != 0 && string(p) != strconv.FormatUint(uint64(servingPID(pid)), 10) {
			continue
		}

		if ts, _ := journalField(o["__REALTIME_TIMESTAMP"]); len(ts) > 0 {
			micros, err := strconv.ParseInt(string(ts), 10, 64)
			if err == nil && micros/1_000_000 < since.Unix() {
				continue
			}
		}

		objects = append(objects, o)
	}

	return objects
}

// journalEntries returns what server pid sent since since, in journal order.
func journalEntries(t *testing.T, kind journalKind, pid uint32, since time.Time) []journalEntry {
	t.Helper()

	var entries []journalEntry

	for _, o := range journalObjects(t, kind, pid, since) {
		prio, _ := journalField(o["PRIORITY"])

		msg, ok := journalField(o["MESSAGE"])
		if !ok {
			t.Fatalf("entry without a readable MESSAGE: %v", o)
		}

		entries = append(entries, journalEntry{Priority: string(prio), Message: msg})
	}

	return entries
}

// waitForJournal polls until pid's entries satisfy done; returns the last
// entries read.
func waitForJournal(t *testing.T, kind journalKind, pid uint32, since time.Time,
	done func([]journalEntry) bool,
) []journalEntry {
	t.Helper()

	var last []journalEntry

	waitFor(startTimeout, func() bool {
		last = journalEntries(t, kind, pid, since)

		return done(last)
	})

	return last
}

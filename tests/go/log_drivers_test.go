package conmontest

// Every container log driver through the real conmon-rs client:
// CreateContainer with LogDrivers of each type (and all at once),
// ReopenLogContainer, and the upstream "should log to journald" check.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
)

// waitForGo blocks a container until the test creates /tmp/go in it (see
// release).
const waitForGo = "while [ ! -e /tmp/go ]; do sleep 0.05; done"

// release lets a container blocked in waitForGo continue: /tmp/go is
// created through the container's root as seen from its init process.
func release(t *testing.T, pid uint32) {
	t.Helper()

	if err := os.WriteFile(fmt.Sprintf("/proc/%d/root/tmp/go", pid), nil, 0o644); err != nil {
		t.Fatalf("release container: %v", err)
	}
}

// withDrivers is createConfig with the given log drivers instead of the
// default CRI log.
func (c *container) withDrivers(terminal bool, drivers ...client.ContainerLogDriver) *client.CreateContainerConfig {
	cfg := c.createConfig(terminal)
	cfg.LogDrivers = drivers

	return cfg
}

// run creates and starts c and waits for its exit file; returns the
// container PID.
func (e *env) run(cl *client.ConmonClient, c *container, cfg *client.CreateContainerConfig, wait bool) uint32 {
	e.t.Helper()

	resp, err := cl.CreateContainer(rpcContext(e.t), cfg)
	if err != nil {
		e.t.Fatalf("CreateContainer: %v", err)
	}

	if _, err := e.runtime("start", c.id); err != nil {
		e.t.Fatalf("start: %v", err)
	}

	if wait {
		if exit := waitForFile(e.t, c.exitPath, startTimeout); string(exit) != "0" {
			e.t.Fatalf("exit file content = %q, want %q", exit, "0")
		}
	}

	return resp.PID
}

// parseCRI reassembles a CRI log into stdout and stderr (P records joined,
// F records keep their line end).
func parseCRI(t *testing.T, log []byte) (stdout, stderr string) {
	t.Helper()

	var out, errOut strings.Builder

	for _, rec := range strings.SplitAfter(string(log), "\n") {
		if rec == "" {
			continue
		}

		f := strings.SplitN(rec, " ", 4)
		if len(f) != 4 || !strings.HasSuffix(rec, "\n") {
			t.Fatalf("bad CRI record %q", rec)
		}

		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Errorf("CRI timestamp %q: %v", f[0], err)
		}

		content := f[3]

		switch f[2] {
		case "P":
			content = strings.TrimSuffix(content, "\n")
		case "F":
		default:
			t.Fatalf("bad CRI tag in %q", rec)
		}

		switch f[1] {
		case "stdout":
			out.WriteString(content)
		case "stderr":
			errOut.WriteString(content)
		default:
			t.Fatalf("bad CRI stream in %q", rec)
		}
	}

	return out.String(), errOut.String()
}

type jsonEntry struct {
	Timestamp uint64
	Pipe      string
	Message   string
}

// The exact shape of a JSON log line, keys in this order.
var jsonLine = regexp.MustCompile(`^\{"timestamp":(\d+),"pipe":"(stdout|stderr)","message":(".*")\}$`)

func parseJSONLog(t *testing.T, log []byte) []jsonEntry {
	t.Helper()

	text := string(log)
	if text != "" && !strings.HasSuffix(text, "\n") {
		t.Fatalf("JSON log does not end with a line end: %q", text)
	}

	var entries []jsonEntry

	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if line == "" && text == "" {
			break
		}

		m := jsonLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("JSON log line %q does not match %s", line, jsonLine)
		}

		ts, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			t.Fatalf("timestamp in %q: %v", line, err)
		}

		var msg string
		if err := json.Unmarshal([]byte(m[3]), &msg); err != nil {
			t.Fatalf("message in %q: %v", line, err)
		}

		entries = append(entries, jsonEntry{Timestamp: ts, Pipe: m[2], Message: msg})
	}

	return entries
}

func messagesOf(entries []jsonEntry, pipe string) []string {
	out := []string{}

	for _, e := range entries {
		if e.Pipe == pipe {
			out = append(out, e.Message)
		}
	}

	return out
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00") && len(a) == len(b)
}

func TestLogDriverCRI(t *testing.T) {
	terminalModes(t, func(t *testing.T, terminal bool) {
		e := newEnv(t)
		cl := e.startServer()
		c := e.newContainer(terminal, "/busybox", "sh", "-c",
			"echo hello world; echo oops >&2; printf 'no newline'")
		e.run(cl, c, c.withDrivers(terminal, client.ContainerLogDriver{
			Type: client.LogDriverTypeContainerRuntimeInterface,
			Path: c.logPath,
		}), true)

		log, err := os.ReadFile(c.logPath)
		if err != nil {
			t.Fatal(err)
		}

		stdout, stderr := parseCRI(t, log)

		// Output ending mid-line is closed at EOF by an F record holding
		// just the line end.
		wantOut, wantErr := "hello world\nno newline\n", "oops\n"
		if terminal {
			wantOut, wantErr = "hello world\r\noops\r\nno newline\n", ""
		}

		if stdout != wantOut || stderr != wantErr {
			t.Errorf("CRI log = (%q, %q), want (%q, %q)\n%s", stdout, stderr, wantOut, wantErr, log)
		}

		// The last stdout record closes the open line with an empty F record.
		// Only stdout's: two pipes carry no order between them, so where
		// stderr's record falls depends on when the monitor read each pipe.
		lastStdout := ""
		for _, record := range strings.Split(strings.TrimSuffix(string(log), "\n"), "\n") {
			if fields := strings.SplitN(record, " ", 3); len(fields) == 3 && fields[1] == "stdout" {
				lastStdout = record
			}
		}
		if !strings.HasSuffix(lastStdout, " stdout F ") {
			t.Errorf("no closing F record:\n%s", log)
		}
	})
}

func TestLogDriverJSON(t *testing.T) {
	terminalModes(t, func(t *testing.T, terminal bool) {
		e := newEnv(t)
		cl := e.startServer()
		c := e.newContainer(terminal, "/busybox", "sh", "-c",
			`printf 'out one\n'; printf '  err one \r\n' >&2; printf 'bad \377 x\n'; printf 'tail'`)
		jsonPath := c.logPath + ".json"
		// JSON timestamps come from a cache that may be 100 ms old.
		before := uint64(time.Now().Unix()) - 1
		e.run(cl, c, c.withDrivers(terminal, client.ContainerLogDriver{
			Type: client.LogDriverTypeJSONLogger,
			Path: jsonPath,
		}), true)
		after := uint64(time.Now().Unix())

		log, err := os.ReadFile(jsonPath)
		if err != nil {
			t.Fatal(err)
		}

		entries := parseJSONLog(t, log)
		for _, en := range entries {
			if en.Timestamp < before || en.Timestamp > after {
				t.Errorf("timestamp %d outside [%d, %d]", en.Timestamp, before, after)
			}
		}

		// Whitespace trimmed (the pty's "\r\n" too), invalid UTF-8 as
		// U+FFFD, a partial tail as an entry of its own; a terminal
		// container logs everything as stdout.
		wantOut := []string{"out one", "bad \uFFFD x", "tail"}
		wantErr := []string{"err one"}

		if terminal {
			wantOut = []string{"out one", "err one", "bad \uFFFD x", "tail"}
			wantErr = []string{}
		}

		if got := messagesOf(entries, "stdout"); !equalStrings(got, wantOut) {
			t.Errorf("stdout messages = %q, want %q\n%s", got, wantOut, log)
		}

		if got := messagesOf(entries, "stderr"); !equalStrings(got, wantErr) {
			t.Errorf("stderr messages = %q, want %q\n%s", got, wantErr, log)
		}
	})
}

func TestLogDriverJSONMaxSize(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	c := e.newContainer(false, "/busybox", "sh", "-c", "for i in 1 2 3 4 5; do echo a$i; done")
	jsonPath := c.logPath + ".json"
	// Each entry is 56 bytes. maxSize 120: 56, 112, then 168 > 120
	// truncates and writes a3 uncounted; a4 and a5 fit again (spec 4.3).
	e.run(cl, c, c.withDrivers(false, client.ContainerLogDriver{
		Type:    client.LogDriverTypeJSONLogger,
		Path:    jsonPath,
		MaxSize: 120,
	}), true)

	log, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}

	want := []string{"a3", "a4", "a5"}
	if got := messagesOf(parseJSONLog(t, log), "stdout"); !equalStrings(got, want) {
		t.Errorf("messages = %q, want %q\n%s", got, want, log)
	}
}

func TestLogDriverJSONReopen(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()
	c := e.newContainer(false, "/busybox", "sh", "-c", "echo before; "+waitForGo+"; echo after")
	jsonPath := c.logPath + ".json"
	pid := e.run(cl, c, c.withDrivers(false, client.ContainerLogDriver{
		Type: client.LogDriverTypeJSONLogger,
		Path: jsonPath,
	}), false)

	if !waitFor(startTimeout, func() bool {
		log, _ := os.ReadFile(jsonPath)
		return bytes.Contains(log, []byte(`"message":"before"`))
	}) {
		t.Fatal("first line not logged")
	}

	rotated := jsonPath + ".1"
	if err := os.Rename(jsonPath, rotated); err != nil {
		t.Fatal(err)
	}

	if err := cl.ReopenLogContainer(rpcContext(t), &client.ReopenLogContainerConfig{ID: c.id}); err != nil {
		t.Fatalf("ReopenLogContainer: %v", err)
	}

	release(t, pid)

	if exit := waitForFile(t, c.exitPath, startTimeout); string(exit) != "0" {
		t.Fatalf("exit file content = %q", exit)
	}

	for path, want := range map[string][]string{rotated: {"before"}, jsonPath: {"after"}} {
		log, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}

		if got := messagesOf(parseJSONLog(t, log), "stdout"); !equalStrings(got, want) {
			t.Errorf("%s: messages = %q, want %q", filepath.Base(path), got, want)
		}
	}
}

func TestLogDriverJournald(t *testing.T) {
	kind := ensureJournal(t)
	t.Logf("journal: %v", kind)

	terminalModes(t, func(t *testing.T, terminal bool) {
		since := time.Now().Add(-time.Second)
		e := newEnv(t)
		cl := e.startServer()
		marker := "ringmon-go-" + randomID(t)[:16]
		c := e.newContainer(terminal, "/busybox", "sh", "-c",
			fmt.Sprintf("echo '%[1]s out'; echo '%[1]s err' >&2; %[2]s; printf '%[1]s partial'", marker, waitForGo))
		// journald ignores maxSize and needs no path.
		pid := e.run(cl, c, c.withDrivers(terminal, client.ContainerLogDriver{
			Type:    client.LogDriverTypeJournald,
			MaxSize: 1,
		}), false)

		first := waitForJournal(t, kind, cl.PID(), since, func(en []journalEntry) bool { return len(en) >= 2 })

		// Reopen is a no-op for journald.
		if err := cl.ReopenLogContainer(rpcContext(t), &client.ReopenLogContainerConfig{ID: c.id}); err != nil {
			t.Fatalf("ReopenLogContainer: %v", err)
		}

		release(t, pid)
		waitForFile(t, c.exitPath, startTimeout)

		all := waitForJournal(t, kind, cl.PID(), since, func(en []journalEntry) bool { return len(en) >= 3 })
		if len(first) < 2 || len(all) != 3 {
			t.Fatalf("journal entries: first %q, all %q; want 2 then 3", first, all)
		}

		eol := "\n"
		if terminal {
			eol = "\r\n"
		}

		got := []string{string(all[0].Message), string(all[1].Message)}
		sort.Strings(got)

		want := []string{marker + " err" + eol, marker + " out" + eol}
		if !equalStrings(got, want) {
			t.Errorf("first messages = %q, want %q (any order)", got, want)
		}

		if string(all[2].Message) != marker+" partial" {
			t.Errorf("last message = %q, want %q", all[2].Message, marker+" partial")
		}

		for _, en := range all {
			if en.Priority != "5" {
				t.Errorf("PRIORITY = %q, want 5 (%q)", en.Priority, en.Message)
			}
		}
	})
}

// The upstream conmon-rs test "should log to journald" (pkg/client,
// Logging): only a journald driver, then `journalctl -n2 _COMM=conmonrs`
// shows both lines.
func TestLogDriverJournaldUpstream(t *testing.T) {
	kind := ensureJournal(t)

	terminalModes(t, func(t *testing.T, terminal bool) {
		e := newEnv(t)
		cl := e.startServer()
		c := e.newContainer(terminal, "/busybox", "sh", "-c", "echo hello world && echo foo bar")

		if _, err := cl.CreateContainer(rpcContext(t), &client.CreateContainerConfig{
			ID:         c.id,
			BundlePath: c.bundle,
			Terminal:   terminal,
			LogDrivers: []client.ContainerLogDriver{{Type: client.LogDriverTypeJournald}},
		}); err != nil {
			t.Fatalf("CreateContainer: %v", err)
		}

		if _, err := e.runtime("start", c.id); err != nil {
			t.Fatalf("start: %v", err)
		}

		// Other conmonrs processes (concurrent tests) may log between,
		// so poll until the last two entries are ours.
		var res string

		if !waitFor(startTimeout, func() bool {
			res = lastTwo(t, kind)
			return strings.Contains(res, "hello world") && strings.Contains(res, "foo bar")
		}) {
			t.Fatalf("journalctl -n2 _COMM=conmonrs:\n%s", res)
		}
	})
}

// lastTwo is `journalctl -n2 _COMM=conmonrs`, or its equivalent for the
// stand-in journal.
func lastTwo(t *testing.T, kind journalKind) string {
	t.Helper()

	if kind == kindJournald {
		out, err := exec.Command("journalctl", "-n2", "_COMM=conmonrs").Output()
		if err != nil {
			t.Fatalf("journalctl -n2 _COMM=conmonrs: %v", err)
		}

		return string(out)
	}

	entries := journalEntries(t, kind, 0, time.Unix(0, 0))

	var res strings.Builder
	for _, en := range entries[max(0, len(entries)-2):] {
		res.Write(en.Message)
	}

	return res.String()
}

func TestLogDriverAllAtOnce(t *testing.T) {
	kind := ensureJournal(t)
	since := time.Now().Add(-time.Second)
	e := newEnv(t)
	cl := e.startServer()
	c := e.newContainer(false, "/busybox", "sh", "-c",
		`i=0; while [ $i -lt 50 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; printf 'the end'`)
	jsonPath := c.logPath + ".json"
	e.run(cl, c, c.withDrivers(false,
		client.ContainerLogDriver{Type: client.LogDriverTypeContainerRuntimeInterface, Path: c.logPath},
		client.ContainerLogDriver{Type: client.LogDriverTypeJSONLogger, Path: jsonPath},
		client.ContainerLogDriver{Type: client.LogDriverTypeJournald},
	), true)

	var outLines, errLines []string
	for i := range 50 {
		outLines = append(outLines, fmt.Sprintf("out %d", i))
		errLines = append(errLines, fmt.Sprintf("err %d", i))
	}

	outLines = append(outLines, "the end")

	cri, err := os.ReadFile(c.logPath)
	if err != nil {
		t.Fatal(err)
	}

	stdout, stderr := parseCRI(t, cri)
	if stdout != strings.Join(outLines, "\n")+"\n" || stderr != strings.Join(errLines, "\n")+"\n" {
		t.Errorf("CRI log content differs:\n%s", cri)
	}

	js, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}

	entries := parseJSONLog(t, js)
	if got := messagesOf(entries, "stdout"); !equalStrings(got, outLines) {
		t.Errorf("JSON stdout = %q, want %q", got, outLines)
	}

	if got := messagesOf(entries, "stderr"); !equalStrings(got, errLines) {
		t.Errorf("JSON stderr = %q, want %q", got, errLines)
	}

	var want []string
	for _, l := range append(append([]string{}, outLines[:50]...), errLines...) {
		want = append(want, l+"\n")
	}

	want = append(want, "the end")
	sort.Strings(want)

	journal := waitForJournal(t, kind, cl.PID(), since, func(en []journalEntry) bool { return len(en) >= len(want) })

	var got []string
	for _, en := range journal {
		got = append(got, string(en.Message))
	}

	sort.Strings(got)

	if !equalStrings(got, want) {
		t.Errorf("journal messages (%d) differ from the output (%d lines): %q", len(got), len(want), got)
	}
}

package conmontest

// envVars of CreateContainer and ExecSyncContainer: they are the environment
// of the OCI runtime process the server starts (not of the container). The
// server runs a recording wrapper around the real runtime that writes every
// call's argv and environment to files, then execs the runtime.
//
// Shared by the v1 module (tests/go) and the legacy one (tests/go-legacy,
// through a symlink): a legacy client puts envVars one pointer slot later
// (spec §2.7), so these cases fail unless the server reads that layout.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
)

// runtimeRecorder is a wrapper runtime and the directory it records into.
type runtimeRecorder struct {
	dir string
}

// recordRuntime makes every server of e run the OCI runtime through a
// recording wrapper. Call it before startServer.
func (e *env) recordRuntime() *runtimeRecorder {
	e.t.Helper()

	rec := &runtimeRecorder{dir: filepath.Join(e.dir, "runtime-calls")}
	if err := os.MkdirAll(rec.dir, 0o755); err != nil {
		e.t.Fatal(err)
	}

	wrapper := filepath.Join(e.dir, "runtime-wrapper")
	script := fmt.Sprintf("#!/bin/sh\nprintf '%%s\\n' \"$@\" > %q/argv.$$\nenv > %q/env.$$\nexec %q \"$@\"\n",
		rec.dir, rec.dir, runtimeBinary)

	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		e.t.Fatal(err)
	}

	prev := e.configure
	e.configure = func(cfg *client.ConmonServerConfig) {
		if prev != nil {
			prev(cfg)
		}

		cfg.Runtime = wrapper
	}

	return rec
}

// call returns the argv and environment of the recorded runtime call whose
// argv has all of words; it fails the test if there is none.
func (r *runtimeRecorder) call(t *testing.T, words ...string) (argv, env []string) {
	t.Helper()

	var seen []string

	ok := waitFor(5*time.Second, func() bool {
		seen = seen[:0]

		entries, err := os.ReadDir(r.dir)
		if err != nil {
			return false
		}

		for _, ent := range entries {
			pid, found := strings.CutPrefix(ent.Name(), "argv.")
			if !found {
				continue
			}

			raw, err := os.ReadFile(filepath.Join(r.dir, ent.Name()))
			if err != nil {
				continue
			}

			args := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
			seen = append(seen, strings.Join(args, " "))

			if !hasAll(args, words) {
				continue
			}

			envRaw, err := os.ReadFile(filepath.Join(r.dir, "env."+pid))
			if err != nil {
				continue
			}

			argv, env = args, strings.Split(string(envRaw), "\n")

			return true
		}

		return false
	})
	if !ok {
		t.Fatalf("no runtime call with %q recorded; calls: %q", words, seen)
	}

	return argv, env
}

func hasAll(list, words []string) bool {
	for _, w := range words {
		found := false

		for _, a := range list {
			if a == w {
				found = true
				break
			}
		}

		if !found {
			return false
		}
	}

	return true
}

// checkEnv fails unless env has every key=value of want.
func checkEnv(t *testing.T, call string, env []string, want map[string]string) {
	t.Helper()

	for k, v := range want {
		if !hasAll(env, []string{k + "=" + v}) {
			t.Errorf("%s: runtime environment lacks %s=%s", call, k, v)
		}
	}
}

func TestCreateContainerEnvVarsReachRuntime(t *testing.T) {
	e := newEnv(t)
	rec := e.recordRuntime()
	cl := e.startServer()
	c := e.newContainer(false, "/busybox", "echo", "hello world")

	want := map[string]string{"RINGMON_GO_CREATE": "forty two", "RINGMON_GO_SECOND": "two words"}
	cfg := c.createConfig(false)
	cfg.EnvVars = want

	if _, err := cl.CreateContainer(rpcContext(t), cfg); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	_, env := rec.call(t, "create", c.id)
	checkEnv(t, "create", env, want)

	// The container still runs normally through the wrapper.
	if _, err := e.runtime("start", c.id); err != nil {
		t.Fatalf("start: %v", err)
	}

	if exit := waitForFile(t, c.exitPath, startTimeout); string(exit) != "0" {
		t.Errorf("exit file content = %q, want %q", exit, "0")
	}

	waitForLogLine(t, c.logPath, "hello world")
}

func TestExecSyncEnvVarsReachRuntime(t *testing.T) {
	e := newEnv(t)
	rec := e.recordRuntime()
	cl := e.startServer()
	c := startedContainer(t, e, cl)

	want := map[string]string{"RINGMON_GO_EXEC": "42"}

	res, err := cl.ExecSyncContainer(rpcContext(t), &client.ExecSyncConfig{
		ID:      c.id,
		Command: []string{"/busybox", "sh", "-c", "echo -n \"[$RINGMON_GO_EXEC]\""},
		Timeout: 20,
		EnvVars: want,
	})
	if err != nil {
		t.Fatalf("ExecSyncContainer: %v", err)
	}

	// The variable is the runtime's, not the exec process's.
	if res.ExitCode != 0 || string(res.Stdout) != "[]" {
		t.Errorf("exit code %d, stdout %q; want 0, %q", res.ExitCode, res.Stdout, "[]")
	}

	_, env := rec.call(t, "exec", c.id)
	checkEnv(t, "exec", env, want)
}

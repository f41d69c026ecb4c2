package conmontest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestFixtureRuntimeSanity checks the bundle fixture and the OCI runtime on
// their own, without the server: if this fails, the machine setup (cgroups,
// busybox, runtime) is broken rather than the server under test.
func TestFixtureRuntimeSanity(t *testing.T) {
	e := newEnv(t)

	c := e.newContainer(false, "/busybox", "echo", "hello world")

	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()

	out, err := exec.CommandContext(ctx, runtimeBinary, "--root", e.rtRoot,
		"run", "--bundle", c.bundle, c.id).CombinedOutput()
	if err != nil {
		t.Fatalf("%s run: %v\n%s", runtimeBinary, err, out)
	}

	if strings.TrimSpace(string(out)) != "hello world" {
		t.Errorf("container output = %q, want %q", out, "hello world\n")
	}

	bad := e.newContainer(false, "invalid")

	out, err = exec.CommandContext(ctx, runtimeBinary, "--root", e.rtRoot,
		"create", "--bundle", bad.bundle, bad.id).CombinedOutput()
	if err == nil {
		t.Fatalf("%s create with a missing executable succeeded", runtimeBinary)
	}

	if !strings.Contains(string(out), "not found") {
		t.Errorf("runtime error for a missing executable lacks 'not found': %s", out)
	}
}

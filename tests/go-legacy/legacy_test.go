package conmontest

// What only the legacy (≤ 0.8.x) client generation does.

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	"github.com/containers/conmon-rs/pkg/client"
)

// cmdline returns the argv of a running process.
func cmdline(t *testing.T, pid uint32) []string {
	t.Helper()

	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatalf("read server cmdline: %v", err)
	}

	var argv []string
	for _, a := range bytes.Split(bytes.TrimSuffix(raw, []byte{0}), []byte{0}) {
		argv = append(argv, string(a))
	}

	return argv
}

// The legacy client always passes --cgroup-manager (conmon-rs removed the
// flag in 1.0); the server must accept it for both values.
func TestLegacyLaunchPassesCgroupManager(t *testing.T) {
	for _, tc := range []struct {
		manager client.CgroupManager
		value   string
	}{
		{client.CgroupManagerCgroupfs, "cgroupfs"},
		{client.CgroupManagerSystemd, "systemd"},
	} {
		t.Run(tc.value, func(t *testing.T) {
			e := newEnv(t)
			e.configure = func(cfg *client.ConmonServerConfig) { cfg.CgroupManager = tc.manager }
			cl := e.startServer()

			argv := cmdline(t, cl.PID())
			if !hasAll(argv, []string{"--cgroup-manager", tc.value}) {
				t.Errorf("server argv %q lacks --cgroup-manager %s", argv, tc.value)
			}

			if _, err := cl.Version(rpcContext(t), &client.VersionConfig{}); err != nil {
				t.Errorf("Version: %v", err)
			}
		})
	}
}

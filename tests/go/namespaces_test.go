package conmontest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	"go.podman.io/storage/pkg/idtools"
)

// The reply order of CreateNamespaces (spec §3.7) and the directory name
// of each kind under the base path.
var namespaceOrder = []struct {
	kind client.Namespace
	name string
}{
	{client.NamespaceIPC, "ipc"},
	{client.NamespacePID, "pid"},
	{client.NamespaceNet, "net"},
	{client.NamespaceUser, "user"},
	{client.NamespaceUTS, "uts"},
}

// podPins undoes whatever a test pinned, even if it fails half-way:
// unmounts and deletes the five pins, kills the pause process, deletes its
// pid file. Registered before the server starts, so it runs after the
// server's shutdown (which should have done all of it already).
type podPins struct {
	base, pod string
}

func newPodPins(t *testing.T, base string) *podPins {
	t.Helper()

	p := &podPins{base: base, pod: "pod-" + randomID(t)[:24]}
	t.Cleanup(p.cleanup)

	return p
}

func (p *podPins) pin(name string) string {
	return filepath.Join(p.base, name+"ns", p.pod)
}

func (p *podPins) pidFile() string {
	return filepath.Join(p.base, "conmonrs", p.pod+".pid")
}

func (p *podPins) pausePID(t *testing.T) int {
	t.Helper()

	raw, err := os.ReadFile(p.pidFile())
	if err != nil {
		t.Fatalf("pause pid file: %v", err)
	}

	pid, err := strconv.Atoi(string(raw))
	if err != nil {
		t.Fatalf("pause pid file %q: %v", raw, err)
	}

	return pid
}

func (p *podPins) cleanup() {
	if raw, err := os.ReadFile(p.pidFile()); err == nil {
		if pid, err := strconv.Atoi(string(raw)); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}

	for _, ns := range namespaceOrder {
		_ = syscall.Unmount(p.pin(ns.name), syscall.MNT_DETACH)
		_ = os.Remove(p.pin(ns.name))
	}

	_ = os.Remove(p.pidFile())
}

// nsfsMounts returns the nsfs mounts whose mount point ends in /<pod>.
func nsfsMounts(t *testing.T, pod string) []string {
	t.Helper()

	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}

	var found []string

	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, "/"+pod+" ") && strings.Contains(line, " nsfs ") {
			found = append(found, line)
		}
	}

	return found
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()

	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}

	return st.Ino
}

// checkPins mirrors the upstream expectations: five entries in order ipc,
// pid, net, user, uts, each at <base>/<x>ns/<pod>, not a directory, size
// 0, mode 0444 (a real nsfs bind mount), basename = pod ID.
func checkPins(t *testing.T, resp *client.CreateNamespacesResponse, p *podPins) {
	t.Helper()

	if resp == nil || len(resp.Namespaces) != len(namespaceOrder) {
		t.Fatalf("CreateNamespaces response = %+v, want %d namespaces", resp, len(namespaceOrder))
	}

	for i, ns := range resp.Namespaces {
		want := namespaceOrder[i]
		if ns.Type != want.kind {
			t.Errorf("namespace %d: type %v, want %v", i, ns.Type, want.kind)
		}

		if ns.Path != p.pin(want.name) {
			t.Errorf("namespace %d: path %q, want %q", i, ns.Path, p.pin(want.name))
		}

		if filepath.Base(ns.Path) != p.pod {
			t.Errorf("namespace %d: basename of %q is not the pod ID", i, ns.Path)
		}

		st, err := os.Lstat(ns.Path)
		if err != nil {
			t.Fatalf("lstat %s: %v", ns.Path, err)
		}

		if st.IsDir() || st.Size() != 0 || st.Mode().Perm() != 0o444 {
			t.Errorf("%s: dir %v, size %d, mode %v; want a file of size 0 and mode 0444",
				ns.Path, st.IsDir(), st.Size(), st.Mode().Perm())
		}
	}

	if mounts := nsfsMounts(t, p.pod); len(mounts) != len(namespaceOrder) {
		t.Errorf("%d nsfs mounts for the pod, want %d: %q", len(mounts), len(namespaceOrder), mounts)
	}
}

// checkReleased: no mount, no pin, no pid file, no pause process left.
func checkReleased(t *testing.T, p *podPins, pausePID int) {
	t.Helper()

	if !waitFor(5*time.Second, func() bool { return processGone(pausePID) }) {
		t.Errorf("pause process %d still running", pausePID)
	}

	if mounts := nsfsMounts(t, p.pod); len(mounts) != 0 {
		t.Errorf("mounts left behind: %q", mounts)
	}

	for _, ns := range namespaceOrder {
		if _, err := os.Lstat(p.pin(ns.name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (lstat err %v)", p.pin(ns.name), err)
		}
	}

	if _, err := os.Lstat(p.pidFile()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pause pid file left behind (lstat err %v)", err)
	}
}

func TestCreateNamespacesWithoutNamespaces(t *testing.T) {
	e := newEnv(t)
	// The client sends /var/run for an empty BasePath.
	p := newPodPins(t, "/var/run")
	cl := e.startServer()

	resp, err := cl.CreateNamespaces(rpcContext(t), &client.CreateNamespacesConfig{PodID: p.pod})
	if err != nil {
		t.Fatalf("CreateNamespaces: %v", err)
	}

	checkPins(t, resp, p)

	for _, ns := range namespaceOrder {
		if inode(t, p.pin(ns.name)) != inode(t, "/proc/self/ns/"+ns.name) {
			t.Errorf("%s: not requested, but not the host's namespace", ns.name)
		}
	}

	pausePID := p.pausePID(t)

	if err := cl.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	checkReleased(t, p, pausePID)
}

func TestCreateNamespacesWithoutPodID(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	resp, err := cl.CreateNamespaces(rpcContext(t), &client.CreateNamespacesConfig{
		Namespaces: []client.Namespace{client.NamespaceNet},
	})
	if err == nil {
		t.Fatalf("CreateNamespaces without pod ID succeeded: %+v", resp)
	}

	if resp != nil {
		t.Errorf("response %+v, want nil", resp)
	}

	if !strings.Contains(err.Error(), "no pod ID provided") {
		t.Errorf("error %q does not say %q", err, "no pod ID provided")
	}
}

func TestCreateNamespacesWithoutUserNamespace(t *testing.T) {
	e := newEnv(t)
	p := newPodPins(t, "/var/run")
	cl := e.startServer()

	resp, err := cl.CreateNamespaces(rpcContext(t), &client.CreateNamespacesConfig{
		Namespaces: []client.Namespace{
			client.NamespaceIPC, client.NamespaceNet, client.NamespacePID, client.NamespaceUTS,
		},
		PodID: p.pod,
	})
	if err != nil {
		t.Fatalf("CreateNamespaces: %v", err)
	}

	checkPins(t, resp, p)

	pausePID := p.pausePID(t)

	for _, ns := range namespaceOrder {
		pinned := inode(t, p.pin(ns.name))
		if pinned != inode(t, fmt.Sprintf("/proc/%d/ns/%s", pausePID, ns.name)) {
			t.Errorf("%s pin is not the pause process's namespace", ns.name)
		}

		host := inode(t, "/proc/self/ns/"+ns.name)
		if (ns.kind == client.NamespaceUser) != (pinned == host) {
			t.Errorf("%s: pinned %d, host %d", ns.name, pinned, host)
		}
	}

	if err := cl.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	checkReleased(t, p, pausePID)
}

func TestCreateNamespacesWithUserNamespaceAndCustomBasePath(t *testing.T) {
	e := newEnv(t)
	p := newPodPins(t, filepath.Join(e.dir, "custom-base"))
	cl := e.startServer()

	idMap := []idtools.IDMap{{ContainerID: 0, HostID: 0, Size: 1}}

	resp, err := cl.CreateNamespaces(rpcContext(t), &client.CreateNamespacesConfig{
		Namespaces: []client.Namespace{
			client.NamespaceIPC, client.NamespaceNet, client.NamespacePID,
			client.NamespaceUser, client.NamespaceUTS,
		},
		IDMappings: idtools.NewIDMappingsFromMaps(idMap, idMap),
		BasePath:   p.base,
		PodID:      p.pod,
	})
	if err != nil {
		t.Fatalf("CreateNamespaces: %v", err)
	}

	checkPins(t, resp, p)

	pausePID := p.pausePID(t)

	for _, ns := range namespaceOrder {
		if inode(t, p.pin(ns.name)) == inode(t, "/proc/self/ns/"+ns.name) {
			t.Errorf("%s: requested, but the host's namespace was pinned", ns.name)
		}
	}

	uidMap, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pausePID))
	if err != nil || strings.Join(strings.Fields(string(uidMap)), " ") != "0 0 1" {
		t.Errorf("pause uid_map = %q (err %v), want 0 0 1", uidMap, err)
	}

	if err := cl.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	checkReleased(t, p, pausePID)
}

func TestCreateNamespacesWithUserNamespaceWithoutMappings(t *testing.T) {
	e := newEnv(t)
	cl := e.startServer()

	resp, err := cl.CreateNamespaces(rpcContext(t), &client.CreateNamespacesConfig{
		Namespaces: []client.Namespace{client.NamespaceUser},
		PodID:      "pod-" + randomID(t)[:24],
	})
	if !errors.Is(err, client.ErrMissingIDMappings) {
		t.Fatalf("CreateNamespaces = %+v, %v; want ErrMissingIDMappings", resp, err)
	}
}

// TestCreateNamespacesJoinedByContainer: a container whose config names the
// pinned network namespace runs in it.
func TestCreateNamespacesJoinedByContainer(t *testing.T) {
	e := newEnv(t)
	p := newPodPins(t, filepath.Join(e.dir, "base"))
	cl := e.startServer()

	if _, err := cl.CreateNamespaces(rpcContext(t), &client.CreateNamespacesConfig{
		Namespaces: []client.Namespace{client.NamespaceNet},
		BasePath:   p.base,
		PodID:      p.pod,
	}); err != nil {
		t.Fatalf("CreateNamespaces: %v", err)
	}

	c := e.newContainer(false, "/busybox", "readlink", "/proc/self/ns/net")
	joinNetwork(t, c.bundle, p.pin("net"))

	if _, err := cl.CreateContainer(rpcContext(t), c.createConfig(false)); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	if _, err := e.runtime("start", c.id); err != nil {
		t.Fatalf("start: %v", err)
	}

	if exit := waitForFile(t, c.exitPath, startTimeout); string(exit) != "0" {
		t.Fatalf("exit file = %q, want 0", exit)
	}

	pinned := inode(t, p.pin("net"))
	if pinned == inode(t, "/proc/self/ns/net") {
		t.Fatal("the pinned network namespace is the host's")
	}

	waitForLogLine(t, c.logPath, fmt.Sprintf("net:[%d]", pinned))
}

// joinNetwork rewrites a bundle's config so that its network namespace
// entry carries the path of an existing namespace.
func joinNetwork(t *testing.T, bundle, path string) {
	t.Helper()

	configPath := filepath.Join(bundle, "config.json")

	raw, err := os.ReadFile(configPath)
	if err != nil {
		t.Fatal(err)
	}

	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}

	linux, _ := spec["linux"].(map[string]any)
	namespaces, _ := linux["namespaces"].([]any)
	joined := false

	for _, ns := range namespaces {
		entry, _ := ns.(map[string]any)
		if entry["type"] == "network" {
			entry["path"] = path
			joined = true
		}
	}

	if !joined {
		t.Fatal("bundle has no network namespace entry")
	}

	raw, err = json.MarshalIndent(spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(configPath, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

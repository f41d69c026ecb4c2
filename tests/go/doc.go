// Package conmontest drives a ringmon server binary through the upstream
// conmon-rs Go client (github.com/containers/conmon-rs/pkg/client, pinned
// in go.mod), the same way container engines do, to check wire and
// behaviour compatibility.
//
// Run from this directory as root (tools/test.sh does this once per OCI
// runtime):
//
//	RINGMON_BINARY=../../target/release/ringmon \
//	RUNTIME_BINARY=/usr/sbin/runc go test -count=1 -v ./...
//
// Environment:
//
//	RINGMON_BINARY          server under test (default ../../target/{release,debug}/ringmon)
//	RUNTIME_BINARY          OCI runtime, runc or crun (default: runc in $PATH)
//	BUSYBOX_BINARY          static busybox for the test rootfs (default /usr/bin/busybox)
//	RINGMON_TEST_LOG_LEVEL  server --log-level (default trace)
//	RINGMON_TEST_JOURNALD   systemd-journald binary to start when no journal listens
//	                        (default /lib/systemd/systemd-journald); "none" forces the
//	                        stand-in journal (journal_test.go)
//
// Each test gets its own directory below a per-run temporary base
// directory (server run dir, runtime root, bundles, logs); it is removed on
// success and kept for inspection on failure. All code lives in the
// _test.go files.
package conmontest

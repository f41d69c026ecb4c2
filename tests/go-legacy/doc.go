// Package conmontest (legacy) drives a ringmon server binary through the
// conmon-rs Go client v0.7.3, the last release before 1.0 and the one of the
// line that released CRI-O 1.30-1.36 vendor. That client generation sends
// the legacy request layout (metadataOld as Data, shifting every later
// pointer; spec §2.7) and launches the server with --cgroup-manager.
//
// The cases are the v1 module's (../go): every *_test.go here except
// legacy_test.go is a symlink to the file of the same name there, compiled
// against this module's client, so both client generations run the same
// lifecycle, exec-sync, attach, env-var and tracing cases. legacy_test.go
// holds what only this generation does.
//
// Run from this directory as root (tools/test.sh does this once per OCI
// runtime and engine backend):
//
//	RINGMON_BINARY=../../target/release/ringmon \
//	RUNTIME_BINARY=/usr/sbin/runc go test -count=1 -v ./...
//
// The environment variables are those of ../go (see its doc.go).
package conmontest

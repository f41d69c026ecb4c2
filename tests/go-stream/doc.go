// Package conmontest (stream) drives ringmon's streaming server (spec §6.4:
// serveExecContainer, serveAttachContainer, servePortForwardContainer)
// with real Kubernetes clients: client-go's websocket executor
// (remotecommand.NewWebSocketExecutor) for exec and attach, client-go's
// port-forwarder over its SPDY-over-websocket dialer, and kubelet's plain
// websocket port-forward protocol through gorilla/websocket. Malformed
// requests are sent with net/http.
//
// It is a module of its own so that client-go's dependency tree stays out
// of the client compatibility suites. The fixture (bundle, server launch)
// is ../go/fixture_test.go, symlinked.
//
// Run from this directory as root (tools/test.sh does this once per OCI
// runtime and engine backend):
//
//	RINGMON_BINARY=../../target/release/ringmon \
//	RUNTIME_BINARY=/usr/sbin/runc go test -count=1 -v ./...
package conmontest

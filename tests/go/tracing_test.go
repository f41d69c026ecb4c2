package conmontest

// Tracing metadata. With tracing enabled and a span in the call's context,
// the client puts the W3C trace context into every request's `metadata`;
// legacy (≤ 0.8.x) clients also put it, JSON-encoded, into `metadataOld`,
// the field whose pointer slot shifts every later field (spec §2.7). The
// metadata only parents ringmon's spans (tracing_export_test.go): it must not
// disturb the other fields of any request, and no collector listening must
// not fail any call.
//
// Shared by the v1 module (tests/go) and the legacy one (tests/go-legacy,
// through a symlink).

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/conmon-rs/pkg/client"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.podman.io/common/pkg/resize"
)

// tracedContext returns an RPC context carrying a (remote, sampled) span, and
// makes the global propagator write W3C trace context for the test's duration.
func tracedContext(t *testing.T) context.Context {
	t.Helper()

	return spanContext(t, "0af7651916cd43dd8448eb211c80319c", trace.FlagsSampled)
}

// spanContext returns an RPC context carrying the remote span b7ad6b7169203331
// of trace traceHex with flags, written as W3C trace context (see tracedContext).
func spanContext(t *testing.T, traceHex string, flags trace.TraceFlags) context.Context {
	t.Helper()

	prev := otel.GetTextMapPropagator()
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })

	traceID, err := trace.TraceIDFromHex(traceHex)
	if err != nil {
		t.Fatal(err)
	}

	spanID, err := trace.SpanIDFromHex("b7ad6b7169203331")
	if err != nil {
		t.Fatal(err)
	}

	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: flags, Remote: true,
	})

	return trace.ContextWithRemoteSpanContext(rpcContext(t), sc)
}

func TestTracingMetadataIgnored(t *testing.T) {
	e := newEnv(t)
	rec := e.recordRuntime()

	prev := e.configure
	e.configure = func(cfg *client.ConmonServerConfig) {
		prev(cfg)
		// No collector listens there: export fails, the calls must not.
		cfg.Tracing = &client.Tracing{Enabled: true, Endpoint: "http://127.0.0.1:4317"}
	}

	cl := e.startServer()
	ctx := tracedContext(t)

	if _, err := cl.Version(ctx, &client.VersionConfig{Verbose: true}); err != nil {
		t.Fatalf("Version: %v", err)
	}

	// createContainer: env vars, fd lists and log drivers all sit after
	// metadataOld in the legacy layout.
	want := map[string]string{"RINGMON_GO_TRACED": "yes"}
	c := e.newContainer(true, "/busybox", "sleep", "600")
	cfg := c.createConfig(true)
	cfg.EnvVars = want

	if _, err := cl.CreateContainer(ctx, cfg); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	_, env := rec.call(t, "create", c.id)
	checkEnv(t, "create", env, want)

	for _, kv := range env {
		if strings.HasPrefix(kv, "traceparent=") {
			t.Errorf("trace metadata reached the runtime environment: %s", kv)
		}
	}

	if _, err := e.runtime("start", c.id); err != nil {
		t.Fatalf("start: %v", err)
	}

	res, err := cl.ExecSyncContainer(ctx, &client.ExecSyncConfig{
		ID: c.id, Command: []string{"/busybox", "echo", "-n", "traced"}, Timeout: 20, EnvVars: want,
	})
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != "traced" {
		t.Errorf("ExecSyncContainer: %+v, %v; want exit 0, stdout %q", res, err, "traced")
	}

	_, env = rec.call(t, "exec", c.id)
	checkEnv(t, "exec", env, want)

	if err := cl.SetWindowSizeContainer(ctx, &client.SetWindowSizeContainerConfig{
		ID: c.id, Size: &resize.TerminalSize{Width: 100, Height: 30},
	}); err != nil {
		t.Errorf("SetWindowSizeContainer: %v", err)
	}

	if err := cl.ReopenLogContainer(ctx, &client.ReopenLogContainerConfig{ID: c.id}); err != nil {
		t.Errorf("ReopenLogContainer: %v", err)
	}

	// attachContainer: a container that prints and exits, started once the
	// attach connection exists.
	a := e.newContainer(false, "/busybox", "echo", "attached")
	if _, err := cl.CreateContainer(ctx, a.createConfig(false)); err != nil {
		t.Fatalf("CreateContainer (attach): %v", err)
	}

	out := &syncBuffer{}
	if err := cl.AttachContainer(ctx, &client.AttachConfig{
		ID:         a.id,
		SocketPath: filepath.Join(filepath.Dir(a.bundle), "attach"),
		Streams: client.AttachStreams{
			Stdout: &client.Out{WriteCloser: out},
			Stderr: &client.Out{WriteCloser: &syncBuffer{}},
		},
		PreAttachFunc: func() error {
			_, err := e.runtime("start", a.id)

			return err
		},
	}); err != nil {
		t.Fatalf("AttachContainer: %v", err)
	}

	if got := out.String(); got != "attached\n" {
		t.Errorf("attach stdout = %q, want %q", got, "attached\n")
	}

	checkExitFile(t, a, "0")
}

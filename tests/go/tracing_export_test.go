package conmontest

// Tracing export. With --enable-tracing ringmon exports its spans over
// OTLP/gRPC; the peer here is a real OTLP receiver: the official protobuf
// module's TraceService served by grpc-go, recording what it gets. Spans of
// a call made with a known trace context must arrive in that trace, as
// children of the client's span, with the runtime invocation as their child.
//
// Shared by the v1 module (tests/go) and the legacy one (tests/go-legacy,
// through a symlink): legacy clients send the context both in the metadata
// map and as JSON in metadataOld.

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/conmon-rs/pkg/client"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// The client span tracedContext puts in the context.
const (
	clientTraceID = "0af7651916cd43dd8448eb211c80319c"
	clientSpanID  = "b7ad6b7169203331"
)

// otlpReceiver is an OTLP/gRPC trace receiver that keeps every span.
type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer

	addr string

	mu        sync.Mutex
	spans     []*tracepb.Span
	resources [][]*commonpb.KeyValue
}

func (r *otlpReceiver) Export(
	_ context.Context, req *collectortrace.ExportTraceServiceRequest,
) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()

	for _, rs := range req.GetResourceSpans() {
		r.resources = append(r.resources, rs.GetResource().GetAttributes())

		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}

	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func startReceiver(t *testing.T) *otlpReceiver {
	t.Helper()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	r := &otlpReceiver{addr: lis.Addr().String()}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, r)

	go func() { _ = srv.Serve(lis) }()

	t.Cleanup(srv.Stop)

	return r
}

// waitSpan waits for a span that satisfies match.
func (r *otlpReceiver) waitSpan(t *testing.T, what string, match func(*tracepb.Span) bool) *tracepb.Span {
	t.Helper()

	var found *tracepb.Span

	waitFor(20*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()

		for _, s := range r.spans {
			if match(s) {
				found = s

				return true
			}
		}

		return false
	})

	if found == nil {
		r.mu.Lock()
		defer r.mu.Unlock()

		var names []string
		for _, s := range r.spans {
			names = append(names, s.GetName()+"/"+hex.EncodeToString(s.GetParentSpanId()))
		}

		t.Fatalf("no span %s among %d received: %v", what, len(r.spans), names)
	}

	return found
}

// attr returns an attribute's value as text (ints in decimal).
func attr(s []*commonpb.KeyValue, key string) string {
	for _, kv := range s {
		if kv.GetKey() == key {
			if v, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_IntValue); ok {
				return strconv.FormatInt(v.IntValue, 10)
			}

			return kv.GetValue().GetStringValue()
		}
	}

	return ""
}

func hexID(b []byte) string { return hex.EncodeToString(b) }

// rpcSpan matches the server span of method made under the client's span.
func rpcSpan(method, id string) func(*tracepb.Span) bool {
	return func(s *tracepb.Span) bool {
		return s.GetName() == method &&
			hexID(s.GetTraceId()) == clientTraceID &&
			hexID(s.GetParentSpanId()) == clientSpanID &&
			attr(s.GetAttributes(), "container.id") == id
	}
}

// childSpan matches a span named name under parent.
func childSpan(name string, parent *tracepb.Span) func(*tracepb.Span) bool {
	return func(s *tracepb.Span) bool {
		return s.GetName() == name &&
			bytes.Equal(s.GetTraceId(), parent.GetTraceId()) &&
			bytes.Equal(s.GetParentSpanId(), parent.GetSpanId())
	}
}

func TestTracingExportsSpansToOTLPReceiver(t *testing.T) {
	recv := startReceiver(t)
	e := newEnv(t)

	prev := e.configure
	e.configure = func(cfg *client.ConmonServerConfig) {
		if prev != nil {
			prev(cfg)
		}

		cfg.Tracing = &client.Tracing{Enabled: true, Endpoint: "http://" + recv.addr}
	}

	cl := e.startServer()
	ctx := tracedContext(t)

	c := e.newContainer(false, "/busybox", "sleep", "600")
	if _, err := cl.CreateContainer(ctx, c.createConfig(false)); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	create := recv.waitSpan(t, "create_container under the client's span", rpcSpan("create_container", c.id))
	if create.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("create_container kind = %v, want SERVER", create.GetKind())
	}

	if create.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("create_container status = %v", create.GetStatus())
	}

	if !(create.GetStartTimeUnixNano() > 0 && create.GetEndTimeUnixNano() >= create.GetStartTimeUnixNano()) {
		t.Errorf("create_container times %d..%d", create.GetStartTimeUnixNano(), create.GetEndTimeUnixNano())
	}

	runtimeCreate := recv.waitSpan(t, "runtime create under create_container", childSpan("runtime create", create))
	if runtimeCreate.GetStartTimeUnixNano() < create.GetStartTimeUnixNano() ||
		runtimeCreate.GetEndTimeUnixNano() > create.GetEndTimeUnixNano() {
		t.Errorf("runtime create (%d..%d) not within create_container (%d..%d)",
			runtimeCreate.GetStartTimeUnixNano(), runtimeCreate.GetEndTimeUnixNano(),
			create.GetStartTimeUnixNano(), create.GetEndTimeUnixNano())
	}

	if _, err := e.runtime("start", c.id); err != nil {
		t.Fatalf("start: %v", err)
	}

	res, err := cl.ExecSyncContainer(ctx, &client.ExecSyncConfig{
		ID: c.id, Command: []string{"/busybox", "echo", "-n", "traced"}, Timeout: 20,
	})
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != "traced" {
		t.Fatalf("ExecSyncContainer: %+v, %v; want exit 0, stdout %q", res, err, "traced")
	}

	execSync := recv.waitSpan(t, "exec_sync_container under the client's span", rpcSpan("exec_sync_container", c.id))
	recv.waitSpan(t, "runtime exec under exec_sync_container", childSpan("runtime exec", execSync))

	// A failed call is a span with status ERROR.
	_, err = cl.ExecSyncContainer(ctx, &client.ExecSyncConfig{ID: c.id, Command: nil, Timeout: 20})
	if err == nil {
		t.Fatal("ExecSyncContainer without a command succeeded")
	}

	recv.waitSpan(t, "failed exec_sync_container", func(s *tracepb.Span) bool {
		return rpcSpan("exec_sync_container", c.id)(s) &&
			s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR &&
			strings.Contains(s.GetStatus().GetMessage(), "command")
	})

	// Exit handling, under the request that created the container.
	if _, err := e.runtime("kill", c.id, "KILL"); err != nil {
		t.Fatalf("kill: %v", err)
	}

	exit := recv.waitSpan(t, "container_exit under create_container", childSpan("container_exit", create))
	if got := attr(exit.GetAttributes(), "process.exit.code"); got != "137" {
		t.Errorf("container_exit process.exit.code = %q, want 137", got)
	}

	recv.mu.Lock()
	res0 := recv.resources[0]
	recv.mu.Unlock()

	if got := attr(res0, "service.name"); got != "conmonrs" {
		t.Errorf("resource service.name = %q, want conmonrs", got)
	}

	if got := attr(res0, "service.implementation"); got != "ringmon" {
		t.Errorf("resource service.implementation = %q, want ringmon", got)
	}
}

// A client whose trace is not sampled (traceparent flags 00) decided that the
// trace is not recorded: ringmon follows it and exports no span of that trace,
// neither the request's nor its runtime children nor the container's exit.
func TestTracingUnsampledParentExportsNothing(t *testing.T) {
	const unsampledTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"

	recv := startReceiver(t)
	e := newEnv(t)

	prev := e.configure
	e.configure = func(cfg *client.ConmonServerConfig) {
		if prev != nil {
			prev(cfg)
		}

		cfg.Tracing = &client.Tracing{Enabled: true, Endpoint: "http://" + recv.addr}
	}

	cl := e.startServer()
	ctx := spanContext(t, unsampledTraceID, 0)

	c := e.newContainer(false, "/busybox", "sleep", "600")
	if _, err := cl.CreateContainer(ctx, c.createConfig(false)); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	if _, err := e.runtime("start", c.id); err != nil {
		t.Fatalf("start: %v", err)
	}

	res, err := cl.ExecSyncContainer(ctx, &client.ExecSyncConfig{
		ID: c.id, Command: []string{"/busybox", "true"}, Timeout: 20,
	})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("ExecSyncContainer: %+v, %v; want exit 0", res, err)
	}

	if _, err := e.runtime("kill", c.id, "KILL"); err != nil {
		t.Fatalf("kill: %v", err)
	}

	waitForFile(t, c.exitPath, 20*time.Second)
	// The exit span (were there one) ends right after the exit file is
	// written; give it time to be queued before the sampled call below.
	time.Sleep(500 * time.Millisecond)

	// Spans leave in the order they end: once a later sampled call's span
	// arrived, any span of the unsampled trace would have arrived too.
	if _, err := cl.Version(tracedContext(t), &client.VersionConfig{}); err != nil {
		t.Fatalf("Version: %v", err)
	}

	recv.waitSpan(t, "version under the sampled client span", func(s *tracepb.Span) bool {
		return s.GetName() == "version" && hexID(s.GetTraceId()) == clientTraceID
	})

	recv.mu.Lock()
	defer recv.mu.Unlock()

	for _, s := range recv.spans {
		if hexID(s.GetTraceId()) == unsampledTraceID {
			t.Errorf("span %s of the unsampled trace exported", s.GetName())
		}
	}
}

// A collector that accepts connections and never answers, and one that is
// not there: every RPC still answers, correctly, and the server reports the
// dropped spans in its log.
func TestTracingCollectorAway(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { _ = silent.Close() })

	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}

			t.Cleanup(func() { _ = conn.Close() })
		}
	}()

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	absent := closed.Addr().String()
	_ = closed.Close()

	for name, endpoint := range map[string]string{"silent": silent.Addr().String(), "absent": absent} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			prev := e.configure
			e.configure = func(cfg *client.ConmonServerConfig) {
				if prev != nil {
					prev(cfg)
				}

				cfg.Tracing = &client.Tracing{Enabled: true, Endpoint: "http://" + endpoint}
			}

			cl := e.startServer()
			ctx := tracedContext(t)

			c := e.newContainer(false, "/busybox", "sleep", "600")
			if _, err := cl.CreateContainer(ctx, c.createConfig(false)); err != nil {
				t.Fatalf("CreateContainer: %v", err)
			}

			if _, err := e.runtime("start", c.id); err != nil {
				t.Fatalf("start: %v", err)
			}

			for i := range 5 {
				// A call waiting on the collector would hit this deadline
				// (the exporter's connect timeout is 2 s, a batch waits 1 s).
				callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
				res, err := cl.ExecSyncContainer(callCtx, &client.ExecSyncConfig{
					ID: c.id, Command: []string{"/busybox", "echo", "-n", "ok"}, Timeout: 20,
				})

				cancel()

				if err != nil || res.ExitCode != 0 || string(res.Stdout) != "ok" {
					t.Fatalf("ExecSyncContainer %d: %+v, %v", i, res, err)
				}
			}

			if !waitFor(20*time.Second, func() bool {
				data, _ := os.ReadFile(e.logFile)

				return bytes.Contains(data, []byte("spans dropped"))
			}) {
				t.Errorf("no dropped-spans warning in the server log")
			}
		})
	}
}

// jaegerTrace is the part of Jaeger's query API answer
// (GET /api/traces/{id}) the test reads.
type jaegerTrace struct {
	Data []struct {
		Spans []struct {
			SpanID        string `json:"spanID"`
			OperationName string `json:"operationName"`
			ProcessID     string `json:"processID"`
			References    []struct {
				RefType string `json:"refType"`
				SpanID  string `json:"spanID"`
			} `json:"references"`
			Tags []struct {
				Key   string `json:"key"`
				Value any    `json:"value"`
			} `json:"tags"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

// With RINGMON_JAEGER naming a Jaeger (v2, all-in-one by default: OTLP/gRPC
// on 127.0.0.1:4317, query API on 16686) binary, the same trace must be
// found through Jaeger's own query API, as an operator would look for it.
func TestTracingSeenInJaeger(t *testing.T) {
	bin := os.Getenv("RINGMON_JAEGER")
	if bin == "" {
		t.Skip("RINGMON_JAEGER (a jaeger binary) not set")
	}

	jaegerLog, err := os.Create(t.TempDir() + "/jaeger.log")
	if err != nil {
		t.Fatal(err)
	}

	jaeger := exec.Command(bin)
	jaeger.Stdout = jaegerLog
	jaeger.Stderr = jaegerLog

	if err := jaeger.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}

	t.Cleanup(func() {
		_ = jaeger.Process.Kill()
		_ = jaeger.Wait()
		_ = jaegerLog.Close()

		if t.Failed() {
			data, _ := os.ReadFile(jaegerLog.Name())
			t.Logf("jaeger log:\n%s", data)
		}
	})

	const api = "http://127.0.0.1:16686/api/traces/" + clientTraceID

	if !waitFor(60*time.Second, func() bool {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:4317", time.Second)
		if err != nil {
			return false
		}

		_ = conn.Close()

		resp, err := http.Get("http://127.0.0.1:16686/api/services")
		if err != nil {
			return false
		}

		resp.Body.Close()

		return resp.StatusCode == http.StatusOK
	}) {
		t.Fatal("jaeger did not start listening on 4317 and 16686")
	}

	e := newEnv(t)
	prev := e.configure
	e.configure = func(cfg *client.ConmonServerConfig) {
		if prev != nil {
			prev(cfg)
		}

		cfg.Tracing = &client.Tracing{Enabled: true, Endpoint: "http://127.0.0.1:4317"}
	}

	cl := e.startServer()
	ctx := tracedContext(t)

	c := e.newContainer(false, "/busybox", "true")
	if _, err := cl.CreateContainer(ctx, c.createConfig(false)); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}

	var last string

	found := waitFor(30*time.Second, func() bool {
		resp, err := http.Get(api)
		if err != nil {
			last = err.Error()

			return false
		}

		defer resp.Body.Close()

		var tr jaegerTrace
		if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || len(tr.Data) == 0 {
			last = fmt.Sprintf("status %d, %v", resp.StatusCode, err)

			return false
		}

		var createID string

		for _, s := range tr.Data[0].Spans {
			tags := map[string]any{}
			for _, tag := range s.Tags {
				tags[tag.Key] = tag.Value
			}

			if s.OperationName == "create_container" && len(s.References) == 1 &&
				s.References[0].SpanID == clientSpanID && tags["container.id"] == c.id &&
				tr.Data[0].Processes[s.ProcessID].ServiceName == "conmonrs" {
				createID = s.SpanID
			}
		}

		for _, s := range tr.Data[0].Spans {
			if s.OperationName == "runtime create" && createID != "" &&
				len(s.References) == 1 && s.References[0].SpanID == createID {
				return true
			}
		}

		last = fmt.Sprintf("%d spans, create_container %q", len(tr.Data[0].Spans), createID)

		return false
	})
	if !found {
		t.Fatalf("trace %s not in jaeger as expected: %s", clientTraceID, last)
	}
}

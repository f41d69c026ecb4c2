# Wire schema of the conmon-rs v1 RPC interface, as served by ringmon.
#
# The file ID, the interface name `Conmon` (its ID 0xb737e899dd6633f1 is
# derived from both), the method ordinals and every field's ordinal and type
# are wire facts taken from the interface specification; tests/schema_layout.rs
# checks the compiled layout against the spec's slot tables. Field names do not
# travel on the wire. Extensions are appended with new ordinals only.
#
# Clients up to conmon-rs 0.8.x send some request structs in a legacy layout
# (every `metadataOld` below was Data, taking a pointer slot and shifting the
# later ones). Those structs are declared in rpc/conmon_legacy.capnp, which
# imports the shared types from this file; src/rpc/legacy.rs tells the layouts
# apart by the request's pointer count. Appending a pointer field to one of
# those structs here must keep its count different from the legacy one
# (tests/schema_layout.rs pins both).
@0xffaaf7385bc4adad;

interface Conmon {
  # Server build information; also the liveness probe clients use.
  version @0 (request: VersionRequest) -> (response: VersionResponse);

  struct VersionRequest {
    verbose @0 :Bool;
    metadataOld @1 :Void; # was Data up to 0.8.x (legacy layout)
    metadata @2 :Metadata;
  }

  struct VersionResponse {
    processId @0 :UInt32;
    version @1 :Text;
    tag @2 :Text;
    commit @3 :Text;
    buildDate @4 :Text;
    target @5 :Text;
    rustVersion @6 :Text;
    cargoVersion @7 :Text;
    cargoTree @8 :Text;
    metadata @9 :Void; # was Data up to 0.8.x
  }

  # Runs `runtime create` and starts monitoring the container.
  createContainer @1 (request: CreateContainerRequest) -> (response: CreateContainerResponse);

  struct CreateContainerRequest {
    id @0 :Text;
    bundlePath @1 :Text;
    terminal @2 :Bool;
    stdin @3 :Bool;
    exitPaths @4 :List(Text);
    oomExitPaths @5 :List(Text);
    logDrivers @6 :List(LogDriver);
    cleanupCmd @7 :List(Text);
    globalArgs @8 :List(Text);
    commandArgs @9 :List(Text);
    metadataOld @10 :Void; # was Data up to 0.8.x
    metadata @11 :Metadata;
    envVars @12 :TextTextMap;
    cgroupManager @13 :CgroupManager;
    additionalFds @14 :List(UInt64);
    leakFds @15 :List(UInt64);
  }

  struct LogDriver {
    type @0 :Type;
    path @1 :Text;
    maxSize @2 :UInt64; # bytes, 0 = unlimited

    enum Type {
      containerRuntimeInterface @0;
      json @1;
      journald @2;
    }
  }

  struct CreateContainerResponse {
    containerPid @0 :UInt32;
  }

  execSyncContainer @2 (request: ExecSyncContainerRequest) -> (response: ExecSyncContainerResponse);

  struct ExecSyncContainerRequest {
    id @0 :Text;
    timeoutSec @1 :UInt64;
    command @2 :List(Text);
    terminal @3 :Bool;
    metadataOld @4 :Void; # was Data up to 0.8.x
    metadata @5 :Metadata;
    envVars @6 :TextTextMap;
    cgroupManager @7 :CgroupManager;
  }

  struct ExecSyncContainerResponse {
    exitCode @0 :Int32;
    stdout @1 :Data;
    stderr @2 :Data;
    timedOut @3 :Bool;
  }

  attachContainer @3 (request: AttachRequest) -> (response: AttachResponse);

  struct AttachRequest {
    id @0 :Text;
    socketPath @1 :Text;
    execSessionId @2 :Text;
    stopAfterStdinEof @3 :Bool;
    metadataOld @4 :Void; # was Data up to 0.8.x
    metadata @5 :Metadata;
  }

  struct AttachResponse {}

  reopenLogContainer @4 (request: ReopenLogRequest) -> (response: ReopenLogResponse);

  struct ReopenLogRequest {
    id @0 :Text;
    metadataOld @1 :Void; # was Data up to 0.8.x
    metadata @2 :Metadata;
  }

  struct ReopenLogResponse {}

  setWindowSizeContainer @5 (request: SetWindowSizeRequest) -> (response: SetWindowSizeResponse);

  struct SetWindowSizeRequest {
    id @0 :Text;
    width @1 :UInt16;
    height @2 :UInt16;
    metadataOld @3 :Void; # was Data up to 0.8.x
    metadata @4 :Metadata;
    # ringmon extension: resize this exec session's terminal instead of the
    # container's. This makes 3 pointers, as many as the legacy layout has:
    # src/rpc/legacy.rs (window_size_tie) tells them apart by what slot 2 holds (Text here, a
    # struct list there).
    execSessionId @5 :Text;
  }

  struct SetWindowSizeResponse {}

  createNamespaces @6 (request: CreateNamespacesRequest) -> (response: CreateNamespacesResponse);

  struct CreateNamespacesRequest {
    metadataOld @0 :Void; # was Data up to 0.8.x
    namespaces @1 :List(Namespace);
    uidMappings @2 :List(Text);
    gidMappings @3 :List(Text);
    basePath @4 :Text;
    podId @5 :Text;
    metadata @6 :Metadata;
  }

  struct CreateNamespacesResponse {
    namespaces @0 :List(NamespaceResponse);
  }

  struct NamespaceResponse {
    type @0 :Namespace;
    path @1 :Text;
  }

  enum Namespace {
    ipc @0;
    net @1;
    pid @2;
    user @3;
    uts @4;
  }

  startFdSocket @7 (request: StartFdSocketRequest) -> (response: StartFdSocketResponse);

  struct StartFdSocketRequest {
    metadata @0 :Metadata;
  }

  struct StartFdSocketResponse {
    path @0 :Text;
  }

  serveExecContainer @8 (request: ServeExecContainerRequest) -> (response: ServeExecContainerResponse);

  struct ServeExecContainerRequest {
    metadata @0 :Metadata;
    id @1 :Text;
    command @2 :List(Text);
    tty @3 :Bool;
    stdin @4 :Bool;
    stdout @5 :Bool;
    stderr @6 :Bool;
    cgroupManager @7 :CgroupManager;
  }

  struct ServeExecContainerResponse {
    url @0 :Text;
  }

  serveAttachContainer @9 (request: ServeAttachContainerRequest) -> (response: ServeAttachContainerResponse);

  struct ServeAttachContainerRequest {
    metadata @0 :Metadata;
    id @1 :Text;
    stdin @2 :Bool;
    stdout @3 :Bool;
    stderr @4 :Bool;
  }

  struct ServeAttachContainerResponse {
    url @0 :Text;
  }

  servePortForwardContainer @10 (request: ServePortForwardContainerRequest) -> (response: ServePortForwardContainerResponse);

  struct ServePortForwardContainerRequest {
    metadata @0 :Metadata;
    netNsPath @1 :Text;
  }

  struct ServePortForwardContainerResponse {
    url @0 :Text;
  }

  # ringmon extension (not in conmon-rs): unpin the namespaces a
  # createNamespaces call pinned for a pod and stop its pause process.
  # basePath empty = "/var/run", as for createNamespaces.
  releaseNamespaces @11 (request: ReleaseNamespacesRequest) -> (response: ReleaseNamespacesResponse);

  struct ReleaseNamespacesRequest {
    podId @0 :Text;
    basePath @1 :Text;
    metadata @2 :Metadata;
  }

  struct ReleaseNamespacesResponse {}

  # ringmon extension: long-running exec sessions (podman `exec -it`,
  # `exec -d`, exec attach). A session is one `runtime exec -d` process in a
  # running container, registered under (container id, session id). Its
  # output goes to its log drivers and to attach clients (attachContainer
  # with execSessionId), stdin and resize go to it, its exit code is written
  # to its exitPaths and kept for execSessionStatus until the container is
  # gone. Created `suspended`, it waits for startExecSession, so a client can
  # attach first and miss no output. Documented in rpc/README.md.
  createExecSession @12 (request: CreateExecSessionRequest) -> (response: CreateExecSessionResponse);

  struct CreateExecSessionRequest {
    id @0 :Text;                     # container id (must be monitored here)
    sessionId @1 :Text;              # unique in the container; empty: the server picks a UUID
    command @2 :List(Text);          # argv; exactly one of command and processPath
    processPath @3 :Text;            # an OCI process JSON file (`runtime exec --process`)
    terminal @4 :Bool;
    stdin @5 :Bool;
    envVars @6 :TextTextMap;         # added to the runtime's environment (as for execSync)
    processEnv @7 :TextTextMap;      # added to the process's environment (`--env`)
    cgroupManager @8 :CgroupManager;
    exitPaths @9 :List(Text);        # files the exit code is written to
    cleanupCmd @10 :List(Text);      # run after the exit files (podman's exec cleanup)
    cleanupDelaySec @11 :UInt32;     # wait this long before running cleanupCmd
    logDrivers @12 :List(LogDriver); # where the session's output is logged
    additionalFds @13 :List(UInt64); # fd-socket slots: fd 3, 4, ... of the process (`--preserve-fds`)
    suspended @14 :Bool;             # create only; startExecSession runs it
    metadata @15 :Metadata;
  }

  struct CreateExecSessionResponse {
    sessionId @0 :Text;
    pid @1 :UInt32;                  # 0 when suspended
  }

  # Runs a session created suspended; returns its pid.
  startExecSession @13 (request: StartExecSessionRequest) -> (response: StartExecSessionResponse);

  struct StartExecSessionRequest {
    id @0 :Text;
    sessionId @1 :Text;
    metadata @2 :Metadata;
  }

  struct StartExecSessionResponse {
    pid @0 :UInt32;
  }

  # A session's state; with `wait`, answers once it has exited (its output
  # drained and its exit files written).
  execSessionStatus @14 (request: ExecSessionStatusRequest) -> (response: ExecSessionStatusResponse);

  struct ExecSessionStatusRequest {
    id @0 :Text;
    sessionId @1 :Text;
    wait @2 :Bool;
    metadata @3 :Metadata;
  }

  struct ExecSessionStatusResponse {
    state @0 :ExecSessionState;
    pid @1 :UInt32;                  # 0 until started
    exitCode @2 :Int32;              # valid when exited
  }

  enum ExecSessionState {
    created @0;
    running @1;
    exited @2;
  }

  # ringmon extension: the containers this server monitors and the most
  # recently exited ones (at most 256 of those), ordered by id, for an
  # operator's `ringmon ctl ps`. The reply holds at most 4096 entries;
  # `truncated` says some were left out.
  listContainers @15 (request: ListContainersRequest) -> (response: ListContainersResponse);

  struct ListContainersRequest {
    metadata @0 :Metadata;
  }

  struct ListContainersResponse {
    containers @0 :List(ContainerInfo);
    truncated @1 :Bool;
  }

  struct ContainerInfo {
    id @0 :Text;
    pid @1 :UInt32;
    running @2 :Bool;
    exitCode @3 :Int32;              # valid when not running
    createdUnixMillis @4 :Int64;     # when the runtime's create returned
    exitedUnixMillis @5 :Int64;      # 0 while running
    runtime @6 :Text;                # the OCI runtime binary
    logDrivers @7 :List(LogDriver);  # maxSize is not reported (0)
  }

  enum CgroupManager {
    systemd @0;
    cgroupfs @1;
  }

  struct TextTextMapEntry {
    key @0 :Text;
    value @1 :Text;
  }

  using TextTextMap = List(TextTextMapEntry);
  using Metadata = TextTextMap;
}

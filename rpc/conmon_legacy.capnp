# The legacy (conmon-rs <= 0.8.x) layout of the request structs whose wire
# layout differs from rpc/conmon.capnp (interface spec section 2.7).
#
# Up to 0.8.x every `metadataOld` field was `Data` (JSON-encoded tracing
# metadata), not `Void`: it takes a pointer slot, so every later pointer sits
# one slot further than in the v1 layout. Data sections are identical. Clients
# of that generation (the ones vendored by released CRI-O 1.30-1.36) still call
# the same `Conmon` interface with the same method ordinals; only these request
# structs are read differently.
#
# Nothing here is served as an interface: src/rpc/legacy.rs reinterprets an
# incoming v1 request reader as one of these structs when the request's
# pointer section has the legacy size, and copies it into a v1-layout message
# for the one v1 translation in src/rpc/mod.rs. Structs that are the same in
# both generations (LogDriver, TextTextMapEntry, the enums) are imported from
# the v1 schema so their readers are the same Rust types. The field ordinals
# below are the v1 ones; tests/schema_layout.rs checks the resulting sizes and
# slots against the spec's legacy table. Struct IDs do not travel on the wire.
@0xd2e0e49d1314dcd1;

using V1 = import "conmon.capnp".Conmon;

# Legacy 1 / 2 (v1 1 / 1).
struct VersionRequest {
  verbose @0 :Bool;
  metadataOld @1 :Data;
  metadata @2 :List(V1.TextTextMapEntry);
}

# Legacy 1 / 9 (v1 1 / 8). Only for the layout test: ringmon answers in the v1
# shape, which a legacy client reads with `metadata` (ptr 8) null.
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
  metadata @9 :Data;
}

# Legacy 1 / 13 (v1 1 / 12).
struct CreateContainerRequest {
  id @0 :Text;
  bundlePath @1 :Text;
  terminal @2 :Bool;
  stdin @3 :Bool;
  exitPaths @4 :List(Text);
  oomExitPaths @5 :List(Text);
  logDrivers @6 :List(V1.LogDriver);
  cleanupCmd @7 :List(Text);
  globalArgs @8 :List(Text);
  commandArgs @9 :List(Text);
  metadataOld @10 :Data;
  metadata @11 :List(V1.TextTextMapEntry);
  envVars @12 :List(V1.TextTextMapEntry);
  cgroupManager @13 :V1.CgroupManager;
  additionalFds @14 :List(UInt64);
  leakFds @15 :List(UInt64);
}

# Legacy 2 / 5 (v1 2 / 4).
struct ExecSyncContainerRequest {
  id @0 :Text;
  timeoutSec @1 :UInt64;
  command @2 :List(Text);
  terminal @3 :Bool;
  metadataOld @4 :Data;
  metadata @5 :List(V1.TextTextMapEntry);
  envVars @6 :List(V1.TextTextMapEntry);
  cgroupManager @7 :V1.CgroupManager;
}

# Legacy 1 / 5 (v1 1 / 4).
struct AttachRequest {
  id @0 :Text;
  socketPath @1 :Text;
  execSessionId @2 :Text;
  stopAfterStdinEof @3 :Bool;
  metadataOld @4 :Data;
  metadata @5 :List(V1.TextTextMapEntry);
}

# Legacy 0 / 3 (v1 0 / 2).
struct ReopenLogRequest {
  id @0 :Text;
  metadataOld @1 :Data;
  metadata @2 :List(V1.TextTextMapEntry);
}

# Legacy 1 / 3 (v1 1 / 2).
struct SetWindowSizeRequest {
  id @0 :Text;
  width @1 :UInt16;
  height @2 :UInt16;
  metadataOld @3 :Data;
  metadata @4 :List(V1.TextTextMapEntry);
}

# Legacy 0 / 7 (v1 0 / 6): every field moves.
struct CreateNamespacesRequest {
  metadataOld @0 :Data;
  namespaces @1 :List(V1.Namespace);
  uidMappings @2 :List(Text);
  gidMappings @3 :List(Text);
  basePath @4 :Text;
  podId @5 :Text;
  metadata @6 :List(V1.TextTextMapEntry);
}

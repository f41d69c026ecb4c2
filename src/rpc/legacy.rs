//! Serving conmon-rs ≤ 0.8.x ("legacy") clients from the same interface.
//!
//! Up to 0.8.x every `metadataOld` request field was `Data` instead of `Void`,
//! so it took a pointer slot and every later pointer sits one slot further
//! (spec §2.7; the layout is declared in `rpc/conmon_legacy.capnp`). Method
//! ordinals, interface ID and data sections are the same, so both generations
//! arrive at the same handlers with a reader of the v1 type.
//!
//! **Detection.** Both Go client generations allocate every request struct at
//! its full compiled size, so the generation shows in the request struct's
//! pointer-section size: a request whose pointer count is exactly the legacy
//! size (e.g. 13 for `CreateContainerRequest`, v1 has 12) is read through the
//! legacy layout. **Every other count is read as v1**: the v1 size itself, a
//! smaller one (fields a client left out read as null either way) and a larger
//! one. A larger count is what a future client that appends fields sends, and
//! appended fields never shift earlier ones, so v1 reads it correctly. (Should
//! a future v1 revision append exactly as many pointers as the legacy layout
//! has, the sizes collide; `tests/schema_layout.rs` pins both sizes so that
//! schema change cannot happen unnoticed.)
//!
//! **Remap.** Each request type that differs has a view here, e.g.
//! [`CreateContainerRequest`]: [`detect`](CreateContainerRequest::detect)
//! takes the v1 reader the handler got and reinterprets the same struct as the
//! legacy layout when the size says so (no copy). The view has the v1
//! reader's getters, with the same names and types (both schemas share
//! `LogDriver`, `TextTextMapEntry` and the enums), each reading the field's
//! slot of the detected layout. The one translation in `rpc` reads through the
//! view, so both generations are validated and translated by the same code.
//! Legacy `metadataOld` (JSON tracing metadata) is read only for the trace
//! context (`trace_parent`), when the `metadata` map has none.
//!
//! The `VersionResponse` needs no view: a legacy client reads the v1 shape
//! with its extra `metadata` pointer (slot 8) out of bounds, i.e. null.

use capnp::traits::{HasStructSize, IntoInternalStructReader};
use capnp::{enum_list, primitive_list, struct_list, text, text_list};

use crate::conmon_capnp::conmon;
use crate::conmon_legacy_capnp as legacy;

/// Which client generation's layout a request struct is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// conmon-rs ≥ 1.0 (`rpc/conmon.capnp`), and any size that is not legacy.
    V1,
    /// conmon-rs ≤ 0.8.x (`rpc/conmon_legacy.capnp`).
    Legacy,
}

/// The detection rule: legacy exactly when the pointer count is the legacy
/// size (and that differs from the v1 size); everything else is v1.
pub fn generation(pointers: u32, v1_pointers: u16, legacy_pointers: u16) -> Generation {
    if pointers == u32::from(legacy_pointers) && legacy_pointers != v1_pointers {
        Generation::Legacy
    } else {
        Generation::V1
    }
}

/// The pointer-section size of a struct as it arrived on the wire.
pub fn pointer_count<'a>(r: impl IntoInternalStructReader<'a>) -> u32 {
    capnp::raw::get_struct_pointer_section(r).len()
}

type TextMap<'a> = capnp::Result<struct_list::Reader<'a, conmon::text_text_map_entry::Owned>>;
type Text<'a> = capnp::Result<text::Reader<'a>>;
type Texts<'a> = capnp::Result<text_list::Reader<'a>>;
type Fds<'a> = capnp::Result<primitive_list::Reader<'a, u64>>;
type Cgroup = Result<conmon::CgroupManager, capnp::NotInSchema>;

/// Declares a view over the v1 and legacy layout of one request struct
/// (module `$m` in both schemas) with the listed getters.
///
/// Where the v1 struct has as many pointers as the legacy one, the size
/// cannot tell them apart and `tie` decides from the pointer slots; without
/// a `tie` such a request is read as v1.
macro_rules! view {
    ($(#[$doc:meta])* $view:ident = $m:ident { $($get:ident -> $ret:ty;)* }) => {
        view! { $(#[$doc])* $view = $m, tie = |_| Generation::V1, { $($get -> $ret;)* } }
    };
    ($(#[$doc:meta])* $view:ident = $m:ident, tie = $tie:expr, { $($get:ident -> $ret:ty;)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub enum $view<'a> {
            V1(conmon::$m::Reader<'a>),
            Legacy(legacy::$m::Reader<'a>),
        }

        impl<'a> $view<'a> {
            /// The v1 reader a handler got, read in the layout its size says.
            pub fn detect(r: conmon::$m::Reader<'a>) -> Self {
                let pointers = pointer_count(r);
                let v1_pointers = <conmon::$m::Builder<'_> as HasStructSize>::STRUCT_SIZE.pointers;
                let legacy_pointers =
                    <legacy::$m::Builder<'_> as HasStructSize>::STRUCT_SIZE.pointers;
                let tie: fn(capnp::any_pointer_list::Reader<'_>) -> Generation = $tie;
                let detected = if v1_pointers == legacy_pointers
                    && pointers == u32::from(legacy_pointers)
                {
                    tie(capnp::raw::get_struct_pointer_section(r))
                } else {
                    generation(pointers, v1_pointers, legacy_pointers)
                };
                match detected {
                    Generation::V1 => Self::V1(r),
                    Generation::Legacy => {
                        tracing::trace!(
                            request = stringify!($m),
                            pointers,
                            "conmon-rs <= 0.8 request layout"
                        );
                        Self::Legacy(r.into_internal_struct_reader().into())
                    }
                }
            }

            /// The layout this request is read in.
            pub fn generation(self) -> Generation {
                match self {
                    Self::V1(_) => Generation::V1,
                    Self::Legacy(_) => Generation::Legacy,
                }
            }

            $(
                pub fn $get(self) -> $ret {
                    match self {
                        Self::V1(r) => r.$get(),
                        Self::Legacy(r) => r.$get(),
                    }
                }
            )*
        }
    };
}

view! {
    /// `version` request: legacy 1 / 2, v1 1 / 1 (only `metadata` moves).
    VersionRequest = version_request {
        get_verbose -> bool;
        get_metadata -> TextMap<'a>;
    }
}

view! {
    /// `createContainer` request: legacy 1 / 13, v1 1 / 12 (`metadata`,
    /// `envVars`, `additionalFds`, `leakFds` move).
    CreateContainerRequest = create_container_request {
        get_id -> Text<'a>;
        get_bundle_path -> Text<'a>;
        get_terminal -> bool;
        get_stdin -> bool;
        get_exit_paths -> Texts<'a>;
        get_oom_exit_paths -> Texts<'a>;
        get_log_drivers -> capnp::Result<struct_list::Reader<'a, conmon::log_driver::Owned>>;
        get_cleanup_cmd -> Texts<'a>;
        get_global_args -> Texts<'a>;
        get_command_args -> Texts<'a>;
        get_metadata -> TextMap<'a>;
        get_env_vars -> TextMap<'a>;
        get_cgroup_manager -> Cgroup;
        get_additional_fds -> Fds<'a>;
        get_leak_fds -> Fds<'a>;
    }
}

view! {
    /// `execSyncContainer` request: legacy 2 / 5, v1 2 / 4 (`metadata` and
    /// `envVars` move).
    ExecSyncContainerRequest = exec_sync_container_request {
        get_id -> Text<'a>;
        get_timeout_sec -> u64;
        get_command -> Texts<'a>;
        get_terminal -> bool;
        get_metadata -> TextMap<'a>;
        get_env_vars -> TextMap<'a>;
        get_cgroup_manager -> Cgroup;
    }
}

view! {
    /// `attachContainer` request: legacy 1 / 5, v1 1 / 4 (only `metadata`
    /// moves).
    AttachRequest = attach_request {
        get_id -> Text<'a>;
        get_socket_path -> Text<'a>;
        get_exec_session_id -> Text<'a>;
        get_stop_after_stdin_eof -> bool;
        get_metadata -> TextMap<'a>;
    }
}

view! {
    /// `reopenLogContainer` request: legacy 0 / 3, v1 0 / 2 (only `metadata`
    /// moves).
    ReopenLogRequest = reopen_log_request {
        get_id -> Text<'a>;
        get_metadata -> TextMap<'a>;
    }
}

view! {
    /// `setWindowSizeContainer` request: legacy 1 / 3, v1 1 / 2 (only
    /// `metadata` moves). ringmon's `execSessionId` extension makes v1 3
    /// pointers too; slot 2 tells them apart ([`window_size_tie`]).
    SetWindowSizeRequest = set_window_size_request, tie = window_size_tie, {
        get_id -> Text<'a>;
        get_width -> u16;
        get_height -> u16;
        get_metadata -> TextMap<'a>;
    }
}

/// A 3-pointer `SetWindowSizeRequest`: slot 2 is `execSessionId` (Text, a
/// byte list) in the extended v1 layout and `metadata` (a struct list) in
/// the legacy one. Null there reads the same either way (no session,
/// metadata unused) and is taken as legacy.
fn window_size_tie(slots: capnp::any_pointer_list::Reader<'_>) -> Generation {
    let slot = slots.get(2);
    if !slot.is_null() && slot.get_as::<text::Reader<'_>>().is_ok() {
        Generation::V1
    } else {
        Generation::Legacy
    }
}

impl<'a> SetWindowSizeRequest<'a> {
    /// The exec session to resize; empty for the container itself (and
    /// always for legacy clients, which predate the field).
    pub fn get_exec_session_id(self) -> Text<'a> {
        match self {
            Self::V1(r) => r.get_exec_session_id(),
            Self::Legacy(_) => Ok(text::Reader::from("")),
        }
    }
}

view! {
    /// `createNamespaces` request: legacy 0 / 7, v1 0 / 6 (every field
    /// moves).
    CreateNamespacesRequest = create_namespaces_request {
        get_namespaces -> capnp::Result<enum_list::Reader<'a, conmon::Namespace>>;
        get_uid_mappings -> Texts<'a>;
        get_gid_mappings -> Texts<'a>;
        get_base_path -> Text<'a>;
        get_pod_id -> Text<'a>;
        get_metadata -> TextMap<'a>;
    }
}

/// `trace_parent` for the views whose legacy layout has `metadataOld` as
/// `Data` (JSON tracing metadata).
macro_rules! trace_parent {
    ($($view:ident),*) => {$(
        impl<'a> $view<'a> {
            /// The client's trace context: the `metadata` map, else the
            /// legacy JSON in `metadataOld` (see [`super::trace_parent`]).
            pub fn trace_parent(self) -> Option<crate::otel::SpanContext> {
                let json = match self {
                    Self::V1(_) => None,
                    Self::Legacy(r) => r.get_metadata_old().ok(),
                };
                super::trace_parent(self.get_metadata(), json)
            }
        }
    )*};
}

trace_parent!(
    VersionRequest,
    CreateContainerRequest,
    ExecSyncContainerRequest,
    AttachRequest,
    ReopenLogRequest,
    SetWindowSizeRequest,
    CreateNamespacesRequest
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CgroupManager;
    use crate::log::LogFormat;
    use capnp::message::{Builder, HeapAllocator};

    /// The root of a message built in one layout, read as the v1 type, as a
    /// handler receives it.
    fn as_v1<'a, T: capnp::traits::FromPointerReader<'a>>(msg: &'a Builder<HeapAllocator>) -> T {
        msg.get_root_as_reader().unwrap()
    }

    fn fill_map(
        mut l: struct_list::Builder<'_, conmon::text_text_map_entry::Owned>,
        pairs: &[(&str, &str)],
    ) {
        for (i, (k, v)) in pairs.iter().enumerate() {
            let mut e = l.reborrow().get(i as u32);
            e.set_key(*k);
            e.set_value(*v);
        }
    }

    const TRACE: &[(&str, &str)] = &[(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )];
    const TRACE_JSON: &[u8] =
        br#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;

    /// A legacy createContainer request as a 0.7/0.8 client with tracing on
    /// sends it: JSON in metadataOld, the trace map in metadata, env vars and
    /// fd slots in their legacy slots.
    fn legacy_create(fds: bool) -> Builder<HeapAllocator> {
        let mut msg = Builder::new_default();
        let mut r = msg.init_root::<legacy::create_container_request::Builder<'_>>();
        r.set_id("abc");
        r.set_bundle_path("/tmp");
        r.set_terminal(true);
        r.set_stdin(true);
        r.reborrow().init_exit_paths(2).set(0, "/tmp/exit-a");
        r.reborrow().get_exit_paths().unwrap().set(1, "/tmp/exit-b");
        r.reborrow().init_oom_exit_paths(1).set(0, "/tmp/oom");
        {
            let mut d = r.reborrow().init_log_drivers(2);
            d.reborrow().get(0).set_path("/tmp/ctr.log");
            d.reborrow().get(0).set_max_size(1024);
            d.reborrow()
                .get(1)
                .set_type(conmon::log_driver::Type::Journald);
        }
        r.reborrow().init_cleanup_cmd(1).set(0, "cleanup");
        r.reborrow().init_global_args(1).set(0, "--debug");
        r.reborrow().init_command_args(1).set(0, "--no-pivot");
        r.set_metadata_old(TRACE_JSON);
        fill_map(r.reborrow().init_metadata(1), TRACE);
        fill_map(
            r.reborrow().init_env_vars(2),
            &[("RINGMON_A", "one"), ("RINGMON_B", "two words")],
        );
        r.set_cgroup_manager(conmon::CgroupManager::Cgroupfs);
        if fds {
            r.reborrow().init_additional_fds(1).set(0, 3);
            r.reborrow().init_leak_fds(1).set(0, 4);
        }
        msg
    }

    /// The same request in the v1 layout.
    fn v1_create() -> Builder<HeapAllocator> {
        let mut msg = Builder::new_default();
        let mut r = msg.init_root::<conmon::create_container_request::Builder<'_>>();
        r.set_id("abc");
        r.set_bundle_path("/tmp");
        r.set_terminal(true);
        r.set_stdin(true);
        r.reborrow().init_exit_paths(2).set(0, "/tmp/exit-a");
        r.reborrow().get_exit_paths().unwrap().set(1, "/tmp/exit-b");
        r.reborrow().init_oom_exit_paths(1).set(0, "/tmp/oom");
        {
            let mut d = r.reborrow().init_log_drivers(2);
            d.reborrow().get(0).set_path("/tmp/ctr.log");
            d.reborrow().get(0).set_max_size(1024);
            d.reborrow()
                .get(1)
                .set_type(conmon::log_driver::Type::Journald);
        }
        r.reborrow().init_cleanup_cmd(1).set(0, "cleanup");
        r.reborrow().init_global_args(1).set(0, "--debug");
        r.reborrow().init_command_args(1).set(0, "--no-pivot");
        fill_map(
            r.reborrow().init_env_vars(2),
            &[("RINGMON_A", "one"), ("RINGMON_B", "two words")],
        );
        r.set_cgroup_manager(conmon::CgroupManager::Cgroupfs);
        msg
    }

    #[test]
    fn rule() {
        assert_eq!(generation(13, 12, 13), Generation::Legacy);
        assert_eq!(generation(12, 12, 13), Generation::V1);
        // A future client with appended fields, an older one with fewer.
        assert_eq!(generation(14, 12, 13), Generation::V1);
        assert_eq!(generation(20, 12, 13), Generation::V1);
        assert_eq!(generation(0, 12, 13), Generation::V1);
        // Sizes that do not differ can never select the legacy layout.
        assert_eq!(generation(3, 3, 3), Generation::V1);
    }

    #[test]
    fn create_container_legacy_translates_like_v1() {
        let legacy_msg = legacy_create(false);
        let r: conmon::create_container_request::Reader<'_> = as_v1(&legacy_msg);
        assert_eq!(pointer_count(r), 13);
        assert_eq!(
            CreateContainerRequest::detect(r).generation(),
            Generation::Legacy
        );
        let got = super::super::create_container(r).unwrap();

        let v1_msg = v1_create();
        let r1: conmon::create_container_request::Reader<'_> = as_v1(&v1_msg);
        assert_eq!(
            CreateContainerRequest::detect(r1).generation(),
            Generation::V1
        );
        let want = super::super::create_container(r1).unwrap();

        assert_eq!(
            got.env,
            [
                ("RINGMON_A".to_string(), "one".to_string()),
                ("RINGMON_B".to_string(), "two words".to_string())
            ]
        );
        assert_eq!(got.id, "abc");
        assert!(got.terminal && got.stdin);
        assert_eq!(got.exit_paths.len(), 2);
        assert_eq!(got.logs.len(), 2);
        assert_eq!(got.logs[0].format, LogFormat::Cri);
        assert_eq!(got.logs[0].max_size, 1024);
        assert_eq!(got.logs[1].format, LogFormat::Journald);
        assert_eq!(got.cleanup_cmd, ["cleanup"]);
        assert_eq!(got.global_args, ["--debug"]);
        assert_eq!(got.command_args, ["--no-pivot"]);
        assert_eq!(got.cgroup_manager, CgroupManager::Cgroupfs);
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
    }

    /// The trace context of a legacy request: from its metadata map, and
    /// from the JSON in metadataOld when the map has none; a v1 request's
    /// from its map.
    #[test]
    fn legacy_trace_parent_from_map_or_json() {
        let want = crate::otel::parse_traceparent(TRACE[0].1);
        assert!(want.is_some());
        let msg = legacy_create(false);
        let view = CreateContainerRequest::detect(as_v1(&msg));
        assert_eq!(view.generation(), Generation::Legacy);
        assert_eq!(view.trace_parent(), want);

        let mut msg = Builder::new_default();
        let mut r = msg.init_root::<legacy::create_container_request::Builder<'_>>();
        r.set_id("abc");
        r.set_metadata_old(TRACE_JSON);
        let view = CreateContainerRequest::detect(as_v1(&msg));
        assert_eq!(view.generation(), Generation::Legacy);
        assert_eq!(view.trace_parent(), want);

        // Malformed JSON: no parent, no error.
        let mut msg = Builder::new_default();
        let mut r = msg.init_root::<legacy::create_container_request::Builder<'_>>();
        r.set_metadata_old(b"{\"traceparent\": 12");
        assert_eq!(
            CreateContainerRequest::detect(as_v1(&msg)).trace_parent(),
            None
        );

        let mut msg = Builder::new_default();
        let mut r = msg.init_root::<conmon::create_container_request::Builder<'_>>();
        fill_map(r.reborrow().init_metadata(1), TRACE);
        let view = CreateContainerRequest::detect(as_v1(&msg));
        assert_eq!(view.generation(), Generation::V1);
        assert_eq!(view.trace_parent(), want);
    }

    /// What a v1-only server makes of the same bytes: the trace map as the
    /// environment and the env list as fd slots (spec §2.7).
    #[test]
    fn legacy_create_container_misread_without_the_view() {
        let msg = legacy_create(false);
        let r: conmon::create_container_request::Reader<'_> = as_v1(&msg);
        let env = r.get_env_vars().unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env.get(0).get_key().unwrap(), "traceparent");
        // The legacy envVars list (pointer-only structs) in the v1
        // additionalFds slot does not even decode as a list of UInt64.
        assert!(r.get_additional_fds().is_err());
    }

    #[test]
    fn create_container_legacy_fd_slots() {
        let msg = legacy_create(true);
        let r: conmon::create_container_request::Reader<'_> = as_v1(&msg);
        let view = CreateContainerRequest::detect(r);
        assert_eq!(
            view.get_additional_fds()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(view.get_leak_fds().unwrap().iter().collect::<Vec<_>>(), [4]);
        assert_eq!(view.get_env_vars().unwrap().len(), 2);
        assert_eq!(
            view.get_metadata().unwrap().get(0).get_key().unwrap(),
            "traceparent"
        );
        // Through the translation: the same answer as for a v1 request with
        // those slots (whatever the fd-passing policy is).
        let got = super::super::create_container(r).map(|c| format!("{c:?}"));
        let mut v1_msg = v1_create();
        {
            let mut b = v1_msg
                .get_root::<conmon::create_container_request::Builder<'_>>()
                .unwrap();
            b.reborrow().init_additional_fds(1).set(0, 3);
            b.reborrow().init_leak_fds(1).set(0, 4);
        }
        let want = super::super::create_container(as_v1(&v1_msg)).map(|c| format!("{c:?}"));
        assert_eq!(
            got.map_err(|e| e.to_string()),
            want.map_err(|e| e.to_string())
        );
    }

    #[test]
    fn create_container_legacy_errors_name_the_same_field() {
        let mut msg = legacy_create(false);
        {
            let mut r = msg
                .get_root::<legacy::create_container_request::Builder<'_>>()
                .unwrap();
            fill_map(r.reborrow().init_env_vars(1), &[("A=B", "x")]);
        }
        let e = super::super::create_container(as_v1(&msg)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid envVars[0].key 'A=B': must be non-empty without '=' or NUL"
        );
    }

    #[test]
    fn exec_sync_legacy() {
        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<legacy::exec_sync_container_request::Builder<'_>>();
            r.set_id("abc");
            r.set_timeout_sec(7);
            let mut c = r.reborrow().init_command(2);
            c.set(0, "/busybox");
            c.set(1, "true");
            r.set_terminal(true);
            r.set_metadata_old(TRACE_JSON);
            fill_map(r.reborrow().init_metadata(1), TRACE);
            fill_map(r.reborrow().init_env_vars(1), &[("RINGMON_EXEC", "42")]);
            r.set_cgroup_manager(conmon::CgroupManager::Cgroupfs);
        }
        let r: conmon::exec_sync_container_request::Reader<'_> = as_v1(&msg);
        assert_eq!(pointer_count(r), 5);
        assert_eq!(
            ExecSyncContainerRequest::detect(r).generation(),
            Generation::Legacy
        );
        let got = super::super::exec_sync_container(r).unwrap();
        assert_eq!(got.id, "abc");
        assert_eq!(got.command, ["/busybox", "true"]);
        assert_eq!(got.timeout, Some(std::time::Duration::from_secs(7)));
        assert!(got.terminal);
        assert_eq!(got.env, [("RINGMON_EXEC".to_string(), "42".to_string())]);
        assert_eq!(got.cgroup_manager, CgroupManager::Cgroupfs);

        // Read as v1, the trace map would have been the environment.
        assert_eq!(
            r.get_env_vars().unwrap().get(0).get_key().unwrap(),
            "traceparent"
        );
    }

    #[test]
    fn attach_legacy() {
        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<legacy::attach_request::Builder<'_>>();
            r.set_id("abc");
            r.set_socket_path("/tmp/attach");
            r.set_exec_session_id("sess");
            r.set_stop_after_stdin_eof(true);
            r.set_metadata_old(TRACE_JSON);
            fill_map(r.reborrow().init_metadata(1), TRACE);
        }
        let r: conmon::attach_request::Reader<'_> = as_v1(&msg);
        assert_eq!(pointer_count(r), 5);
        let view = AttachRequest::detect(r);
        assert_eq!(view.generation(), Generation::Legacy);
        assert_eq!(view.get_metadata().unwrap().len(), 1);
        let got = super::super::attach_container(r).unwrap();
        assert_eq!(got.id, "abc");
        assert_eq!(got.socket_path, std::path::Path::new("/tmp/attach"));
        assert_eq!(got.exec_session_id, "sess");
        assert!(got.stop_after_stdin_eof);
    }

    #[test]
    fn version_reopen_and_window_size_legacy() {
        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<legacy::version_request::Builder<'_>>();
            r.set_verbose(true);
            r.set_metadata_old(b"{}");
            fill_map(r.reborrow().init_metadata(1), TRACE);
        }
        let r = VersionRequest::detect(as_v1(&msg));
        assert_eq!(r.generation(), Generation::Legacy);
        assert!(r.get_verbose());
        assert_eq!(r.get_metadata().unwrap().len(), 1);

        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<legacy::reopen_log_request::Builder<'_>>();
            r.set_id("abc");
            r.set_metadata_old(b"{}");
            fill_map(r.reborrow().init_metadata(1), TRACE);
        }
        let r = ReopenLogRequest::detect(as_v1(&msg));
        assert_eq!(r.generation(), Generation::Legacy);
        assert_eq!(super::super::target_id(r.get_id()).unwrap(), "abc");
        assert_eq!(r.get_metadata().unwrap().len(), 1);

        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<legacy::set_window_size_request::Builder<'_>>();
            r.set_id("abc");
            r.set_width(132);
            r.set_height(43);
            r.set_metadata_old(b"{}");
            fill_map(r.reborrow().init_metadata(1), TRACE);
        }
        let r = SetWindowSizeRequest::detect(as_v1(&msg));
        assert_eq!(r.generation(), Generation::Legacy);
        assert_eq!(super::super::target_id(r.get_id()).unwrap(), "abc");
        assert_eq!((r.get_width(), r.get_height()), (132, 43));
        assert_eq!(r.get_metadata().unwrap().len(), 1);
        assert_eq!(r.get_exec_session_id().unwrap(), "");
    }

    /// The execSessionId extension gives v1 as many pointers as the legacy
    /// layout; slot 2's content decides.
    #[test]
    fn set_window_size_extension_is_told_from_legacy() {
        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<conmon::set_window_size_request::Builder<'_>>();
            r.set_id("abc");
            r.set_width(80);
            r.set_height(24);
            fill_map(r.reborrow().init_metadata(1), TRACE);
            r.set_exec_session_id("s1");
        }
        let r = SetWindowSizeRequest::detect(as_v1(&msg));
        assert_eq!(
            pointer_count(as_v1::<conmon::set_window_size_request::Reader<'_>>(&msg)),
            3
        );
        assert_eq!(r.generation(), Generation::V1);
        assert_eq!(r.get_exec_session_id().unwrap(), "s1");
        assert_eq!(r.get_metadata().unwrap().len(), 1);
        assert_eq!((r.get_width(), r.get_height()), (80, 24));

        // Without a session id the layouts read alike where it matters.
        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<conmon::set_window_size_request::Builder<'_>>();
            r.set_id("abc");
            r.set_width(80);
            r.set_height(24);
            fill_map(r.reborrow().init_metadata(1), TRACE);
        }
        let r = SetWindowSizeRequest::detect(as_v1(&msg));
        assert_eq!(super::super::target_id(r.get_id()).unwrap(), "abc");
        assert_eq!((r.get_width(), r.get_height()), (80, 24));
        assert_eq!(r.get_exec_session_id().unwrap(), "");
    }

    #[test]
    fn create_namespaces_legacy() {
        let mut msg = Builder::new_default();
        {
            let mut r = msg.init_root::<legacy::create_namespaces_request::Builder<'_>>();
            r.set_metadata_old(TRACE_JSON);
            let mut ns = r.reborrow().init_namespaces(3);
            ns.set(0, conmon::Namespace::Ipc);
            ns.set(1, conmon::Namespace::Net);
            ns.set(2, conmon::Namespace::User);
            r.reborrow().init_uid_mappings(1).set(0, "0 1000 1");
            r.reborrow().init_gid_mappings(1).set(0, "0 2000 1");
            r.set_base_path("/run/ringmon-ns");
            r.set_pod_id("pod1");
            fill_map(r.reborrow().init_metadata(1), TRACE);
        }
        let v1: conmon::create_namespaces_request::Reader<'_> = as_v1(&msg);
        assert_eq!(pointer_count(v1), 7);
        // Read as v1 the namespaces slot holds the JSON bytes and the
        // namespace list sits where uidMappings is expected.
        assert!(v1.get_uid_mappings().is_err());

        let r = CreateNamespacesRequest::detect(v1);
        assert_eq!(r.generation(), Generation::Legacy);
        let ns: Vec<_> = r
            .get_namespaces()
            .unwrap()
            .iter()
            .map(|n| n.unwrap())
            .collect();
        assert_eq!(
            ns,
            [
                conmon::Namespace::Ipc,
                conmon::Namespace::Net,
                conmon::Namespace::User
            ]
        );
        assert_eq!(r.get_uid_mappings().unwrap().get(0).unwrap(), "0 1000 1");
        assert_eq!(r.get_gid_mappings().unwrap().get(0).unwrap(), "0 2000 1");
        assert_eq!(r.get_base_path().unwrap(), "/run/ringmon-ns");
        assert_eq!(r.get_pod_id().unwrap(), "pod1");
        assert_eq!(r.get_metadata().unwrap().len(), 1);

        // The v1 layout of the same request reads the same through the view.
        let mut msg1 = Builder::new_default();
        {
            let mut r = msg1.init_root::<conmon::create_namespaces_request::Builder<'_>>();
            r.reborrow()
                .init_namespaces(1)
                .set(0, conmon::Namespace::Uts);
            r.set_pod_id("pod1");
        }
        let r1 = CreateNamespacesRequest::detect(as_v1(&msg1));
        assert_eq!(r1.generation(), Generation::V1);
        assert_eq!(
            r1.get_namespaces().unwrap().get(0).unwrap(),
            conmon::Namespace::Uts
        );
        assert_eq!(r1.get_pod_id().unwrap(), "pod1");
    }

    /// A struct with more pointers than either layout (a future client that
    /// appended fields) is read as v1: its first slots are the v1 ones.
    #[test]
    fn larger_than_both_layouts_is_v1() {
        // A legacy createContainer request (13 pointers) stands in for a
        // future attach request with appended fields (v1 4, legacy 5).
        let msg = legacy_create(false);
        let r: conmon::attach_request::Reader<'_> = as_v1(&msg);
        assert_eq!(pointer_count(r), 13);
        let view = AttachRequest::detect(r);
        assert_eq!(view.generation(), Generation::V1);
        assert_eq!(view.get_id().unwrap(), "abc");
        assert_eq!(view.get_socket_path().unwrap(), "/tmp");

        // And a smaller one (legacy createNamespaces, 7) as createContainer.
        let mut small = Builder::new_default();
        small.init_root::<legacy::create_namespaces_request::Builder<'_>>();
        let r: conmon::create_container_request::Reader<'_> = as_v1(&small);
        assert_eq!(
            CreateContainerRequest::detect(r).generation(),
            Generation::V1
        );
    }

    #[test]
    fn unknown_cgroup_manager_is_refused_in_both_layouts() {
        let mut msg = Builder::new_default();
        msg.init_root::<legacy::exec_sync_container_request::Builder<'_>>()
            .set_id("abc");
        // The generated setter only takes schema values: patch the raw enum
        // value 9 into bytes 10-11 (cgroupManager) of the serialized words.
        let mut words = capnp::serialize::write_message_segments_to_words(&msg);
        // Segment table (8 bytes), root pointer (8), data words 0 and 1.
        words[8 + 8 + 10] = 9;
        let reader = capnp::serialize::read_message(
            &mut words.as_slice(),
            capnp::message::ReaderOptions::new(),
        )
        .unwrap();
        let r: conmon::exec_sync_container_request::Reader<'_> = reader.get_root().unwrap();
        let view = ExecSyncContainerRequest::detect(r);
        assert_eq!(view.generation(), Generation::Legacy);
        assert!(matches!(
            view.get_cgroup_manager(),
            Err(capnp::NotInSchema(9))
        ));
    }
}

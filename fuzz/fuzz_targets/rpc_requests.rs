//! Every RPC request, decoded from arbitrary bytes and translated as the
//! control server's handlers do it (`ringmon::rpc`, `ringmon::rpc::stream`),
//! in both the v1 and the conmon-rs ≤ 0.8 layout: the layout detection of
//! `ringmon::rpc::legacy` runs on whatever pointer count the bytes declare.
//!
//! Input: the method ordinal (byte), then a capnp message (segment table
//! and segments, as on the wire) whose root is that method's request.
//! Checked beyond "no panic": the detected layout follows the documented
//! rule, and a translated request satisfies the checks it passed.
#![no_main]

use std::path::Path;

use capnp::message::ReaderOptions;
use capnp::traits::HasStructSize;
use libfuzzer_sys::fuzz_target;
use ringmon::conmon_capnp::conmon;
use ringmon::conmon_legacy_capnp as legacy_schema;
use ringmon::rpc::{self, legacy, RequestError};

fuzz_target!(|data: &[u8]| {
    let Some((&method, wire)) = data.split_first() else {
        return;
    };
    // Word-aligned, as the transport's reader stores segments. Read from
    // the flat buffer so that a segment table declaring more than the
    // input holds fails before anything is allocated for it.
    let mut words = capnp::Word::allocate_zeroed_vec(wire.len().div_ceil(8));
    let aligned = &mut capnp::Word::words_to_bytes_mut(&mut words)[..wire.len()];
    aligned.copy_from_slice(wire);
    let mut flat: &[u8] = aligned;
    // The limits capnp-rpc's two-party transport reads requests with.
    let Ok(message) =
        capnp::serialize::read_message_from_flat_slice(&mut flat, ReaderOptions::new())
    else {
        return;
    };
    let _ = translate(method, &message);
});

/// Runs the handler's translation for method `method`; a decode error of
/// the root ends it, like the `?` in the handlers.
fn translate(
    method: u8,
    message: &capnp::message::Reader<capnp::serialize::BufferSegments<&[u8]>>,
) -> capnp::Result<()> {
    match method % 15 {
        0 => {
            let r: conmon::version_request::Reader<'_> = message.get_root()?;
            let view = legacy::VersionRequest::detect(r);
            check_generation::<
                conmon::version_request::Builder<'_>,
                legacy_schema::version_request::Builder<'_>,
            >(legacy::pointer_count(r), view.generation());
            let _ = view.get_verbose();
            walk_map(view.get_metadata());
            check_trace(view.trace_parent());
        }
        1 => {
            let r: conmon::create_container_request::Reader<'_> = message.get_root()?;
            let view = legacy::CreateContainerRequest::detect(r);
            check_generation::<
                conmon::create_container_request::Builder<'_>,
                legacy_schema::create_container_request::Builder<'_>,
            >(legacy::pointer_count(r), view.generation());
            walk_map(view.get_metadata());
            check_trace(view.trace_parent());
            if let Ok(c) = checked(rpc::create_container(r)) {
                check_id(&c.id);
                assert!(c.bundle.is_absolute());
                for p in c.exit_paths.iter().chain(&c.oom_exit_paths) {
                    check_path(p);
                }
                for log in &c.logs {
                    if log.format != ringmon::log::LogFormat::Journald {
                        check_path(&log.path);
                    }
                }
                check_env(&c.env);
                check_unique(&c.additional_fds);
                check_unique(&c.leak_fds);
            }
        }
        2 => {
            let r: conmon::exec_sync_container_request::Reader<'_> = message.get_root()?;
            let view = legacy::ExecSyncContainerRequest::detect(r);
            check_generation::<
                conmon::exec_sync_container_request::Builder<'_>,
                legacy_schema::exec_sync_container_request::Builder<'_>,
            >(legacy::pointer_count(r), view.generation());
            walk_map(view.get_metadata());
            check_trace(view.trace_parent());
            if let Ok(e) = checked(rpc::exec_sync_container(r)) {
                check_id(&e.id);
                assert!(!e.command.is_empty());
                check_env(&e.env);
            }
        }
        3 => {
            let r: conmon::attach_request::Reader<'_> = message.get_root()?;
            let view = legacy::AttachRequest::detect(r);
            check_generation::<
                conmon::attach_request::Builder<'_>,
                legacy_schema::attach_request::Builder<'_>,
            >(legacy::pointer_count(r), view.generation());
            walk_map(view.get_metadata());
            check_trace(view.trace_parent());
            if let Ok(a) = checked(rpc::attach_container(r)) {
                check_id(&a.id);
                check_path(&a.socket_path);
            }
        }
        4 => {
            let r: conmon::reopen_log_request::Reader<'_> = message.get_root()?;
            let view = legacy::ReopenLogRequest::detect(r);
            check_generation::<
                conmon::reopen_log_request::Builder<'_>,
                legacy_schema::reopen_log_request::Builder<'_>,
            >(legacy::pointer_count(r), view.generation());
            walk_map(view.get_metadata());
            check_trace(view.trace_parent());
            if let Ok(id) = checked(rpc::target_id(view.get_id())) {
                check_id(&id);
            }
        }
        5 => {
            let r: conmon::set_window_size_request::Reader<'_> = message.get_root()?;
            // v1 and legacy can both have 3 pointers here (the execSessionId
            // extension): the tie rule decides, so no size check.
            walk_map(legacy::SetWindowSizeRequest::detect(r).get_metadata());
            check_trace(legacy::SetWindowSizeRequest::detect(r).trace_parent());
            if let Ok(s) = checked(rpc::set_window_size(r)) {
                check_id(&s.id);
                assert!(s.width > 0 && s.height > 0);
            }
        }
        6 => {
            let r: conmon::create_namespaces_request::Reader<'_> = message.get_root()?;
            let view = legacy::CreateNamespacesRequest::detect(r);
            check_generation::<
                conmon::create_namespaces_request::Builder<'_>,
                legacy_schema::create_namespaces_request::Builder<'_>,
            >(legacy::pointer_count(r), view.generation());
            walk_map(view.get_metadata());
            check_trace(view.trace_parent());
            if let Ok(n) = checked(rpc::create_namespaces(r)) {
                check_id(&n.pod_id);
                check_path(&n.base_path);
            }
        }
        7 => {
            let r: conmon::start_fd_socket_request::Reader<'_> = message.get_root()?;
            check_trace(rpc::trace_parent(r.get_metadata(), None));
        }
        8 => {
            let r: conmon::serve_exec_container_request::Reader<'_> = message.get_root()?;
            check_trace(rpc::trace_parent(r.get_metadata(), None));
            if let Ok(e) = checked(rpc::stream::serve_exec_container(r)) {
                check_id(&e.id);
                assert!(!e.command.is_empty());
            }
        }
        9 => {
            let r: conmon::serve_attach_container_request::Reader<'_> = message.get_root()?;
            check_trace(rpc::trace_parent(r.get_metadata(), None));
            if let Ok(a) = checked(rpc::stream::serve_attach_container(r)) {
                check_id(&a.id);
            }
        }
        10 => {
            let r: conmon::serve_port_forward_container_request::Reader<'_> = message.get_root()?;
            check_trace(rpc::trace_parent(r.get_metadata(), None));
            let _ = checked(rpc::stream::serve_port_forward_container(r));
        }
        11 => {
            let r: conmon::release_namespaces_request::Reader<'_> = message.get_root()?;
            check_trace(rpc::trace_parent(r.get_metadata(), None));
            if let Ok(n) = checked(rpc::release_namespaces(r)) {
                check_id(&n.pod_id);
                check_path(&n.base_path);
            }
        }
        12 => {
            let r: conmon::create_exec_session_request::Reader<'_> = message.get_root()?;
            check_trace(rpc::trace_parent(r.get_metadata(), None));
            if let Ok(s) = checked(rpc::create_exec_session(r)) {
                check_id(&s.id);
                check_env(&s.env);
                check_env(&s.process_env);
                for p in &s.exit_paths {
                    check_path(p);
                }
                check_unique(&s.additional_fds);
            }
        }
        13 => {
            let r: conmon::start_exec_session_request::Reader<'_> = message.get_root()?;
            check_trace(rpc::trace_parent(r.get_metadata(), None));
            if let Ok((id, sid)) = checked(rpc::session_target(r.get_id(), r.get_session_id())) {
                check_id(&id);
                assert!(!sid.is_empty());
            }
        }
        _ => {
            let r: conmon::exec_session_status_request::Reader<'_> = message.get_root()?;
            check_trace(rpc::trace_parent(r.get_metadata(), None));
            if let Ok((id, sid)) = checked(rpc::session_target(r.get_id(), r.get_session_id())) {
                check_id(&id);
                assert!(!sid.is_empty());
            }
            let _ = r.get_wait();
        }
    }
    Ok(())
}

/// A trace context read from a request (the metadata map, or the legacy
/// JSON) names a real trace and span: the parser refuses all-zero ids.
fn check_trace(parent: Option<ringmon::otel::SpanContext>) {
    if let Some(p) = parent {
        assert_ne!(p.trace_id, [0; 16]);
        assert_ne!(p.span_id, [0; 8]);
    }
}

/// A refusal names its field and value; passes an accepted request on.
fn checked<T>(result: Result<T, RequestError>) -> Result<T, ()> {
    result.map_err(|e| {
        let message = e.to_string();
        assert!(!message.is_empty());
        if let RequestError::Invalid { field, .. } = &e {
            assert!(!field.is_empty());
            assert!(message.contains(field.as_str()));
        }
    })
}

/// Legacy exactly when the struct has the legacy pointer count (which
/// differs from v1's).
fn check_generation<V1: HasStructSize, Legacy: HasStructSize>(
    pointers: u32,
    detected: legacy::Generation,
) {
    let v1 = V1::STRUCT_SIZE.pointers;
    let old = Legacy::STRUCT_SIZE.pointers;
    let expect = if pointers == u32::from(old) && old != v1 {
        legacy::Generation::Legacy
    } else {
        legacy::Generation::V1
    };
    assert_eq!(
        detected, expect,
        "pointers {pointers}, v1 {v1}, legacy {old}"
    );
}

/// Reads every entry of a metadata map (never used by the server, but its
/// slot moves between the layouts).
fn walk_map(
    map: capnp::Result<capnp::struct_list::Reader<'_, conmon::text_text_map_entry::Owned>>,
) {
    if let Ok(map) = map {
        for entry in map.iter().take(1024) {
            let _ = entry.get_key().map(|k| k.to_str().map(str::len));
            let _ = entry.get_value().map(|v| v.to_str().map(str::len));
        }
    }
}

fn check_id(id: &str) {
    assert!(!id.is_empty() && !id.contains('/') && !id.contains(".."));
    assert!(!id.chars().any(char::is_control));
}

fn check_path(path: &Path) {
    assert!(path.is_absolute());
    assert!(!path
        .components()
        .any(|c| c == std::path::Component::ParentDir));
}

fn check_env(env: &[(String, String)]) {
    for (key, _) in env {
        assert!(!key.is_empty() && !key.contains('=') && !key.contains('\0'));
    }
}

fn check_unique(slots: &[u64]) {
    let mut sorted = slots.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), slots.len(), "a slot named twice was accepted");
}

//! The compiled schema matches the conmon-rs v1 wire facts (spec §2.2,
//! §2.4): interface ID, struct IDs, and every struct's data/pointer size, so
//! a misplaced field cannot slip in. The legacy request layouts
//! (`rpc/conmon_legacy.capnp`, spec §2.7) are checked the same way; since
//! `rpc::legacy` tells the generations apart by pointer count, these sizes
//! are what detection relies on.

use capnp::traits::{HasStructSize, HasTypeId};
use ringmon::conmon_capnp::conmon;

fn size<T: HasStructSize>() -> (u16, u16) {
    (T::STRUCT_SIZE.data, T::STRUCT_SIZE.pointers)
}

#[test]
fn interface_and_struct_ids() {
    assert_eq!(conmon::Client::TYPE_ID, 0xb737e899dd6633f1);
    assert_eq!(
        conmon::version_request::Builder::TYPE_ID,
        0xad2a33d6b9304413
    );
    assert_eq!(
        conmon::version_response::Builder::TYPE_ID,
        0xf34be5cbac1feed1
    );
    assert_eq!(
        conmon::create_container_request::Builder::TYPE_ID,
        0xba77e3fa3aa9b6ca
    );
    assert_eq!(
        conmon::create_container_response::Builder::TYPE_ID,
        0xde3a625e70772b9a
    );
    assert_eq!(conmon::log_driver::Builder::TYPE_ID, 0xae78ee8eb6b3a134);
    assert_eq!(
        conmon::exec_sync_container_request::Builder::TYPE_ID,
        0xf41122f890a371a6
    );
    assert_eq!(conmon::attach_request::Builder::TYPE_ID, 0xdf703ca0befc3afc);
    assert_eq!(
        conmon::set_window_size_request::Builder::TYPE_ID,
        0xb5418b8ea8ead17b
    );
    assert_eq!(
        conmon::create_namespaces_request::Builder::TYPE_ID,
        0x8b5b1693940f607e
    );
    assert_eq!(
        conmon::text_text_map_entry::Builder::TYPE_ID,
        0xfabbfdde6d4ad392
    );
    assert_eq!(
        conmon::serve_port_forward_container_request::Builder::TYPE_ID,
        0xc865d8a1122038c5
    );
    assert_eq!(conmon::version_params::Builder::TYPE_ID, 0xcc2f70676afee4e7);
    assert_eq!(
        conmon::create_container_results::Builder::TYPE_ID,
        0xceba3c1a97be15f8
    );
}

#[test]
fn struct_sizes_match_the_v1_layout() {
    use conmon::*;
    assert_eq!(size::<version_request::Builder<'static>>(), (1, 1));
    assert_eq!(size::<version_response::Builder<'static>>(), (1, 8));
    assert_eq!(
        size::<create_container_request::Builder<'static>>(),
        (1, 12)
    );
    assert_eq!(size::<log_driver::Builder<'static>>(), (2, 1));
    assert_eq!(
        size::<create_container_response::Builder<'static>>(),
        (1, 0)
    );
    assert_eq!(
        size::<exec_sync_container_request::Builder<'static>>(),
        (2, 4)
    );
    assert_eq!(
        size::<exec_sync_container_response::Builder<'static>>(),
        (1, 2)
    );
    assert_eq!(size::<attach_request::Builder<'static>>(), (1, 4));
    assert_eq!(size::<attach_response::Builder<'static>>(), (0, 0));
    assert_eq!(size::<reopen_log_request::Builder<'static>>(), (0, 2));
    // v1's 2 pointers plus ringmon's execSessionId extension (slot 2).
    assert_eq!(size::<set_window_size_request::Builder<'static>>(), (1, 3));
    assert_eq!(
        size::<create_namespaces_request::Builder<'static>>(),
        (0, 6)
    );
    assert_eq!(
        size::<create_namespaces_response::Builder<'static>>(),
        (0, 1)
    );
    assert_eq!(size::<namespace_response::Builder<'static>>(), (1, 1));
    assert_eq!(size::<start_fd_socket_request::Builder<'static>>(), (0, 1));
    assert_eq!(size::<start_fd_socket_response::Builder<'static>>(), (0, 1));
    assert_eq!(
        size::<serve_exec_container_request::Builder<'static>>(),
        (1, 3)
    );
    assert_eq!(
        size::<serve_attach_container_request::Builder<'static>>(),
        (1, 2)
    );
    assert_eq!(
        size::<serve_port_forward_container_request::Builder<'static>>(),
        (0, 2)
    );
    assert_eq!(size::<text_text_map_entry::Builder<'static>>(), (0, 2));
}

/// Field slots: set one field at a time on a fresh message and look at the
/// raw words, so each field's offset is checked against the spec table.
#[test]
fn field_slots_match_the_spec() {
    let mut msg = capnp::message::Builder::new_default();
    let mut r = msg.init_root::<conmon::create_container_request::Builder<'_>>();
    r.set_terminal(true);
    r.set_stdin(true);
    r.set_cgroup_manager(conmon::CgroupManager::Cgroupfs);
    let mut drivers = r.reborrow().init_log_drivers(1);
    drivers
        .reborrow()
        .get(0)
        .set_max_size(0x0102_0304_0506_0708);
    drivers
        .reborrow()
        .get(0)
        .set_type(conmon::log_driver::Type::Journald);
    r.set_id("id");
    let words = capnp::serialize::write_message_segments_to_words(&msg);
    // Root struct data word (after the 8-byte segment table and the root
    // pointer): bit 0 terminal, bit 1 stdin, bytes 2-3 cgroupManager.
    let data = &words[16..24];
    assert_eq!(data[0] & 0b11, 0b11);
    assert_eq!(u16::from_le_bytes([data[2], data[3]]), 1);
    // The id is pointer 0 of 12: it is the first non-null pointer and the
    // log drivers list is pointer 4.
    let ptr = |i: usize| &words[24 + 8 * i..32 + 8 * i];
    assert!(ptr(0).iter().any(|b| *b != 0), "id at ptr 0");
    assert!(ptr(1).iter().all(|b| *b == 0));
    assert!(ptr(4).iter().any(|b| *b != 0), "logDrivers at ptr 4");
}

/// The legacy (conmon-rs ≤ 0.8.x) request layouts of `rpc/conmon_legacy.capnp`
/// match the spec's §2.7 table: data sections as in v1, one pointer more.
#[test]
fn legacy_struct_sizes_match_the_spec() {
    use conmon::*;
    use ringmon::conmon_legacy_capnp as legacy;
    let pairs = [
        (
            "VersionRequest",
            size::<legacy::version_request::Builder<'static>>(),
            size::<version_request::Builder<'static>>(),
            (1, 2),
        ),
        (
            "VersionResponse",
            size::<legacy::version_response::Builder<'static>>(),
            size::<version_response::Builder<'static>>(),
            (1, 9),
        ),
        (
            "CreateContainerRequest",
            size::<legacy::create_container_request::Builder<'static>>(),
            size::<create_container_request::Builder<'static>>(),
            (1, 13),
        ),
        (
            "ExecSyncContainerRequest",
            size::<legacy::exec_sync_container_request::Builder<'static>>(),
            size::<exec_sync_container_request::Builder<'static>>(),
            (2, 5),
        ),
        (
            "AttachRequest",
            size::<legacy::attach_request::Builder<'static>>(),
            size::<attach_request::Builder<'static>>(),
            (1, 5),
        ),
        (
            "ReopenLogRequest",
            size::<legacy::reopen_log_request::Builder<'static>>(),
            size::<reopen_log_request::Builder<'static>>(),
            (0, 3),
        ),
        (
            "SetWindowSizeRequest",
            size::<legacy::set_window_size_request::Builder<'static>>(),
            size::<set_window_size_request::Builder<'static>>(),
            (1, 3),
        ),
        (
            "CreateNamespacesRequest",
            size::<legacy::create_namespaces_request::Builder<'static>>(),
            size::<create_namespaces_request::Builder<'static>>(),
            (0, 7),
        ),
    ];
    for (name, legacy, v1, want) in pairs {
        assert_eq!(legacy, want, "{name}: legacy size");
        assert_eq!(legacy.0, v1.0, "{name}: data sections differ");
        if name == "SetWindowSizeRequest" {
            // The extension's pointer brings v1 to the legacy count; the
            // server tells them apart by slot 2's content
            // (`window_size_tie` in src/rpc/legacy.rs).
            assert_eq!(legacy.1, v1.1, "{name}: extended v1 pointer count");
        } else {
            assert_eq!(legacy.1, v1.1 + 1, "{name}: legacy has one pointer more");
        }
    }
}

/// The raw pointer words of a single-segment message's root struct.
fn root_pointers(msg: &capnp::message::Builder<capnp::message::HeapAllocator>) -> Vec<[u8; 8]> {
    let bytes = capnp::serialize::write_message_segments_to_words(msg);
    // Segment table (8 bytes), then the root pointer: data words at bits
    // 32-47, pointer count at bits 48-63.
    let root = &bytes[8..16];
    let data = u16::from_le_bytes([root[4], root[5]]) as usize;
    let ptrs = u16::from_le_bytes([root[6], root[7]]) as usize;
    let start = 16 + 8 * data;
    (0..ptrs)
        .map(|i| bytes[start + 8 * i..start + 8 * i + 8].try_into().unwrap())
        .collect()
}

/// Which pointer slots are non-null.
fn set_slots(ptrs: &[[u8; 8]]) -> Vec<usize> {
    (0..ptrs.len()).filter(|&i| ptrs[i] != [0; 8]).collect()
}

/// Legacy pointer slots, one field at a time, against the §2.7 table.
#[test]
fn legacy_field_slots_match_the_spec() {
    use ringmon::conmon_legacy_capnp as legacy;
    type Msg = capnp::message::Builder<capnp::message::HeapAllocator>;
    fn slot(fill: impl FnOnce(&mut Msg)) -> Vec<usize> {
        let mut msg = Msg::new_default();
        fill(&mut msg);
        set_slots(&root_pointers(&msg))
    }
    use legacy::create_container_request as cc;
    let cases: Vec<(&str, Vec<usize>, Vec<usize>)> = vec![
        (
            "CreateContainerRequest.metadataOld",
            slot(|m| m.init_root::<cc::Builder<'_>>().set_metadata_old(b"{}")),
            vec![8],
        ),
        (
            "CreateContainerRequest.metadata",
            slot(|m| {
                m.init_root::<cc::Builder<'_>>().init_metadata(1);
            }),
            vec![9],
        ),
        (
            "CreateContainerRequest.envVars",
            slot(|m| {
                m.init_root::<cc::Builder<'_>>().init_env_vars(1);
            }),
            vec![10],
        ),
        (
            "CreateContainerRequest.additionalFds",
            slot(|m| {
                m.init_root::<cc::Builder<'_>>().init_additional_fds(1);
            }),
            vec![11],
        ),
        (
            "CreateContainerRequest.leakFds",
            slot(|m| {
                m.init_root::<cc::Builder<'_>>().init_leak_fds(1);
            }),
            vec![12],
        ),
        (
            "CreateContainerRequest.commandArgs",
            slot(|m| {
                m.init_root::<cc::Builder<'_>>().init_command_args(1);
            }),
            vec![7],
        ),
        (
            "ExecSyncContainerRequest.metadataOld/metadata/envVars",
            slot(|m| {
                let mut r = m.init_root::<legacy::exec_sync_container_request::Builder<'_>>();
                r.set_metadata_old(b"{}");
                r.reborrow().init_metadata(1);
                r.init_env_vars(1);
            }),
            vec![2, 3, 4],
        ),
        (
            "AttachRequest.metadataOld/metadata",
            slot(|m| {
                let mut r = m.init_root::<legacy::attach_request::Builder<'_>>();
                r.set_metadata_old(b"{}");
                r.init_metadata(1);
            }),
            vec![3, 4],
        ),
        (
            "ReopenLogRequest.metadataOld/metadata",
            slot(|m| {
                let mut r = m.init_root::<legacy::reopen_log_request::Builder<'_>>();
                r.set_metadata_old(b"{}");
                r.init_metadata(1);
            }),
            vec![1, 2],
        ),
        (
            "SetWindowSizeRequest.metadataOld/metadata",
            slot(|m| {
                let mut r = m.init_root::<legacy::set_window_size_request::Builder<'_>>();
                r.set_metadata_old(b"{}");
                r.init_metadata(1);
            }),
            vec![1, 2],
        ),
        (
            "VersionRequest.metadataOld/metadata",
            slot(|m| {
                let mut r = m.init_root::<legacy::version_request::Builder<'_>>();
                r.set_metadata_old(b"{}");
                r.init_metadata(1);
            }),
            vec![0, 1],
        ),
        (
            "VersionResponse.metadata",
            slot(|m| {
                m.init_root::<legacy::version_response::Builder<'_>>()
                    .set_metadata(b"{}")
            }),
            vec![8],
        ),
        (
            "CreateNamespacesRequest.metadataOld",
            slot(|m| {
                m.init_root::<legacy::create_namespaces_request::Builder<'_>>()
                    .set_metadata_old(b"{}")
            }),
            vec![0],
        ),
        (
            "CreateNamespacesRequest.namespaces",
            slot(|m| {
                m.init_root::<legacy::create_namespaces_request::Builder<'_>>()
                    .init_namespaces(1);
            }),
            vec![1],
        ),
        (
            "CreateNamespacesRequest.podId",
            slot(|m| {
                m.init_root::<legacy::create_namespaces_request::Builder<'_>>()
                    .set_pod_id("p")
            }),
            vec![5],
        ),
        (
            "CreateNamespacesRequest.metadata",
            slot(|m| {
                m.init_root::<legacy::create_namespaces_request::Builder<'_>>()
                    .init_metadata(1);
            }),
            vec![6],
        ),
    ];
    for (name, got, want) in cases {
        assert_eq!(got, want, "{name}: pointer slot(s)");
    }

    // Data sections: createContainer's bits 0-1 and bytes 2-3, execSync's
    // bit 64 and bytes 10-11, as in v1.
    let mut msg = Msg::new_default();
    {
        let mut r = msg.init_root::<cc::Builder<'_>>();
        r.set_terminal(true);
        r.set_stdin(true);
        r.set_cgroup_manager(conmon::CgroupManager::Cgroupfs);
    }
    let words = capnp::serialize::write_message_segments_to_words(&msg);
    assert_eq!(&words[16..20], &[0b11, 0, 1, 0]);
    let mut msg = Msg::new_default();
    {
        let mut r = msg.init_root::<legacy::exec_sync_container_request::Builder<'_>>();
        r.set_timeout_sec(0x0102);
        r.set_terminal(true);
        r.set_cgroup_manager(conmon::CgroupManager::Cgroupfs);
    }
    let words = capnp::serialize::write_message_segments_to_words(&msg);
    assert_eq!(&words[16..18], &[0x02, 0x01]);
    assert_eq!(words[24], 1, "terminal at bit 64");
    assert_eq!(&words[26..28], &[1, 0], "cgroupManager at bytes 10-11");
}

/// Method ordinals as compiled: the v1 ones are unchanged and the ringmon
/// extensions are appended (`releaseNamespaces` @11, exec sessions @12-14,
/// `listContainers` @15; old clients never call them, so they see no
/// change).
#[test]
fn method_ordinals() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/conmon_capnp.rs"));
    let ordinal = |method: &str| -> u16 {
        let start = generated
            .find(&format!("pub fn {method}_request(&self)"))
            .unwrap_or_else(|| panic!("no client method {method}"));
        let call = &generated[start..];
        let call = &call[call.find("new_call(_private::TYPE_ID, ").unwrap() + 28..];
        call[..call.find(',').unwrap()].trim().parse().unwrap()
    };
    for (i, method) in [
        "version",
        "create_container",
        "exec_sync_container",
        "attach_container",
        "reopen_log_container",
        "set_window_size_container",
        "create_namespaces",
        "start_fd_socket",
        "serve_exec_container",
        "serve_attach_container",
        "serve_port_forward_container",
        "release_namespaces",
        "create_exec_session",
        "start_exec_session",
        "exec_session_status",
        "list_containers",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(ordinal(method), i as u16, "{method}");
    }
    assert_eq!(
        size::<conmon::release_namespaces_request::Builder<'static>>(),
        (0, 3)
    );
    assert_eq!(
        size::<conmon::release_namespaces_response::Builder<'static>>(),
        (0, 0)
    );
    // The container listing extension (ordinal 15).
    assert_eq!(
        size::<conmon::list_containers_request::Builder<'static>>(),
        (0, 1)
    );
    assert_eq!(
        size::<conmon::list_containers_response::Builder<'static>>(),
        (1, 1)
    );
    assert_eq!(size::<conmon::container_info::Builder<'static>>(), (4, 3));
    // The exec session extension (ordinals 12-14).
    for (got, want) in [
        (
            size::<conmon::create_exec_session_request::Builder<'static>>(),
            (1, 11),
        ),
        (
            size::<conmon::create_exec_session_response::Builder<'static>>(),
            (1, 1),
        ),
        (
            size::<conmon::start_exec_session_request::Builder<'static>>(),
            (0, 3),
        ),
        (
            size::<conmon::start_exec_session_response::Builder<'static>>(),
            (1, 0),
        ),
        (
            size::<conmon::exec_session_status_request::Builder<'static>>(),
            (1, 3),
        ),
        (
            size::<conmon::exec_session_status_response::Builder<'static>>(),
            (2, 0),
        ),
    ] {
        assert_eq!(got, want);
    }
}

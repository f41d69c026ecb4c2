//! The compiled schema matches the conmon-rs v1 wire facts (spec §2.2,
//! §2.4): interface ID, struct IDs, and every struct's data/pointer size, so
//! a misplaced field cannot slip in.

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
    assert_eq!(size::<set_window_size_request::Builder<'static>>(), (1, 2));
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

/// Method ordinals as compiled: the v1 ones are unchanged and the ringmon
/// extension `releaseNamespaces` is appended as @11 (old clients never
/// call it, so they see no change).
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
}

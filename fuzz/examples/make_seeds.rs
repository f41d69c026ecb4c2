//! Writes the seed corpus, `fuzz/corpus/<target>/<name>`: small valid
//! inputs of each format, built the way a real client builds them (the
//! capnp requests with the generated builders in both layouts, the SPDY
//! SYN_STREAMs compressed with the SPDY dictionary, real upgrade heads).
//!
//!     cargo run --example make_seeds        (in fuzz/)
//!
//! Each target's input layout is described in its source; the bytes in
//! front of the payload here follow it.

use std::path::{Path, PathBuf};

use capnp::message::{Builder, HeapAllocator};
use ringmon::conmon_capnp::conmon;
use ringmon::conmon_legacy_capnp as legacy;
use ringmon_fuzz::{
    spdy_client_deflate, spdy_compress, spdy_control, spdy_header_block, spdy_syn_stream,
    SPDY_GOAWAY, SPDY_SETTINGS, SPDY_WINDOW_UPDATE,
};

const TOKEN: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    spdy_frames(&corpus.join("spdy_frames"));
    http_head(&corpus.join("http_head"));
    stream_params(&corpus.join("stream_params"));
    fd_socket_request(&corpus.join("fd_socket_request"));
    attach_packets(&corpus.join("attach_packets"));
    log_encoders(&corpus.join("log_encoders"));
    rpc_requests(&corpus.join("rpc_requests"));
    conmon_inputs(&corpus.join("conmon_inputs"));
    keeper_ledger(&corpus.join("keeper_ledger"));
}

fn keeper_ledger(dir: &Path) {
    use ringmon::engine::journal::{LedgerState, LogEnd};
    // As `Ledger::create` leaves it: one publish, nothing committed.
    write(dir, "fresh", &LedgerState::default().encode_page(1));
    // After a commit of both streams with a CRI and a JSON log, in either
    // slot.
    let state = LedgerState {
        committed: [4096, 17],
        ends: vec![
            LogEnd {
                dev: 2049,
                ino: 131,
                end: 65536,
            },
            LogEnd {
                dev: 2049,
                ino: 132,
                end: 812,
            },
        ],
    };
    write(dir, "committed-two-logs", &state.encode_page(6));
    write(dir, "committed-two-logs-odd", &state.encode_page(7));
}

fn conmon_inputs(dir: &Path) {
    // Selector 0 mod 3: ctl bytes (the step is selector / 3).
    write(dir, "ctl-resize-reopen", b"\x03\x31 33 77\n2 0 0\n");
    write(dir, "ctl-garbage", b"\x00x y z\n1 0 0\n9 9 9\n");
    // 1 mod 3: a command line, NUL-separated (CRI-O's exec sync).
    let argv = [
        "-c", "0123456789abcdef", "-n", "k8s_ctr", "-r", "/usr/sbin/runc", "-p", "/tmp/pid", "-e",
        "-l", "/tmp/log", "--sync", "--log-global-size-max", "16777216", "-T", "2",
        "--exec-process-spec", "/tmp/spec", "--runtime-arg", "--root=/run/runc",
    ];
    let mut bytes = vec![1u8];
    bytes.extend(argv.join("\0").into_bytes());
    write(dir, "cli-crio-exec-sync", &bytes);
    // 2 mod 3: a runtime's error text for the sync pipe.
    write(dir, "sync-message", b"\x02exec: \"/x\": stat /x: no such file or directory\n\t\x01");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create corpus dir");
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn spdy_frames(dir: &Path) {
    // Raw mode (even mode byte): a client-go port-forward connection as it
    // goes over the wire: error stream, data stream, data, ping, reset.
    let mut z = spdy_client_deflate();
    let error_headers: [(&[u8], &[u8]); 3] = [
        (b"streamType", b"error"),
        (b"port", b"8080"),
        (b"requestID", b"0"),
    ];
    let data_headers: [(&[u8], &[u8]); 3] = [
        (b"streamType", b"data"),
        (b"port", b"8080"),
        (b"requestID", b"0"),
    ];
    let syn_error = spdy_syn_stream(
        1,
        0,
        &spdy_compress(&mut z, &spdy_header_block(&error_headers)),
    );
    let syn_data = spdy_syn_stream(
        3,
        0,
        &spdy_compress(&mut z, &spdy_header_block(&data_headers)),
    );
    let settings = spdy_control(SPDY_SETTINGS, 0, &[0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 0]);
    let window = spdy_control(SPDY_WINDOW_UPDATE, 0, &[0, 0, 0, 3, 0, 1, 0, 0]);
    let data = ringmon::stream::spdy::data(3, false, b"GET / HTTP/1.0\r\n\r\n");
    let fin = ringmon::stream::spdy::data(3, true, b"");
    let ping = ringmon::stream::spdy::ping(1);
    let rst = ringmon::stream::spdy::rst_stream(1, 5);
    let goaway = spdy_control(SPDY_GOAWAY, 0, &[0, 0, 0, 3, 0, 0, 0, 0]);
    let session = [
        settings, syn_error, syn_data, window, data, fin, ping, rst, goaway,
    ]
    .concat();
    write(
        dir,
        "raw-port-forward-session",
        &[[0u8, 0].as_slice(), &session].concat(),
    );
    write(
        dir,
        "raw-byte-by-byte",
        &[[0u8, 1].as_slice(), &session].concat(),
    );

    // Structured mode (odd mode byte): op, flags, length, bytes.
    let mut ops = vec![1u8, 7];
    let mut op = |code: u8, flags: u8, bytes: &[u8]| {
        ops.extend_from_slice(&[code, flags, bytes.len() as u8]);
        ops.extend_from_slice(bytes);
    };
    op(
        1,
        0,
        b"streamType\xfferror\xffport\xff8080\xffrequestID\xff0",
    );
    op(
        1,
        0,
        b"streamType\xffdata\xffport\xff8080\xffrequestID\xff0",
    );
    op(0, 0, &spdy_header_block(&[(b"Port", b"80\0ignored")]));
    op(2, 0, b"hello");
    op(2, 1, b"");
    op(3, 0, b"");
    op(4, 0, b"");
    op(5, 0, b"\0\0\0\x01");
    write(dir, "structured-session", &ops);
}

fn upgrade(path: &str, protocols: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:40123\r\nUser-Agent: kubectl/v1.31.0\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n"
    )
}

fn http_head(dir: &Path) {
    let heads = [
        (
            "exec-v5",
            upgrade(
                &format!("/exec/{TOKEN}"),
                "v5.channel.k8s.io, v4.channel.k8s.io",
            ),
        ),
        (
            "attach-v4",
            upgrade(&format!("/attach/{TOKEN}"), "v4.channel.k8s.io"),
        ),
        (
            "port-forward-ports",
            upgrade(
                &format!("/port-forward/{TOKEN}?port=8080&port=53,443"),
                "portforward.k8s.io",
            ),
        ),
        (
            "port-forward-spdy",
            upgrade(
                &format!("/port-forward/{TOKEN}"),
                "SPDY/3.1+portforward.k8s.io",
            ),
        ),
        (
            "post-spdy",
            format!(
                "POST /exec/{TOKEN} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
                 X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
            ),
        ),
        (
            "no-upgrade",
            format!("GET /exec/{TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n"),
        ),
    ];
    for (name, head) in heads {
        // Read size byte 0: 16 bytes per read.
        write(
            dir,
            name,
            &[&[4u8][..], head.as_bytes(), b"\x82\x80websocket"].concat(),
        );
    }
}

fn stream_params(dir: &Path) {
    let seeds: [(&str, u8, &[u8]); 7] = [
        ("resize-v5", 0, b"\x04{\"Width\":80,\"Height\":24}"),
        ("resize-json", 1, b"{\"Width\":65535,\"Height\":1}"),
        ("stdin-v4", 1, b"\x00ls -l\n"),
        ("close-stdin-v5", 0, b"\xff\x00"),
        ("ports", 2, b"port=8080&port=53,443&other=1"),
        ("exit-code", 0, b"\x7f\x00\x00\x00"),
        ("status-message", 0, b"exec failed: \"quoted\" \\ \x01"),
    ];
    for (name, framing, bytes) in seeds {
        write(dir, name, &[&[framing][..], bytes].concat());
    }
}

fn fd_socket_request(dir: &Path) {
    let header = |id: u64, n: u64| ((id << 32) | n).to_le_bytes();
    write(dir, "store-two", &[&[2u8, 0][..], &header(7, 2)].concat());
    write(dir, "release", &[0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    write(
        dir,
        "count-mismatch",
        &[&[1u8, 0][..], &header(3, 2)].concat(),
    );
    write(
        dir,
        "truncated-fds",
        &[&[253u8, 1][..], &header(4, 253)].concat(),
    );
    write(
        dir,
        "too-long",
        &[&[1u8, 0][..], &header(9, 1), b"x"].concat(),
    );
}

fn attach_packets(dir: &Path) {
    let mut ops = Vec::new();
    let chunk = |ops: &mut Vec<u8>, op: u8, len: u16, pattern: &[u8]| {
        ops.push(op);
        ops.extend_from_slice(&len.to_le_bytes());
        ops.push(pattern.len() as u8);
        ops.extend_from_slice(pattern);
    };
    chunk(&mut ops, 0, 20_000, b"stdout line\n");
    chunk(&mut ops, 1, 5, b"err\n");
    ops.push(3); // flush
    ops.extend_from_slice(&[4, 6]);
    ops.extend_from_slice(b"input\n"); // client input
    chunk(&mut ops, 0, 60_000, b"\x1b[31mred\x1b[0m ");
    chunk(&mut ops, 0, 60_000, b"more");
    chunk(&mut ops, 0, 60_000, b"fill the socket");
    chunk(&mut ops, 0, 60_000, b"wrap the ring");
    ops.push(3);
    ops.push(2); // done
    write(dir, "output-input-done", &ops);
}

fn log_encoders(dir: &Path) {
    let prefix = |stream: u8, secs: u64, nanos: u32, offset: i32| {
        let mut p = vec![stream];
        p.extend_from_slice(&secs.to_le_bytes());
        p.extend_from_slice(&nanos.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
        p
    };
    let seeds: [(&str, Vec<u8>, &[u8]); 4] = [
        (
            "lines-and-tail",
            prefix(0, 1_787_317_753, 123_456_789, 7200),
            b"hello\n\nworld\npartial",
        ),
        (
            "binary",
            prefix(1, 0, 0, 0),
            b"\0\xff\xfe \x1b[31m\"q\\\r\n\t tab \xe2\x82 \n",
        ),
        (
            "unicode-space",
            prefix(0, 951_782_400, 1, -34_200),
            "\u{3000}wide\u{2003}\n caf\u{e9} \n".as_bytes(),
        ),
        (
            "far-future",
            prefix(1, u64::MAX, 999_999_999, i32::MIN),
            b"x",
        ),
    ];
    for (name, p, chunk) in seeds {
        write(dir, name, &[p.as_slice(), chunk].concat());
    }
}

/// A method's seed: its ordinal, then the message as on the wire.
fn rpc(dir: &Path, name: &str, method: u8, message: &Builder<HeapAllocator>) {
    let mut bytes = vec![method];
    capnp::serialize::write_message(&mut bytes, message).expect("serialize");
    write(dir, name, &bytes);
}

fn fill_map(
    mut list: capnp::struct_list::Builder<'_, conmon::text_text_map_entry::Owned>,
    pairs: &[(&str, &str)],
) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        let mut entry = list.reborrow().get(i as u32);
        entry.set_key(*k);
        entry.set_value(*v);
    }
}

const TRACE: &[(&str, &str)] = &[(
    "traceparent",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
)];

fn rpc_requests(dir: &Path) {
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::version_request::Builder<'_>>();
        r.set_verbose(true);
        fill_map(r.init_metadata(1), TRACE);
        rpc(dir, "version-v1", 0, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<legacy::version_request::Builder<'_>>();
        r.set_verbose(true);
        r.set_metadata_old(b"{}");
        rpc(dir, "version-legacy", 0, &m);
    }
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::create_container_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_bundle_path("/tmp");
        r.set_terminal(true);
        r.set_stdin(true);
        r.reborrow().init_exit_paths(1).set(0, "/tmp/exit");
        r.reborrow().init_oom_exit_paths(1).set(0, "/tmp/oom");
        {
            let mut d = r.reborrow().init_log_drivers(2);
            d.reborrow().get(0).set_path("/tmp/ctr.log");
            d.reborrow().get(0).set_max_size(1 << 20);
            d.reborrow()
                .get(1)
                .set_type(conmon::log_driver::Type::Journald);
        }
        r.reborrow().init_cleanup_cmd(1).set(0, "/bin/cleanup");
        r.reborrow().init_global_args(2).set(0, "--root");
        r.reborrow().get_global_args().unwrap().set(1, "/run/runc");
        r.reborrow().init_command_args(1).set(0, "--no-pivot");
        fill_map(r.reborrow().init_env_vars(1), &[("A", "one")]);
        r.set_cgroup_manager(conmon::CgroupManager::Cgroupfs);
        r.reborrow().init_additional_fds(2).set(0, 1);
        r.reborrow().get_additional_fds().unwrap().set(1, 2);
        r.reborrow().init_leak_fds(1).set(0, 3);
        rpc(dir, "create-container-v1", 1, &m);

        let mut m = Builder::new_default();
        let mut r = m.init_root::<legacy::create_container_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_bundle_path("/tmp");
        r.reborrow().init_exit_paths(1).set(0, "/tmp/exit");
        r.reborrow()
            .init_log_drivers(1)
            .get(0)
            .set_path("/tmp/ctr.log");
        r.set_metadata_old(b"{\"traceparent\":\"x\"}");
        fill_map(r.reborrow().init_metadata(1), TRACE);
        fill_map(r.reborrow().init_env_vars(1), &[("A", "one")]);
        r.set_cgroup_manager(conmon::CgroupManager::Systemd);
        r.reborrow().init_additional_fds(1).set(0, 4);
        rpc(dir, "create-container-legacy", 1, &m);
    }
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::exec_sync_container_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_timeout_sec(5);
        r.reborrow().init_command(2).set(0, "echo");
        r.reborrow().get_command().unwrap().set(1, "hi");
        fill_map(r.reborrow().init_env_vars(1), &[("TERM", "xterm")]);
        rpc(dir, "exec-sync-v1", 2, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<legacy::exec_sync_container_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.reborrow().init_command(1).set(0, "true");
        r.set_terminal(true);
        r.set_metadata_old(b"{}");
        fill_map(r.reborrow().init_env_vars(1), &[("TERM", "xterm")]);
        rpc(dir, "exec-sync-legacy", 2, &m);
    }
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::attach_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_socket_path("/tmp/attach");
        r.set_exec_session_id("");
        r.set_stop_after_stdin_eof(true);
        rpc(dir, "attach-v1", 3, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<legacy::attach_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_socket_path("/tmp/attach");
        r.set_metadata_old(b"{}");
        fill_map(r.init_metadata(1), TRACE);
        rpc(dir, "attach-legacy", 3, &m);
    }
    {
        let mut m = Builder::new_default();
        m.init_root::<conmon::reopen_log_request::Builder<'_>>()
            .set_id("ctr-1");
        rpc(dir, "reopen-log-v1", 4, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<legacy::reopen_log_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_metadata_old(b"{}");
        rpc(dir, "reopen-log-legacy", 4, &m);
    }
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::set_window_size_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_width(80);
        r.set_height(24);
        r.set_exec_session_id("sess-1");
        rpc(dir, "window-size-v1", 5, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<legacy::set_window_size_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_width(132);
        r.set_height(43);
        fill_map(r.init_metadata(1), TRACE);
        rpc(dir, "window-size-legacy", 5, &m);
    }
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::create_namespaces_request::Builder<'_>>();
        r.set_pod_id("pod-1");
        r.set_base_path("/var/run");
        let mut ns = r.reborrow().init_namespaces(3);
        ns.set(0, conmon::Namespace::Ipc);
        ns.set(1, conmon::Namespace::Net);
        ns.set(2, conmon::Namespace::User);
        r.reborrow().init_uid_mappings(1).set(0, "0 1000 1");
        r.reborrow().init_gid_mappings(1).set(0, "0 1000 1");
        rpc(dir, "create-namespaces-v1", 6, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<legacy::create_namespaces_request::Builder<'_>>();
        r.set_pod_id("pod-1");
        r.reborrow()
            .init_namespaces(1)
            .set(0, conmon::Namespace::Uts);
        r.set_metadata_old(b"{}");
        rpc(dir, "create-namespaces-legacy", 6, &m);
    }
    {
        let mut m = Builder::new_default();
        m.init_root::<conmon::start_fd_socket_request::Builder<'_>>();
        rpc(dir, "start-fd-socket", 7, &m);
    }
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::serve_exec_container_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.reborrow().init_command(1).set(0, "sh");
        r.set_tty(true);
        r.set_stdin(true);
        r.set_stdout(true);
        rpc(dir, "serve-exec", 8, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::serve_attach_container_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_stdout(true);
        rpc(dir, "serve-attach", 9, &m);
        let mut m = Builder::new_default();
        m.init_root::<conmon::serve_port_forward_container_request::Builder<'_>>()
            .set_net_ns_path("/var/run/netns/pod-1");
        rpc(dir, "serve-port-forward", 10, &m);
    }
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::release_namespaces_request::Builder<'_>>();
        r.set_pod_id("pod-1");
        r.set_base_path("/var/run");
        rpc(dir, "release-namespaces", 11, &m);
    }
    {
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::create_exec_session_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_session_id("sess-1");
        r.reborrow().init_command(1).set(0, "top");
        r.set_terminal(true);
        r.set_suspended(true);
        fill_map(r.reborrow().init_process_env(1), &[("PATH", "/bin")]);
        r.reborrow().init_exit_paths(1).set(0, "/tmp/exec-exit");
        rpc(dir, "create-exec-session", 12, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::start_exec_session_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_session_id("sess-1");
        rpc(dir, "start-exec-session", 13, &m);
        let mut m = Builder::new_default();
        let mut r = m.init_root::<conmon::exec_session_status_request::Builder<'_>>();
        r.set_id("ctr-1");
        r.set_session_id("sess-1");
        r.set_wait(true);
        rpc(dir, "exec-session-status", 14, &m);
    }
}

//! Wire → stream-layer translation of the streaming-server requests
//! (serveExecContainer, serveAttachContainer, servePortForwardContainer).

use std::path::PathBuf;

use super::{cgroup_manager, container_id, invalid, text, texts, RequestError};
use crate::conmon_capnp::conmon;

/// Translates and checks a `serveExecContainer` request.
pub fn serve_exec_container(
    r: conmon::serve_exec_container_request::Reader<'_>,
) -> Result<crate::stream::ExecRequest, RequestError> {
    let command = texts("command", r.get_command())?;
    if command.is_empty() {
        return Err(invalid("command", "", "must not be empty"));
    }
    Ok(crate::stream::ExecRequest {
        id: container_id("id", text("id", r.get_id())?)?,
        command,
        tty: r.get_tty(),
        stdin: r.get_stdin(),
        stdout: r.get_stdout(),
        stderr: r.get_stderr(),
        cgroup_manager: cgroup_manager(r.get_cgroup_manager())?,
        trace: None,
    })
}

/// Translates and checks a `serveAttachContainer` request.
pub fn serve_attach_container(
    r: conmon::serve_attach_container_request::Reader<'_>,
) -> Result<crate::stream::AttachRequest, RequestError> {
    Ok(crate::stream::AttachRequest {
        id: container_id("id", text("id", r.get_id())?)?,
        stdin: r.get_stdin(),
        stdout: r.get_stdout(),
        stderr: r.get_stderr(),
    })
}

/// Translates a `servePortForwardContainer` request. The namespace path is
/// not checked here (spec §3.9: no validation); it is opened on connect.
pub fn serve_port_forward_container(
    r: conmon::serve_port_forward_container_request::Reader<'_>,
) -> Result<crate::stream::PortForwardRequest, RequestError> {
    Ok(crate::stream::PortForwardRequest {
        net_ns_path: PathBuf::from(text("netNsPath", r.get_net_ns_path())?),
    })
}

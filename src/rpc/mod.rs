//! Wire → core translation. Every request is read here, checked for shape
//! (required fields, enum values, absolute paths) and turned into a core
//! type; errors name the field and the offending value. Null pointers read
//! as empty values (the Go client leaves empty lists unset).
//!
//! Requests from conmon-rs ≤ 0.8.x clients, whose structs have a different
//! pointer layout, are read through the views in [`legacy`], which detect
//! the layout per request; the translation below is the same for both.

pub mod legacy;
pub mod stream;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use capnp::text_list;

use crate::conmon_capnp::conmon;
use crate::core::exec_session::{check_session_id, CreateExecSession, ExecProcess, SessionState};
use crate::core::namespaces::{CreateNamespaces, Namespace, DEFAULT_BASE_PATH};
use crate::core::{CgroupManager, CreateContainer, ExecSync};
use crate::log::{LogFormat, LogSpec};

/// A request field with a bad value.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// invalid {field} '{value}': {reason}
    #[error("invalid {field} '{value}': {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: &'static str,
    },
    /// The message itself could not be decoded.
    #[error("decode {field}: {source}")]
    Decode {
        field: &'static str,
        source: capnp::Error,
    },
    /// createNamespaces / releaseNamespaces without a pod id (the text
    /// conmon-rs answers).
    #[error("no pod ID provided")]
    NoPodId,
}

fn invalid(
    field: impl Into<String>,
    value: impl Into<String>,
    reason: &'static str,
) -> RequestError {
    RequestError::Invalid {
        field: field.into(),
        value: value.into(),
        reason,
    }
}

/// Most entries any list of a request may have (argv words, paths, env
/// entries, log drivers, fd slots). One capnp message can carry millions;
/// no real client sends more than a few hundred.
pub const MAX_LIST_LEN: u32 = 65_536;

/// The refusal of a list longer than [`MAX_LIST_LEN`].
const TOO_LONG: &str = "more entries than the limit of 65536";

/// Refuses a list of `len` entries named `field` past [`MAX_LIST_LEN`],
/// before any entry is read.
fn bounded(field: &'static str, len: u32) -> Result<(), RequestError> {
    if len > MAX_LIST_LEN {
        return Err(invalid(field, format!("{len} entries"), TOO_LONG));
    }
    Ok(())
}

fn decode(field: &'static str) -> impl Fn(capnp::Error) -> RequestError {
    move |source| RequestError::Decode { field, source }
}

fn utf8(field: &'static str, t: capnp::text::Reader<'_>) -> Result<String, RequestError> {
    t.to_string().map_err(|e| RequestError::Decode {
        field,
        source: capnp::Error::failed(format!("not UTF-8: {e}")),
    })
}

fn text(
    field: &'static str,
    r: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<String, RequestError> {
    utf8(field, r.map_err(decode(field))?)
}

fn texts(
    field: &'static str,
    r: capnp::Result<text_list::Reader<'_>>,
) -> Result<Vec<String>, RequestError> {
    let list = r.map_err(decode(field))?;
    bounded(field, list.len())?;
    list.iter()
        .map(|t| utf8(field, t.map_err(decode(field))?))
        .collect()
}

/// A container id: non-empty, not `.`/`..`, no `/`, no control characters
/// (the id becomes part of file names and runtime state paths).
pub fn container_id(field: &'static str, id: String) -> Result<String, RequestError> {
    if id.is_empty() {
        return Err(invalid(field, id, "must not be empty"));
    }
    if id == "." || id == ".." || id.contains("..") {
        return Err(invalid(field, id, "must not contain '..'"));
    }
    if id.contains('/') {
        return Err(invalid(field, id, "must not contain '/'"));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid(field, id, "must not contain control characters"));
    }
    Ok(id)
}

/// An absolute path without `..` components.
fn absolute_path(field: impl Into<String>, raw: String) -> Result<PathBuf, RequestError> {
    let field = field.into();
    if raw.is_empty() {
        return Err(invalid(field, raw, "must not be empty"));
    }
    let p = Path::new(&raw);
    if !p.is_absolute() {
        return Err(invalid(field, raw, "must be an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, raw, "must not contain '..' components"));
    }
    Ok(PathBuf::from(raw))
}

/// An absolute path whose parent directory exists (files ringmon creates).
fn creatable_path(field: impl Into<String>, raw: String) -> Result<PathBuf, RequestError> {
    let field = field.into();
    let p = absolute_path(field.clone(), raw)?;
    match p.parent() {
        Some(dir) if dir.is_dir() => Ok(p),
        _ => Err(invalid(
            field,
            p.display().to_string(),
            "parent directory does not exist",
        )),
    }
}

fn cgroup_manager(
    r: Result<conmon::CgroupManager, capnp::NotInSchema>,
) -> Result<CgroupManager, RequestError> {
    match r {
        Ok(conmon::CgroupManager::Systemd) => Ok(CgroupManager::Systemd),
        Ok(conmon::CgroupManager::Cgroupfs) => Ok(CgroupManager::Cgroupfs),
        Err(capnp::NotInSchema(v)) => Err(invalid(
            "cgroupManager",
            v.to_string(),
            "unknown cgroup manager",
        )),
    }
}

/// Translates and checks a `createContainer` request.
pub fn create_container(
    r: conmon::create_container_request::Reader<'_>,
) -> Result<CreateContainer, RequestError> {
    let r = legacy::CreateContainerRequest::detect(r);
    let id = container_id("id", text("id", r.get_id())?)?;
    let bundle = absolute_path("bundlePath", text("bundlePath", r.get_bundle_path())?)?;
    if !bundle.is_dir() {
        return Err(invalid(
            "bundlePath",
            bundle.display().to_string(),
            "is not a directory",
        ));
    }
    let exit_paths = texts("exitPaths", r.get_exit_paths())?
        .into_iter()
        .enumerate()
        .map(|(i, p)| creatable_path(format!("exitPaths[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let oom_exit_paths = texts("oomExitPaths", r.get_oom_exit_paths())?
        .into_iter()
        .enumerate()
        .map(|(i, p)| creatable_path(format!("oomExitPaths[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let logs = log_drivers(r.get_log_drivers())?;
    let env = env_vars(r.get_env_vars())?;
    let additional_fds = slots("additionalFds", r.get_additional_fds())?;
    let leak_fds = slots("leakFds", r.get_leak_fds())?;
    Ok(CreateContainer {
        id,
        bundle,
        terminal: r.get_terminal(),
        stdin: r.get_stdin(),
        exit_paths,
        oom_exit_paths,
        logs,
        cleanup_cmd: texts("cleanupCmd", r.get_cleanup_cmd())?,
        global_args: texts("globalArgs", r.get_global_args())?,
        command_args: texts("commandArgs", r.get_command_args())?,
        env,
        cgroup_manager: cgroup_manager(r.get_cgroup_manager())?,
        additional_fds,
        leak_fds,
        pid_file: None,
        // A kubelet that reads the exit code after a host crash must find the
        // container's last lines too.
        sync_logs: true,
    })
}

/// Reads `logDrivers`: paths of file drivers must be creatable; journald
/// has none.
fn log_drivers(
    r: capnp::Result<capnp::struct_list::Reader<'_, conmon::log_driver::Owned>>,
) -> Result<Vec<LogSpec>, RequestError> {
    let mut logs = Vec::new();
    let list = r.map_err(decode("logDrivers"))?;
    bounded("logDrivers", list.len())?;
    for (i, d) in list.iter().enumerate() {
        let format = match d.get_type() {
            Ok(conmon::log_driver::Type::ContainerRuntimeInterface) => LogFormat::Cri,
            Ok(conmon::log_driver::Type::Json) => LogFormat::Json,
            Ok(conmon::log_driver::Type::Journald) => LogFormat::Journald,
            Err(capnp::NotInSchema(v)) => {
                return Err(invalid(
                    format!("logDrivers[{i}].type"),
                    v.to_string(),
                    "unknown log driver",
                ))
            }
        };
        let raw = text("logDrivers.path", d.get_path())?;
        let path = if format == LogFormat::Journald {
            PathBuf::new()
        } else {
            creatable_path(format!("logDrivers[{i}].path"), raw)?
        };
        logs.push(LogSpec::new(format, path, d.get_max_size()));
    }
    Ok(logs)
}

/// Reads a list of fd-socket slot numbers; a slot named twice is refused
/// (its fd can be taken once). Unknown slots are the core's to refuse.
fn slots(
    field: &'static str,
    r: capnp::Result<capnp::primitive_list::Reader<'_, u64>>,
) -> Result<Vec<u64>, RequestError> {
    let list = r.map_err(decode(field))?;
    bounded(field, list.len())?;
    let list: Vec<u64> = list.iter().collect();
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    for (i, &slot) in list.iter().enumerate() {
        if !seen.insert(slot) {
            return Err(invalid(
                format!("{field}[{i}]"),
                slot.to_string(),
                "slot named twice",
            ));
        }
    }
    Ok(list)
}

/// Metadata entries looked at for the trace context at most (the Go
/// client sends one to three).
const MAX_METADATA_ENTRIES: u32 = 64;

/// The client's W3C trace context: the `traceparent` entry of the
/// `metadata` map, else of the legacy JSON in `metadataOld` (conmon-rs
/// ≤ 0.8.x clients send both). Malformed or absent: `None`, never an
/// error (tracing must not fail a request).
pub fn trace_parent(
    metadata: capnp::Result<capnp::struct_list::Reader<'_, conmon::text_text_map_entry::Owned>>,
    legacy_json: Option<&[u8]>,
) -> Option<crate::otel::SpanContext> {
    let from_map = metadata.ok().and_then(|list| {
        list.iter()
            .take(MAX_METADATA_ENTRIES as usize)
            .find(|e| {
                e.get_key()
                    .ok()
                    .is_some_and(|k| k.as_bytes() == crate::otel::context::TRACEPARENT.as_bytes())
            })
            .and_then(|e| crate::otel::parse_traceparent(e.get_value().ok()?.to_str().ok()?))
    });
    from_map.or_else(|| crate::otel::traceparent_from_json(legacy_json?))
}

/// Reads `envVars` (a TextTextMap) as (key, value) pairs in wire order.
fn env_vars(
    r: capnp::Result<capnp::struct_list::Reader<'_, conmon::text_text_map_entry::Owned>>,
) -> Result<Vec<(String, String)>, RequestError> {
    env_map("envVars", r)
}

/// Reads an environment map named `field`: keys non-empty, without `=`
/// or NUL.
fn env_map(
    field: &'static str,
    r: capnp::Result<capnp::struct_list::Reader<'_, conmon::text_text_map_entry::Owned>>,
) -> Result<Vec<(String, String)>, RequestError> {
    let mut env = Vec::new();
    let list = r.map_err(decode(field))?;
    bounded(field, list.len())?;
    for (i, e) in list.iter().enumerate() {
        let key = text(field, e.get_key())?;
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(
                format!("{field}[{i}].key"),
                key,
                "must be non-empty without '=' or NUL",
            ));
        }
        env.push((key, text(field, e.get_value())?));
    }
    Ok(env)
}

/// Translates and checks an `execSyncContainer` request. The id is only
/// checked for shape: exec is not limited to containers this server
/// created.
pub fn exec_sync_container(
    r: conmon::exec_sync_container_request::Reader<'_>,
) -> Result<ExecSync, RequestError> {
    let r = legacy::ExecSyncContainerRequest::detect(r);
    let id = container_id("id", text("id", r.get_id())?)?;
    let command = texts("command", r.get_command())?;
    if command.is_empty() {
        return Err(invalid("command", "", "must not be empty"));
    }
    let timeout = match r.get_timeout_sec() {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    Ok(ExecSync {
        id,
        command,
        timeout,
        terminal: r.get_terminal(),
        env: env_vars(r.get_env_vars())?,
        cgroup_manager: cgroup_manager(r.get_cgroup_manager())?,
    })
}

/// A validated `attachContainer` request.
#[derive(Debug)]
pub struct AttachContainer {
    pub id: String,
    pub socket_path: PathBuf,
    pub exec_session_id: String,
    pub stop_after_stdin_eof: bool,
}

/// Translates and checks an `attachContainer` request.
pub fn attach_container(
    r: conmon::attach_request::Reader<'_>,
) -> Result<AttachContainer, RequestError> {
    let r = legacy::AttachRequest::detect(r);
    Ok(AttachContainer {
        id: container_id("id", text("id", r.get_id())?)?,
        socket_path: absolute_path("socketPath", text("socketPath", r.get_socket_path())?)?,
        exec_session_id: text("execSessionId", r.get_exec_session_id())?,
        stop_after_stdin_eof: r.get_stop_after_stdin_eof(),
    })
}

/// Translates and checks a `createExecSession` request (ringmon
/// extension).
pub fn create_exec_session(
    r: conmon::create_exec_session_request::Reader<'_>,
) -> Result<CreateExecSession, RequestError> {
    let id = target_id(r.get_id())?;
    let session_id = session_id(r.get_session_id())?;
    let command = texts("command", r.get_command())?;
    let process_path = text("processPath", r.get_process_path())?;
    let process = match (command.is_empty(), process_path.is_empty()) {
        (false, true) => ExecProcess::Command(command),
        (true, false) => {
            let path = absolute_path("processPath", process_path)?;
            if !path.is_file() {
                return Err(invalid(
                    "processPath",
                    path.display().to_string(),
                    "is not a file",
                ));
            }
            ExecProcess::Spec(path)
        }
        (true, true) => {
            return Err(invalid(
                "command",
                "",
                "must not be empty when processPath is not set",
            ))
        }
        (false, false) => {
            return Err(invalid(
                "processPath",
                process_path,
                "must be empty when command is set (give one of them)",
            ))
        }
    };
    let exit_paths = texts("exitPaths", r.get_exit_paths())?
        .into_iter()
        .enumerate()
        .map(|(i, p)| creatable_path(format!("exitPaths[{i}]"), p))
        .collect::<Result<_, _>>()?;
    Ok(CreateExecSession {
        id,
        session_id,
        process,
        terminal: r.get_terminal(),
        stdin: r.get_stdin(),
        env: env_vars(r.get_env_vars())?,
        process_env: env_map("processEnv", r.get_process_env())?,
        cgroup_manager: cgroup_manager(r.get_cgroup_manager())?,
        exit_paths,
        cleanup_cmd: texts("cleanupCmd", r.get_cleanup_cmd())?,
        cleanup_delay: Duration::from_secs(r.get_cleanup_delay_sec().into()),
        logs: log_drivers(r.get_log_drivers())?,
        additional_fds: slots("additionalFds", r.get_additional_fds())?,
        suspended: r.get_suspended(),
        global_args: Vec::new(),
        runtime_opts: Vec::new(),
        pid_file: None,
    })
}

/// An exec session id (may be empty where the server picks one).
fn session_id(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, RequestError> {
    let sid = text("sessionId", r)?;
    check_session_id(&sid).map_err(|reason| invalid("sessionId", sid.clone(), reason))?;
    Ok(sid)
}

/// The (container id, session id) a session call targets; the session id
/// is required.
pub fn session_target(
    id: capnp::Result<capnp::text::Reader<'_>>,
    sid: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<(String, String), RequestError> {
    let id = target_id(id)?;
    let sid = session_id(sid)?;
    if sid.is_empty() {
        return Err(invalid("sessionId", sid, "must not be empty"));
    }
    Ok((id, sid))
}

/// A validated `setWindowSizeContainer` request.
#[derive(Debug)]
pub struct SetWindowSize {
    pub id: String,
    /// Empty: the container's terminal.
    pub exec_session_id: String,
    pub width: u16,
    pub height: u16,
}

/// Translates and checks a `setWindowSizeContainer` request.
pub fn set_window_size(
    r: conmon::set_window_size_request::Reader<'_>,
) -> Result<SetWindowSize, RequestError> {
    let r = legacy::SetWindowSizeRequest::detect(r);
    let id = target_id(r.get_id())?;
    let exec_session_id = session_id(r.get_exec_session_id())?;
    // A 0×N terminal makes full-screen programs divide by zero or spin.
    for (field, value) in [("width", r.get_width()), ("height", r.get_height())] {
        if value == 0 {
            return Err(invalid(field, "0", "must be at least 1"));
        }
    }
    Ok(SetWindowSize {
        id,
        exec_session_id,
        width: r.get_width(),
        height: r.get_height(),
    })
}

/// The wire form of a session's state.
pub fn wire_session_state(state: SessionState) -> conmon::ExecSessionState {
    match state {
        SessionState::Created => conmon::ExecSessionState::Created,
        SessionState::Running { .. } => conmon::ExecSessionState::Running,
        SessionState::Exited { .. } => conmon::ExecSessionState::Exited,
    }
}

/// Containers a `listContainers` reply holds at most.
pub const MAX_LISTED_CONTAINERS: usize = 4096;

/// Most bytes of text (ids, paths) one `listContainers` reply carries.
pub const MAX_LISTED_BYTES: usize = 8 * 1024 * 1024;

/// Milliseconds since the Unix epoch (0 for an earlier time).
fn unix_millis(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Encodes the `listContainers` reply: the first [`MAX_LISTED_CONTAINERS`]
/// of `list`, `truncated` when there were more.
pub fn list_containers_reply(
    mut r: conmon::list_containers_response::Builder<'_>,
    list: &[crate::core::listing::ContainerSummary],
    runtime: &std::path::Path,
) {
    let runtime = runtime.to_string_lossy();
    // Entries are bounded in number and, since a container may have many
    // log drivers with long paths, in bytes too: a reply must stay well
    // under a client's message limit (Cap'n Proto's default is 64 MiB).
    let mut budget = MAX_LISTED_BYTES;
    let fitting = list
        .iter()
        .take(MAX_LISTED_CONTAINERS)
        .take_while(|c| {
            let size = 128
                + c.id.len()
                + runtime.len()
                + c.logs
                    .iter()
                    .map(|(_, path)| 32 + path.as_os_str().len())
                    .sum::<usize>();
            budget = budget.saturating_sub(size);
            budget > 0
        })
        .count();
    let shown = &list[..fitting];
    r.set_truncated(shown.len() < list.len());
    let mut out = r.init_containers(shown.len() as u32);
    for (i, c) in shown.iter().enumerate() {
        let mut e = out.reborrow().get(i as u32);
        e.set_id(c.id.as_str());
        e.set_pid(c.pid);
        e.set_running(c.exit.is_none());
        e.set_created_unix_millis(unix_millis(c.created));
        if let Some(exit) = c.exit {
            e.set_exit_code(exit.code);
            e.set_exited_unix_millis(unix_millis(exit.at));
        }
        e.set_runtime(runtime.as_ref());
        let mut logs = e.init_log_drivers(c.logs.len() as u32);
        for (j, (format, path)) in c.logs.iter().enumerate() {
            let mut d = logs.reborrow().get(j as u32);
            d.set_type(match format {
                LogFormat::Cri => conmon::log_driver::Type::ContainerRuntimeInterface,
                LogFormat::Json => conmon::log_driver::Type::Json,
                LogFormat::Journald => conmon::log_driver::Type::Journald,
            });
            d.set_path(path.to_string_lossy().as_ref());
        }
    }
}

/// Reads and checks the id of a request that targets a known container.
pub fn target_id(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, RequestError> {
    container_id("id", text("id", r)?)
}

/// A pod id (checked first, spec §3.7) and its base path: empty means
/// `/var/run` (the Go client sends that itself), else absolute.
fn pod_and_base(
    pod_id: capnp::Result<capnp::text::Reader<'_>>,
    base_path: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<(String, PathBuf), RequestError> {
    let pod_id = text("podId", pod_id)?;
    if pod_id.is_empty() {
        return Err(RequestError::NoPodId);
    }
    let pod_id = container_id("podId", pod_id)?;
    let base = text("basePath", base_path)?;
    let base = if base.is_empty() {
        PathBuf::from(DEFAULT_BASE_PATH)
    } else {
        absolute_path("basePath", base)?
    };
    Ok((pod_id, base))
}

/// Translates and checks a `createNamespaces` request. The mappings are
/// checked by the core (they matter only with a user namespace).
pub fn create_namespaces(
    r: conmon::create_namespaces_request::Reader<'_>,
) -> Result<CreateNamespaces, RequestError> {
    let r = legacy::CreateNamespacesRequest::detect(r);
    let (pod_id, base_path) = pod_and_base(r.get_pod_id(), r.get_base_path())?;
    let list = r.get_namespaces().map_err(decode("namespaces"))?;
    bounded("namespaces", list.len())?;
    let mut namespaces = Vec::new();
    for (i, ns) in list.iter().enumerate() {
        namespaces.push(match ns {
            Ok(conmon::Namespace::Ipc) => Namespace::Ipc,
            Ok(conmon::Namespace::Net) => Namespace::Net,
            Ok(conmon::Namespace::Pid) => Namespace::Pid,
            Ok(conmon::Namespace::User) => Namespace::User,
            Ok(conmon::Namespace::Uts) => Namespace::Uts,
            Err(capnp::NotInSchema(v)) => {
                return Err(invalid(
                    format!("namespaces[{i}]"),
                    v.to_string(),
                    "unknown namespace",
                ))
            }
        });
    }
    Ok(CreateNamespaces {
        pod_id,
        base_path,
        namespaces,
        uid_mappings: texts("uidMappings", r.get_uid_mappings())?,
        gid_mappings: texts("gidMappings", r.get_gid_mappings())?,
    })
}

/// The wire value of a namespace kind.
pub fn wire_namespace(ns: Namespace) -> conmon::Namespace {
    match ns {
        Namespace::Ipc => conmon::Namespace::Ipc,
        Namespace::Net => conmon::Namespace::Net,
        Namespace::Pid => conmon::Namespace::Pid,
        Namespace::User => conmon::Namespace::User,
        Namespace::Uts => conmon::Namespace::Uts,
    }
}

/// A validated `releaseNamespaces` request (ringmon extension @11).
#[derive(Debug)]
pub struct ReleaseNamespaces {
    pub pod_id: String,
    pub base_path: PathBuf,
}

/// Translates and checks a `releaseNamespaces` request.
pub fn release_namespaces(
    r: conmon::release_namespaces_request::Reader<'_>,
) -> Result<ReleaseNamespaces, RequestError> {
    let (pod_id, base_path) = pod_and_base(r.get_pod_id(), r.get_base_path())?;
    Ok(ReleaseNamespaces { pod_id, base_path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(container_id("id", "abc-1_2.3".into()).is_ok());
        for bad in ["", ".", "..", "a/b", "a..b", "a\nb"] {
            let e = container_id("id", bad.into()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid id '{bad}'")), "{e}");
        }
    }

    fn namespaces_request(
        pod_id: &str,
        base_path: &str,
        namespaces: &[conmon::Namespace],
    ) -> capnp::message::Builder<capnp::message::HeapAllocator> {
        let mut msg = capnp::message::Builder::new_default();
        let mut r = msg.init_root::<conmon::create_namespaces_request::Builder<'_>>();
        if !pod_id.is_empty() {
            r.set_pod_id(pod_id);
        }
        if !base_path.is_empty() {
            r.set_base_path(base_path);
        }
        let mut list = r.reborrow().init_namespaces(namespaces.len() as u32);
        for (i, ns) in namespaces.iter().enumerate() {
            list.set(i as u32, *ns);
        }
        msg
    }

    fn create_ns(
        msg: &capnp::message::Builder<capnp::message::HeapAllocator>,
    ) -> Result<CreateNamespaces, RequestError> {
        create_namespaces(
            msg.get_root_as_reader::<conmon::create_namespaces_request::Reader<'_>>()
                .unwrap(),
        )
    }

    #[test]
    fn create_namespaces_request() {
        let msg = namespaces_request("pod", "", &[conmon::Namespace::Uts, conmon::Namespace::Net]);
        let req = create_ns(&msg).unwrap();
        assert_eq!(req.base_path, Path::new("/var/run"));
        assert_eq!(req.namespaces, [Namespace::Uts, Namespace::Net]);
        // The pod id comes first, before any other check.
        let msg = namespaces_request("", "relative", &[]);
        assert_eq!(
            create_ns(&msg).unwrap_err().to_string(),
            "no pod ID provided"
        );
        let msg = namespaces_request("a/b", "/x", &[]);
        assert!(create_ns(&msg)
            .unwrap_err()
            .to_string()
            .starts_with("invalid podId 'a/b'"));
        let msg = namespaces_request("pod", "rel/dir", &[]);
        assert!(create_ns(&msg)
            .unwrap_err()
            .to_string()
            .starts_with("invalid basePath 'rel/dir'"));
        for ns in Namespace::ALL {
            assert_eq!(
                wire_namespace(ns) as u16,
                match ns {
                    Namespace::Ipc => 0,
                    Namespace::Net => 1,
                    Namespace::Pid => 2,
                    Namespace::User => 3,
                    Namespace::Uts => 4,
                }
            );
        }
    }

    #[test]
    fn paths() {
        assert!(absolute_path("p", "/a/b".into()).is_ok());
        assert!(absolute_path("p", "a/b".into()).is_err());
        assert!(absolute_path("p", "/a/../b".into()).is_err());
        assert!(creatable_path("p", "/nonexistent-dir-xyz/log".into()).is_err());
        assert!(creatable_path("p", "/tmp/log".into()).is_ok());
    }
}

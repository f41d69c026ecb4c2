//! A small Rust client for the `Conmon` interface, used by the integration
//! tests and the measurement tools. Must run inside a tokio `LocalSet`
//! (capnp-rpc objects are not `Send`).

use std::path::{Path, PathBuf};

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::FutureExt;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::conmon_capnp::conmon;

/// Errors seen by the client: transport or the server's exception text.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Rpc(#[from] capnp::Error),
}

/// Server facts from `version`.
#[derive(Clone, Debug)]
pub struct Version {
    pub process_id: u32,
    pub version: String,
    pub commit: String,
    pub build_date: String,
    pub target: String,
    pub rust_version: String,
    pub cargo_version: String,
    pub cargo_tree: String,
}

/// One log driver of a create request.
#[derive(Clone, Debug)]
pub struct LogDriver {
    /// 0 = CRI, 1 = JSON, 2 = journald; other values test the server's checks.
    pub kind: u16,
    pub path: String,
    pub max_size: u64,
}

/// A create request; empty fields are left unset on the wire.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub id: String,
    pub bundle_path: String,
    pub terminal: bool,
    pub stdin: bool,
    pub exit_paths: Vec<String>,
    pub oom_exit_paths: Vec<String>,
    pub log_drivers: Vec<LogDriver>,
    pub cleanup_cmd: Vec<String>,
    pub global_args: Vec<String>,
    pub command_args: Vec<String>,
    pub env_vars: Vec<(String, String)>,
    /// 0 = systemd (wire default), 1 = cgroupfs, others test the checks.
    pub cgroup_manager: u16,
    /// fd-socket slots passed to the runtime as fd 3, 4, ...
    pub additional_fds: Vec<u64>,
    /// fd-socket slots held open while the container lives.
    pub leak_fds: Vec<u64>,
}

/// An exec sync request; empty fields are left unset on the wire.
#[derive(Clone, Debug, Default)]
pub struct ExecSyncRequest {
    pub id: String,
    pub command: Vec<String>,
    /// Seconds; 0 = no timeout.
    pub timeout_sec: u64,
    pub terminal: bool,
    pub env_vars: Vec<(String, String)>,
    /// 0 = systemd (wire default), 1 = cgroupfs, others test the checks.
    pub cgroup_manager: u16,
}

/// The reply to an exec sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecSyncResponse {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

/// A createExecSession request (ringmon extension); empty fields are left
/// unset on the wire.
#[derive(Clone, Debug, Default)]
pub struct CreateExecSessionRequest {
    pub id: String,
    pub session_id: String,
    pub command: Vec<String>,
    pub process_path: String,
    pub terminal: bool,
    pub stdin: bool,
    pub env_vars: Vec<(String, String)>,
    pub process_env: Vec<(String, String)>,
    /// 0 = systemd (wire default), 1 = cgroupfs.
    pub cgroup_manager: u16,
    pub exit_paths: Vec<String>,
    pub cleanup_cmd: Vec<String>,
    pub cleanup_delay_sec: u32,
    pub log_drivers: Vec<LogDriver>,
    pub additional_fds: Vec<u64>,
    pub suspended: bool,
}

/// The reply to execSessionStatus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecSessionStatus {
    pub state: conmon::ExecSessionState,
    pub pid: u32,
    pub exit_code: i32,
}

/// A createNamespaces request; empty fields are left unset on the wire.
#[derive(Clone, Debug, Default)]
pub struct CreateNamespacesRequest {
    pub pod_id: String,
    pub base_path: String,
    pub namespaces: Vec<conmon::Namespace>,
    pub uid_mappings: Vec<String>,
    pub gid_mappings: Vec<String>,
}

/// One entry of the createNamespaces reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedNamespace {
    pub kind: conmon::Namespace,
    pub path: String,
}

/// One entry of the listContainers reply (ringmon extension @15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub pid: u32,
    pub running: bool,
    /// Valid when not running.
    pub exit_code: i32,
    pub created_unix_millis: i64,
    /// 0 while running.
    pub exited_unix_millis: i64,
    pub runtime: String,
    /// (kind as in [`LogDriver::kind`], path; empty for journald).
    pub logs: Vec<(u16, String)>,
}

/// The listContainers reply.
#[derive(Clone, Debug, Default)]
pub struct ContainerList {
    pub containers: Vec<ContainerInfo>,
    /// The server left some out (reply bound).
    pub truncated: bool,
}

/// A connection to a ringmon (or conmon-rs) server.
pub struct Client {
    conmon: conmon::Client,
}

fn set_texts(mut list: capnp::text_list::Builder<'_>, items: &[String]) {
    for (i, s) in items.iter().enumerate() {
        list.set(i as u32, s.as_str());
    }
}

fn set_map(
    mut list: capnp::struct_list::Builder<'_, conmon::text_text_map_entry::Owned>,
    pairs: &[(String, String)],
) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_key(k.as_str());
        e.set_value(v.as_str());
    }
}

fn set_slots(mut list: capnp::primitive_list::Builder<'_, u64>, slots: &[u64]) {
    for (i, slot) in slots.iter().enumerate() {
        list.set(i as u32, *slot);
    }
}

fn set_log_drivers(
    mut list: capnp::struct_list::Builder<'_, conmon::log_driver::Owned>,
    drivers: &[LogDriver],
) -> capnp::Result<()> {
    for (i, d) in drivers.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_max_size(d.max_size);
        e.set_path(d.path.as_str());
        // Written through the dynamic API so that tests can send values
        // outside the schema.
        set_enum::<conmon::log_driver::Type>(e.reborrow().into(), "type", d.kind)?;
    }
    Ok(())
}

/// Sets an enum field to a raw number, even one the schema does not know.
fn set_enum<E: capnp::introspect::Introspect>(
    target: capnp::dynamic_value::Builder<'_>,
    field: &str,
    value: u16,
) -> capnp::Result<()> {
    let capnp::introspect::TypeVariant::Enum(raw) = E::introspect().which() else {
        return Err(capnp::Error::failed(format!("{field} is not an enum")));
    };
    let mut s: capnp::dynamic_struct::Builder<'_> = target.downcast();
    s.set_named(
        field,
        capnp::dynamic_value::Enum::new(value, raw.into()).into(),
    )
}

impl Client {
    /// Connects to the server socket (long paths allowed).
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let long =
            crate::sys::socket::LongPath::new(socket).map_err(|source| ClientError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let stream = tokio::net::UnixStream::connect(long.path())
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let network = twoparty::VatNetwork::new(
            r.compat(),
            w.compat_write(),
            rpc_twoparty_capnp::Side::Client,
            Default::default(),
        );
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let conmon: conmon::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
        tokio::task::spawn_local(rpc.map(|_| ()));
        Ok(Client { conmon })
    }

    /// Dials `socket` until the server answers `version`, as the Go client
    /// does after launching a server (the socket appears a few ms after the
    /// launcher exits). Retries every 200 µs so start-up can be timed.
    pub async fn connect_when_ready(
        socket: &Path,
        limit: std::time::Duration,
    ) -> Result<Client, ClientError> {
        let start = std::time::Instant::now();
        loop {
            let attempt = match Client::connect(socket).await {
                Ok(c) => c.version(false).await.map(|_| c),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(c) => return Ok(c),
                Err(e) if start.elapsed() > limit => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_micros(200)).await,
            }
        }
    }

    pub async fn version(&self, verbose: bool) -> Result<Version, ClientError> {
        let mut req = self.conmon.version_request();
        req.get().init_request().set_verbose(verbose);
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_response()?;
        let s = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, ClientError> {
            Ok(t?
                .to_string()
                .map_err(|e| capnp::Error::failed(e.to_string()))?)
        };
        Ok(Version {
            process_id: r.get_process_id(),
            version: s(r.get_version())?,
            commit: s(r.get_commit())?,
            build_date: s(r.get_build_date())?,
            target: s(r.get_target())?,
            rust_version: s(r.get_rust_version())?,
            cargo_version: s(r.get_cargo_version())?,
            cargo_tree: s(r.get_cargo_tree())?,
        })
    }

    /// Creates a container; returns its pid.
    pub async fn create_container(&self, c: &CreateRequest) -> Result<u32, ClientError> {
        let mut req = self.conmon.create_container_request();
        {
            let mut r = req.get().init_request();
            if !c.id.is_empty() {
                r.set_id(c.id.as_str());
            }
            if !c.bundle_path.is_empty() {
                r.set_bundle_path(c.bundle_path.as_str());
            }
            r.set_terminal(c.terminal);
            r.set_stdin(c.stdin);
            for (items, init) in [
                (&c.exit_paths, 0),
                (&c.oom_exit_paths, 1),
                (&c.cleanup_cmd, 2),
                (&c.global_args, 3),
                (&c.command_args, 4),
            ] {
                if items.is_empty() {
                    continue;
                }
                let n = items.len() as u32;
                let list = match init {
                    0 => r.reborrow().init_exit_paths(n),
                    1 => r.reborrow().init_oom_exit_paths(n),
                    2 => r.reborrow().init_cleanup_cmd(n),
                    3 => r.reborrow().init_global_args(n),
                    _ => r.reborrow().init_command_args(n),
                };
                set_texts(list, items);
            }
            if !c.log_drivers.is_empty() {
                let n = c.log_drivers.len() as u32;
                set_log_drivers(r.reborrow().init_log_drivers(n), &c.log_drivers)?;
            }
            if !c.env_vars.is_empty() {
                set_map(
                    r.reborrow().init_env_vars(c.env_vars.len() as u32),
                    &c.env_vars,
                );
            }
            set_enum::<conmon::CgroupManager>(
                r.reborrow().into(),
                "cgroupManager",
                c.cgroup_manager,
            )?;
            if !c.additional_fds.is_empty() {
                let n = c.additional_fds.len() as u32;
                set_slots(r.reborrow().init_additional_fds(n), &c.additional_fds);
            }
            if !c.leak_fds.is_empty() {
                set_slots(
                    r.reborrow().init_leak_fds(c.leak_fds.len() as u32),
                    &c.leak_fds,
                );
            }
        }
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_response()?.get_container_pid())
    }

    /// Starts (or finds) the server's fd socket; returns its path.
    pub async fn start_fd_socket(&self) -> Result<PathBuf, ClientError> {
        let mut req = self.conmon.start_fd_socket_request();
        req.get().init_request();
        let reply = req.send().promise.await?;
        let path = reply
            .get()?
            .get_response()?
            .get_path()?
            .to_string()
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        Ok(PathBuf::from(path))
    }

    pub async fn reopen_log(&self, id: &str) -> Result<(), ClientError> {
        let mut req = self.conmon.reopen_log_container_request();
        req.get().init_request().set_id(id);
        req.send().promise.await?;
        Ok(())
    }

    /// Asks the server to listen for attach clients at `socket_path`.
    pub async fn attach_container(
        &self,
        id: &str,
        socket_path: &Path,
        exec_session_id: &str,
        stop_after_stdin_eof: bool,
    ) -> Result<(), ClientError> {
        let mut req = self.conmon.attach_container_request();
        let mut r = req.get().init_request();
        r.set_id(id);
        r.set_socket_path(socket_path.to_string_lossy().as_ref());
        if !exec_session_id.is_empty() {
            r.set_exec_session_id(exec_session_id);
        }
        r.set_stop_after_stdin_eof(stop_after_stdin_eof);
        req.send().promise.await?;
        Ok(())
    }

    pub async fn set_window_size(
        &self,
        id: &str,
        width: u16,
        height: u16,
    ) -> Result<(), ClientError> {
        self.resize_exec_session(id, "", width, height).await
    }

    /// Resizes an exec session's terminal (ringmon extension; an empty
    /// `session_id` resizes the container's and is not sent).
    pub async fn resize_exec_session(
        &self,
        id: &str,
        session_id: &str,
        width: u16,
        height: u16,
    ) -> Result<(), ClientError> {
        let mut req = self.conmon.set_window_size_container_request();
        let mut r = req.get().init_request();
        r.set_id(id);
        r.set_width(width);
        r.set_height(height);
        if !session_id.is_empty() {
            r.set_exec_session_id(session_id);
        }
        req.send().promise.await?;
        Ok(())
    }

    /// Creates (and unless suspended starts) an exec session; returns its
    /// id and pid (0 while suspended).
    pub async fn create_exec_session(
        &self,
        c: &CreateExecSessionRequest,
    ) -> Result<(String, u32), ClientError> {
        let mut req = self.conmon.create_exec_session_request();
        {
            let mut r = req.get().init_request();
            r.set_id(c.id.as_str());
            if !c.session_id.is_empty() {
                r.set_session_id(c.session_id.as_str());
            }
            if !c.process_path.is_empty() {
                r.set_process_path(c.process_path.as_str());
            }
            r.set_terminal(c.terminal);
            r.set_stdin(c.stdin);
            r.set_suspended(c.suspended);
            r.set_cleanup_delay_sec(c.cleanup_delay_sec);
            for (items, init) in [(&c.command, 0), (&c.exit_paths, 1), (&c.cleanup_cmd, 2)] {
                if items.is_empty() {
                    continue;
                }
                let n = items.len() as u32;
                let list = match init {
                    0 => r.reborrow().init_command(n),
                    1 => r.reborrow().init_exit_paths(n),
                    _ => r.reborrow().init_cleanup_cmd(n),
                };
                set_texts(list, items);
            }
            if !c.env_vars.is_empty() {
                set_map(
                    r.reborrow().init_env_vars(c.env_vars.len() as u32),
                    &c.env_vars,
                );
            }
            if !c.process_env.is_empty() {
                let n = c.process_env.len() as u32;
                set_map(r.reborrow().init_process_env(n), &c.process_env);
            }
            if !c.log_drivers.is_empty() {
                let n = c.log_drivers.len() as u32;
                set_log_drivers(r.reborrow().init_log_drivers(n), &c.log_drivers)?;
            }
            if !c.additional_fds.is_empty() {
                let n = c.additional_fds.len() as u32;
                set_slots(r.reborrow().init_additional_fds(n), &c.additional_fds);
            }
            set_enum::<conmon::CgroupManager>(
                r.reborrow().into(),
                "cgroupManager",
                c.cgroup_manager,
            )?;
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_response()?;
        let session_id = r
            .get_session_id()?
            .to_string()
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        Ok((session_id, r.get_pid()))
    }

    /// Starts a session created suspended; returns its pid.
    pub async fn start_exec_session(&self, id: &str, session_id: &str) -> Result<u32, ClientError> {
        let mut req = self.conmon.start_exec_session_request();
        let mut r = req.get().init_request();
        r.set_id(id);
        r.set_session_id(session_id);
        let reply = req.send().promise.await?;
        Ok(reply.get()?.get_response()?.get_pid())
    }

    /// A session's state; with `wait`, once it has exited.
    pub async fn exec_session_status(
        &self,
        id: &str,
        session_id: &str,
        wait: bool,
    ) -> Result<ExecSessionStatus, ClientError> {
        let mut req = self.conmon.exec_session_status_request();
        let mut r = req.get().init_request();
        r.set_id(id);
        r.set_session_id(session_id);
        r.set_wait(wait);
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_response()?;
        Ok(ExecSessionStatus {
            state: r
                .get_state()
                .map_err(|e| capnp::Error::failed(format!("state: {e}")))?,
            pid: r.get_pid(),
            exit_code: r.get_exit_code(),
        })
    }

    /// Runs a command in a container and returns its exit code and output.
    pub async fn exec_sync(&self, e: &ExecSyncRequest) -> Result<ExecSyncResponse, ClientError> {
        let mut req = self.conmon.exec_sync_container_request();
        {
            let mut r = req.get().init_request();
            if !e.id.is_empty() {
                r.set_id(e.id.as_str());
            }
            r.set_timeout_sec(e.timeout_sec);
            if !e.command.is_empty() {
                set_texts(
                    r.reborrow().init_command(e.command.len() as u32),
                    &e.command,
                );
            }
            r.set_terminal(e.terminal);
            if !e.env_vars.is_empty() {
                set_map(
                    r.reborrow().init_env_vars(e.env_vars.len() as u32),
                    &e.env_vars,
                );
            }
            set_enum::<conmon::CgroupManager>(
                r.reborrow().into(),
                "cgroupManager",
                e.cgroup_manager,
            )?;
        }
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_response()?;
        Ok(ExecSyncResponse {
            exit_code: r.get_exit_code(),
            stdout: r.get_stdout()?.to_vec(),
            stderr: r.get_stderr()?.to_vec(),
            timed_out: r.get_timed_out(),
        })
    }

    /// Pins a pod's namespaces; returns the five pins in reply order.
    pub async fn create_namespaces(
        &self,
        c: &CreateNamespacesRequest,
    ) -> Result<Vec<PinnedNamespace>, ClientError> {
        let mut req = self.conmon.create_namespaces_request();
        {
            let mut r = req.get().init_request();
            if !c.pod_id.is_empty() {
                r.set_pod_id(c.pod_id.as_str());
            }
            if !c.base_path.is_empty() {
                r.set_base_path(c.base_path.as_str());
            }
            if !c.namespaces.is_empty() {
                let mut list = r.reborrow().init_namespaces(c.namespaces.len() as u32);
                for (i, ns) in c.namespaces.iter().enumerate() {
                    list.set(i as u32, *ns);
                }
            }
            for (mappings, init) in [(&c.uid_mappings, true), (&c.gid_mappings, false)] {
                if mappings.is_empty() {
                    continue;
                }
                let list = if init {
                    r.reborrow().init_uid_mappings(mappings.len() as u32)
                } else {
                    r.reborrow().init_gid_mappings(mappings.len() as u32)
                };
                set_texts(list, mappings);
            }
        }
        let reply = req.send().promise.await?;
        let list = reply.get()?.get_response()?.get_namespaces()?;
        let mut pins = Vec::with_capacity(list.len() as usize);
        for entry in list.iter() {
            pins.push(PinnedNamespace {
                kind: entry.get_type().map_err(capnp::Error::from)?,
                path: entry
                    .get_path()?
                    .to_string()
                    .map_err(|e| capnp::Error::failed(format!("path not UTF-8: {e}")))?,
            });
        }
        Ok(pins)
    }

    /// The monitored and recently exited containers (ringmon extension
    /// @15).
    pub async fn list_containers(&self) -> Result<ContainerList, ClientError> {
        let mut req = self.conmon.list_containers_request();
        req.get().init_request();
        let reply = req.send().promise.await?;
        let r = reply.get()?.get_response()?;
        let text = |t: capnp::Result<capnp::text::Reader<'_>>, field: &str| {
            t?.to_string()
                .map_err(|e| capnp::Error::failed(format!("{field} not UTF-8: {e}")))
        };
        let mut containers = Vec::new();
        for c in r.get_containers()?.iter() {
            let mut logs = Vec::new();
            for d in c.get_log_drivers()?.iter() {
                let kind = match d.get_type() {
                    Ok(t) => t as u16,
                    Err(capnp::NotInSchema(v)) => v,
                };
                logs.push((kind, text(d.get_path(), "logDrivers.path")?));
            }
            containers.push(ContainerInfo {
                id: text(c.get_id(), "id")?,
                pid: c.get_pid(),
                running: c.get_running(),
                exit_code: c.get_exit_code(),
                created_unix_millis: c.get_created_unix_millis(),
                exited_unix_millis: c.get_exited_unix_millis(),
                runtime: text(c.get_runtime(), "runtime")?,
                logs,
            });
        }
        Ok(ContainerList {
            containers,
            truncated: r.get_truncated(),
        })
    }

    /// Unpins a pod's namespaces (ringmon extension @11).
    pub async fn release_namespaces(
        &self,
        pod_id: &str,
        base_path: &str,
    ) -> Result<(), ClientError> {
        let mut req = self.conmon.release_namespaces_request();
        let mut r = req.get().init_request();
        if !pod_id.is_empty() {
            r.set_pod_id(pod_id);
        }
        if !base_path.is_empty() {
            r.set_base_path(base_path);
        }
        req.send().promise.await?;
        Ok(())
    }
}

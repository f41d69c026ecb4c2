//! The control plane: a capnp-rpc server for the `Conmon` interface on
//! `conmon.sock`. Handlers are thin: decode with `rpc`, call `core`, encode
//! the reply. Every connection gets its own RPC system on the same
//! single-threaded runtime; calls on one connection run concurrently
//! because each handler is its own future.

use std::os::fd::AsFd;
use std::rc::Rc;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::FutureExt;
use tokio::net::UnixListener;
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
use tracing::{debug, warn};

use crate::conmon_capnp::conmon;
use crate::core::Monitor;
use crate::otel::{self, Span, SpanKind};
use crate::rpc;
use crate::version::BUILD;

/// The `Conmon` capability served to every client.
pub struct ConmonServer {
    monitor: Rc<Monitor>,
    /// The daemon's pid, reported by `version` (clients adopt servers by it).
    pid: u32,
    /// The streaming server (its HTTP listener starts on first use).
    streams: Rc<crate::stream::StreamServer>,
}

impl ConmonServer {
    pub fn new(monitor: Rc<Monitor>) -> Self {
        ConmonServer {
            streams: crate::stream::StreamServer::new(Rc::clone(&monitor)),
            monitor,
            pid: std::process::id(),
        }
    }

    /// Reports `pid` as the server's pid instead of our own: a worker
    /// reports its keeper's, the pidfile's process, which outlives the
    /// worker (a client that adopted the server by its pid signals that one
    /// to shut it down).
    pub fn reporting_pid(mut self, pid: u32) -> Self {
        self.pid = pid;
        self
    }

    /// The streaming server (the metrics count its sessions).
    pub fn streams(&self) -> Rc<crate::stream::StreamServer> {
        Rc::clone(&self.streams)
    }
}

/// The server span of one RPC method, under the client's trace context.
/// `read` takes the metadata and ids from the request; it runs only when
/// tracing is on, and a request it cannot read still gets its span (the
/// handler reports the error).
fn rpc_span<P>(
    name: &'static str,
    read: impl FnOnce(&mut Span, &P) -> capnp::Result<()>,
    params: &P,
) -> Span {
    let mut span = Span::unparented(name, SpanKind::Server);
    if span.is_recording() {
        if let Err(e) = read(&mut span, params) {
            debug!("{name}: request not readable for tracing: {e}");
        }
        span.ensure_parented();
    }
    span
}

/// A request's text field for an attribute (lossy: it is only shown).
fn lossy(t: capnp::Result<capnp::text::Reader<'_>>) -> String {
    t.map(|t| String::from_utf8_lossy(t.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// Names the exec session a span is about, if any.
fn set_session_id(span: &mut Span, id: String) {
    if !id.is_empty() {
        span.set("exec_session.id", id);
    }
}

/// Renders an error and its sources joined by ": " (outer context first).
fn failed(err: &dyn std::error::Error) -> capnp::Error {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    capnp::Error::failed(msg)
}

impl conmon::Server for ConmonServer {
    async fn version(
        self: Rc<Self>,
        params: conmon::VersionParams,
        mut results: conmon::VersionResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "version",
            |span, p: &conmon::VersionParams| {
                let v = rpc::legacy::VersionRequest::detect(p.get()?.get_request()?);
                span.set_parent(v.trace_parent(), true);
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let verbose =
                rpc::legacy::VersionRequest::detect(params.get()?.get_request()?).get_verbose();
            let mut r = results.get().init_response();
            r.set_process_id(self.pid);
            r.set_version(BUILD.version);
            r.set_tag(BUILD.tag);
            r.set_commit(BUILD.commit);
            r.set_build_date(BUILD.build_date);
            r.set_target(BUILD.target);
            r.set_rust_version(BUILD.rust_version);
            r.set_cargo_version(BUILD.cargo_version);
            r.set_cargo_tree(BUILD.tree(verbose).as_str());
            Ok(())
        })
        .await
    }

    async fn create_container(
        self: Rc<Self>,
        params: conmon::CreateContainerParams,
        mut results: conmon::CreateContainerResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "create_container",
            |span, p: &conmon::CreateContainerParams| {
                let v = rpc::legacy::CreateContainerRequest::detect(p.get()?.get_request()?);
                span.set_parent(v.trace_parent(), true);
                span.set_container_id(&lossy(v.get_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req =
                rpc::create_container(params.get()?.get_request()?).map_err(|e| failed(&e))?;
            debug!(id = %req.id, "createContainer");
            let pid = self
                .monitor
                .create_container(req)
                .await
                .map_err(|e| failed(&e))?;
            results.get().init_response().set_container_pid(pid);
            Ok(())
        })
        .await
    }

    async fn reopen_log_container(
        self: Rc<Self>,
        params: conmon::ReopenLogContainerParams,
        _results: conmon::ReopenLogContainerResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "reopen_log_container",
            |span, p: &conmon::ReopenLogContainerParams| {
                let v = rpc::legacy::ReopenLogRequest::detect(p.get()?.get_request()?);
                span.set_parent(v.trace_parent(), true);
                span.set_container_id(&lossy(v.get_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req = rpc::legacy::ReopenLogRequest::detect(params.get()?.get_request()?);
            let id = rpc::target_id(req.get_id()).map_err(|e| failed(&e))?;
            self.monitor.reopen_log(&id).await.map_err(|e| failed(&e))
        })
        .await
    }

    async fn set_window_size_container(
        self: Rc<Self>,
        params: conmon::SetWindowSizeContainerParams,
        _results: conmon::SetWindowSizeContainerResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "set_window_size_container",
            |span, p: &conmon::SetWindowSizeContainerParams| {
                let v = rpc::legacy::SetWindowSizeRequest::detect(p.get()?.get_request()?);
                span.set_parent(v.trace_parent(), true);
                span.set_container_id(&lossy(v.get_id()));
                set_session_id(span, lossy(v.get_exec_session_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req = rpc::set_window_size(params.get()?.get_request()?).map_err(|e| failed(&e))?;
            self.monitor
                .set_window_size(&req.id, &req.exec_session_id, req.width, req.height)
                .map_err(|e| failed(&e))
        })
        .await
    }

    async fn exec_sync_container(
        self: Rc<Self>,
        params: conmon::ExecSyncContainerParams,
        mut results: conmon::ExecSyncContainerResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "exec_sync_container",
            |span, p: &conmon::ExecSyncContainerParams| {
                let v = rpc::legacy::ExecSyncContainerRequest::detect(p.get()?.get_request()?);
                span.set_parent(v.trace_parent(), true);
                span.set_container_id(&lossy(v.get_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req = rpc::exec_sync_container(params.get()?.get_request()?).map_err(|e| failed(&e))?;
            drop(params);
            debug!(id = %req.id, command = ?req.command, terminal = req.terminal, "execSyncContainer");
            let out = self.monitor.exec_sync(&req).await.map_err(|e| failed(&e))?;
            let mut r = results.get().init_response();
            r.set_exit_code(out.exit_code);
            r.set_stdout(&out.stdout);
            r.set_stderr(&out.stderr);
            r.set_timed_out(out.timed_out);
            Ok(())
        })
        .await
    }

    async fn start_fd_socket(
        self: Rc<Self>,
        params: conmon::StartFdSocketParams,
        mut results: conmon::StartFdSocketResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "start_fd_socket",
            |span, p: &conmon::StartFdSocketParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let path = self.monitor.start_fd_socket().map_err(|e| failed(&e))?;
            let path = path.to_str().ok_or_else(|| {
                capnp::Error::failed(format!("fd socket path {} is not UTF-8", path.display()))
            })?;
            results.get().init_response().set_path(path);
            Ok(())
        })
        .await
    }

    async fn attach_container(
        self: Rc<Self>,
        params: conmon::AttachContainerParams,
        _results: conmon::AttachContainerResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "attach_container",
            |span, p: &conmon::AttachContainerParams| {
                let v = rpc::legacy::AttachRequest::detect(p.get()?.get_request()?);
                span.set_parent(v.trace_parent(), true);
                span.set_container_id(&lossy(v.get_id()));
                set_session_id(span, lossy(v.get_exec_session_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req =
                rpc::attach_container(params.get()?.get_request()?).map_err(|e| failed(&e))?;
            self.monitor
                .attach_container(
                    &req.id,
                    &req.exec_session_id,
                    &req.socket_path,
                    req.stop_after_stdin_eof,
                )
                .map_err(|e| failed(&e))
        })
        .await
    }

    async fn create_namespaces(
        self: Rc<Self>,
        params: conmon::CreateNamespacesParams,
        mut results: conmon::CreateNamespacesResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "create_namespaces",
            |span, p: &conmon::CreateNamespacesParams| {
                let v = rpc::legacy::CreateNamespacesRequest::detect(p.get()?.get_request()?);
                span.set_parent(v.trace_parent(), true);
                span.set("pod.id", lossy(v.get_pod_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req =
                rpc::create_namespaces(params.get()?.get_request()?).map_err(|e| failed(&e))?;
            drop(params);
            debug!(pod_id = %req.pod_id, namespaces = ?req.namespaces, "createNamespaces");
            let pins = self
                .monitor
                .create_namespaces(&req)
                .await
                .map_err(|e| failed(&e))?;
            let mut list = results
                .get()
                .init_response()
                .init_namespaces(pins.len() as u32);
            for (i, (ns, path)) in pins.iter().enumerate() {
                let mut entry = list.reborrow().get(i as u32);
                entry.set_type(rpc::wire_namespace(*ns));
                entry.set_path(path.to_string_lossy().as_ref());
            }
            Ok(())
        })
        .await
    }

    async fn serve_exec_container(
        self: Rc<Self>,
        params: conmon::ServeExecContainerParams,
        mut results: conmon::ServeExecContainerResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "serve_exec_container",
            |span, p: &conmon::ServeExecContainerParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                span.set_container_id(&lossy(r.get_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req = rpc::stream::serve_exec_container(params.get()?.get_request()?)
                .map_err(|e| failed(&e))?;
            drop(params);
            debug!(id = %req.id, command = ?req.command, tty = req.tty, "serveExecContainer");
            let url = self.streams.serve_exec(req).await.map_err(|e| failed(&e))?;
            results.get().init_response().set_url(url.as_str());
            Ok(())
        })
        .await
    }

    async fn serve_attach_container(
        self: Rc<Self>,
        params: conmon::ServeAttachContainerParams,
        mut results: conmon::ServeAttachContainerResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "serve_attach_container",
            |span, p: &conmon::ServeAttachContainerParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                span.set_container_id(&lossy(r.get_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req = rpc::stream::serve_attach_container(params.get()?.get_request()?)
                .map_err(|e| failed(&e))?;
            drop(params);
            debug!(id = %req.id, "serveAttachContainer");
            let url = self
                .streams
                .serve_attach(req)
                .await
                .map_err(|e| failed(&e))?;
            results.get().init_response().set_url(url.as_str());
            Ok(())
        })
        .await
    }

    async fn serve_port_forward_container(
        self: Rc<Self>,
        params: conmon::ServePortForwardContainerParams,
        mut results: conmon::ServePortForwardContainerResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "serve_port_forward_container",
            |span, p: &conmon::ServePortForwardContainerParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req = rpc::stream::serve_port_forward_container(params.get()?.get_request()?)
                .map_err(|e| failed(&e))?;
            drop(params);
            debug!(netns = %req.net_ns_path.display(), "servePortForwardContainer");
            let url = self
                .streams
                .serve_port_forward(req)
                .await
                .map_err(|e| failed(&e))?;
            results.get().init_response().set_url(url.as_str());
            Ok(())
        })
        .await
    }

    async fn release_namespaces(
        self: Rc<Self>,
        params: conmon::ReleaseNamespacesParams,
        _results: conmon::ReleaseNamespacesResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "release_namespaces",
            |span, p: &conmon::ReleaseNamespacesParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                span.set("pod.id", lossy(r.get_pod_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req =
                rpc::release_namespaces(params.get()?.get_request()?).map_err(|e| failed(&e))?;
            drop(params);
            debug!(pod_id = %req.pod_id, "releaseNamespaces");
            self.monitor
                .release_namespaces(&req.base_path, &req.pod_id)
                .await
                .map_err(|e| failed(&e))
        })
        .await
    }

    async fn create_exec_session(
        self: Rc<Self>,
        params: conmon::CreateExecSessionParams,
        mut results: conmon::CreateExecSessionResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "create_exec_session",
            |span, p: &conmon::CreateExecSessionParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                span.set_container_id(&lossy(r.get_id()));
                set_session_id(span, lossy(r.get_session_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req =
                rpc::create_exec_session(params.get()?.get_request()?).map_err(|e| failed(&e))?;
            drop(params);
            debug!(id = %req.id, session = %req.session_id, process = ?req.process,
                terminal = req.terminal, suspended = req.suspended, "createExecSession");
            let (session_id, pid) = self
                .monitor
                .create_exec_session(req)
                .await
                .map_err(|e| failed(&e))?;
            let mut r = results.get().init_response();
            r.set_session_id(session_id.as_str());
            r.set_pid(pid);
            Ok(())
        })
        .await
    }

    async fn start_exec_session(
        self: Rc<Self>,
        params: conmon::StartExecSessionParams,
        mut results: conmon::StartExecSessionResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "start_exec_session",
            |span, p: &conmon::StartExecSessionParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                span.set_container_id(&lossy(r.get_id()));
                set_session_id(span, lossy(r.get_session_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req = params.get()?.get_request()?;
            let (id, session_id) =
                rpc::session_target(req.get_id(), req.get_session_id()).map_err(|e| failed(&e))?;
            drop(params);
            debug!(%id, session = %session_id, "startExecSession");
            let pid = self
                .monitor
                .start_exec_session(&id, &session_id)
                .await
                .map_err(|e| failed(&e))?;
            results.get().init_response().set_pid(pid);
            Ok(())
        })
        .await
    }

    async fn exec_session_status(
        self: Rc<Self>,
        params: conmon::ExecSessionStatusParams,
        mut results: conmon::ExecSessionStatusResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "exec_session_status",
            |span, p: &conmon::ExecSessionStatusParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                span.set_container_id(&lossy(r.get_id()));
                set_session_id(span, lossy(r.get_session_id()));
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let req = params.get()?.get_request()?;
            let (id, session_id) =
                rpc::session_target(req.get_id(), req.get_session_id()).map_err(|e| failed(&e))?;
            let wait = req.get_wait();
            drop(params);
            let state = self
                .monitor
                .exec_session_status(&id, &session_id, wait)
                .await
                .map_err(|e| failed(&e))?;
            let mut r = results.get().init_response();
            r.set_state(rpc::wire_session_state(state));
            r.set_pid(state.pid());
            if let crate::core::exec_session::SessionState::Exited { exit_code, .. } = state {
                r.set_exit_code(exit_code);
            }
            Ok(())
        })
        .await
    }

    async fn list_containers(
        self: Rc<Self>,
        params: conmon::ListContainersParams,
        mut results: conmon::ListContainersResults,
    ) -> Result<(), capnp::Error> {
        let span = rpc_span(
            "list_containers",
            |span, p: &conmon::ListContainersParams| {
                let r = p.get()?.get_request()?;
                span.set_parent(rpc::trace_parent(r.get_metadata(), None), true);
                Ok(())
            },
            &params,
        );
        otel::scope(span, async move {
            let list = self.monitor.list_containers();
            rpc::list_containers_reply(
                results.get().init_response(),
                &list,
                self.monitor.runtime_path(),
            );
            Ok(())
        })
        .await
    }
}

/// Accepts connections forever, one RPC system per connection; a peer that
/// is neither root nor the server's user is closed at once (defence in
/// depth behind the socket's mode). Must run inside a `LocalSet`.
pub async fn serve(listener: UnixListener, server: ConmonServer) {
    let client: conmon::Client = capnp_rpc::new_client(server);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("accept on conmon.sock: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if !crate::sys::socket::peer_allowed(stream.as_fd(), "conmon.sock") {
            continue;
        }
        let (reader, writer) = stream.into_split();
        let network = twoparty::VatNetwork::new(
            reader.compat(),
            writer.compat_write(),
            rpc_twoparty_capnp::Side::Server,
            Default::default(),
        );
        let rpc = RpcSystem::new(Box::new(network), Some(client.clone().client));
        tokio::task::spawn_local(rpc.map(|r| {
            if let Err(e) = r {
                debug!("rpc connection ended: {e}");
            }
        }));
    }
}

//! Termination signals (SIGINT, SIGTERM, SIGHUP) for the benchmark tools.
//!
//! Handlers, not a blocked mask with `sigwait`: a blocked mask is inherited
//! by every child a tool spawns (std does not reset it) and survives the
//! monitors' daemonisation, so the monitors (and podman) would ignore the
//! SIGTERM that stops them and be killed only after a grace period.
//! Handlers are reset to the default by `exec`.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once a termination signal arrived: every wait loop stops.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Installs the handlers (before any child is started) and a watcher
/// thread: the first signal sets [`interrupted`] and runs `on_first`, a
/// second one runs `on_second` (which should not return).
pub fn install_watcher(on_first: fn(), on_second: fn()) {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime for the signal watcher");
    let mut streams = {
        let _in_runtime = rt.enter();
        [
            SignalKind::interrupt(),
            SignalKind::terminate(),
            SignalKind::hangup(),
        ]
        .map(|kind| signal(kind).expect("install a termination signal handler"))
    };
    std::thread::spawn(move || {
        rt.block_on(async {
            let [int, term, hup] = &mut streams;
            let mut next_signal = async || {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            };
            next_signal().await;
            INTERRUPTED.store(true, Ordering::Relaxed);
            on_first();
            next_signal().await;
        });
        on_second();
    });
}

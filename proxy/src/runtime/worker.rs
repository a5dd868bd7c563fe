//! Worker threads: each runs a current-thread tokio runtime with a `LocalSet`, accepts on its
//! own `SO_REUSEPORT` sockets, and owns its connection pools. A connection lives and dies on
//! the worker that accepted it, so per-connection state needs no locks.
//!
//! A worker follows config changes: sockets of new listeners arrive on a channel, and each
//! published snapshot retires the VMs of plugins it dropped and pre-starts those it added.

use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tokio::task::LocalSet;

use super::drain::{ConnectionTracker, DrainWatch};
use super::state::ProxyState;
use crate::config::Snapshot;
use crate::listener::accept_loop;
use crate::upstream::UpstreamPools;
use crate::wasm::WorkerPlugins;

/// What a worker's tasks share: process state plus this worker's own pools.
pub struct WorkerContext {
    pub id: usize,
    pub state: Arc<ProxyState>,
    pub pools: Rc<UpstreamPools>,
    pub plugins: WorkerPlugins,
}

impl WorkerContext {
    /// The snapshot a new request or connection runs on; the worker's VMs follow it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let snapshot = self.state.snapshot();
        self.plugins.adopt(&snapshot);
        snapshot
    }
}

/// One bound socket for a worker: the listener it serves (by name), the socket, and the
/// signal that retires it when a new config removes the listener or moves it elsewhere.
pub struct WorkerSocket {
    pub listener: Arc<str>,
    pub socket: std::net::TcpListener,
    pub retired: DrainWatch,
}

/// Starts worker `id` on its own thread. `started` receives `Ok` once it runs, or the reason
/// it could not start. It accepts on every socket sent on `sockets`.
pub fn spawn_worker(
    id: usize,
    state: Arc<ProxyState>,
    sockets: mpsc::UnboundedReceiver<WorkerSocket>,
    drain: DrainWatch,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("sluice-worker-{id}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started.send(Err(format!(
                        "worker {id}: cannot start its runtime: {error}"
                    )));
                    return;
                }
            };
            let pools = Rc::new(UpstreamPools::default());
            let context = Rc::new(WorkerContext {
                id,
                state,
                plugins: WorkerPlugins::new(Rc::clone(&pools)),
                pools,
            });
            LocalSet::new().block_on(&runtime, run_worker(context, sockets, drain, started));
        })
}

async fn run_worker(
    context: Rc<WorkerContext>,
    mut sockets: mpsc::UnboundedReceiver<WorkerSocket>,
    mut drain: DrainWatch,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let tracker = ConnectionTracker::default();
    context.plugins.adopt(&context.state.snapshot());
    tokio::task::spawn_local(follow_snapshots(Rc::clone(&context)));
    let _ = started.send(Ok(()));

    loop {
        tokio::select! {
            () = drain.signaled() => break,
            Some(socket) = sockets.recv() => {
                let listener = Arc::clone(&socket.listener);
                if let Err(error) = serve_socket(&context, socket, &tracker, &drain) {
                    tracing::error!(worker = context.id, %listener, %error, "cannot accept on the listener's socket");
                }
            }
        }
    }
    let open = tracker.open();
    tracing::debug!(worker = context.id, open, "draining");
    // The running config's drain timeout: a change to it applies to the next drain.
    let drain_timeout = context.state.snapshot().drain_timeout;
    if tokio::time::timeout(drain_timeout, tracker.all_closed())
        .await
        .is_err()
    {
        tracing::warn!(
            worker = context.id,
            open = tracker.open(),
            "drain timeout passed; closing the remaining connections"
        );
    }
}

fn serve_socket(
    context: &Rc<WorkerContext>,
    socket: WorkerSocket,
    tracker: &ConnectionTracker,
    drain: &DrainWatch,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(socket.socket)?;
    tokio::task::spawn_local(accept_loop(
        Rc::clone(context),
        socket.listener,
        listener,
        tracker.clone(),
        drain.clone(),
        socket.retired,
    ));
    Ok(())
}

/// Retires the VMs of plugins a new snapshot dropped and pre-starts the VMs of its plugins,
/// off the request path (a request that arrives first adopts the snapshot itself).
async fn follow_snapshots(context: Rc<WorkerContext>) {
    let mut published = context.state.follow();
    context.plugins.warm(&context.state.snapshot());
    while published.changed().await.is_ok() {
        let snapshot = context.state.snapshot();
        context.plugins.adopt(&snapshot);
        context.plugins.warm(&snapshot);
    }
}

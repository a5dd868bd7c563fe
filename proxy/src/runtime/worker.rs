//! Worker threads: each runs a current-thread tokio runtime with a `LocalSet`, accepts on its
//! own `SO_REUSEPORT` sockets, and owns its connection pools. A connection lives and dies on
//! the worker that accepted it, so per-connection state needs no locks.

use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::task::LocalSet;

use super::drain::{ConnectionTracker, DrainWatch};
use super::state::ProxyState;
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

/// One bound socket for a worker: the listener's index in the snapshot and the socket.
pub struct WorkerSocket {
    pub listener: usize,
    pub socket: std::net::TcpListener,
}

/// Starts worker `id` on its own thread. `started` receives `Ok` once every socket accepts,
/// or the reason it could not start.
pub fn spawn_worker(
    id: usize,
    state: Arc<ProxyState>,
    sockets: Vec<WorkerSocket>,
    drain: DrainWatch,
    drain_timeout: Duration,
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
            LocalSet::new().block_on(
                &runtime,
                run_worker(context, sockets, drain, drain_timeout, started),
            );
        })
}

async fn run_worker(
    context: Rc<WorkerContext>,
    sockets: Vec<WorkerSocket>,
    mut drain: DrainWatch,
    drain_timeout: Duration,
    started: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let tracker = ConnectionTracker::default();
    for WorkerSocket { listener, socket } in sockets {
        let socket = match tokio::net::TcpListener::from_std(socket) {
            Ok(socket) => socket,
            Err(error) => {
                let _ = started.send(Err(format!(
                    "worker {}: cannot use its socket: {error}",
                    context.id
                )));
                return;
            }
        };
        tokio::task::spawn_local(accept_loop(
            Rc::clone(&context),
            listener,
            socket,
            tracker.clone(),
            drain.clone(),
        ));
    }
    let _ = started.send(Ok(()));

    drain.signaled().await;
    let open = tracker.open();
    tracing::debug!(worker = context.id, open, "draining");
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

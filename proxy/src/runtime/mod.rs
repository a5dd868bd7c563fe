//! Threads and lifecycle: worker threads, the shared process state, graceful drain, and the
//! [`RunningProxy`] that ties them together.

mod apply;
mod drain;
mod exec;
mod fast_hash;
mod file_watch;
mod listeners;
pub mod overload;
mod proxy;
mod state;
mod worker;

pub use apply::{ApplyError, ConfigApplier, ControlOverlay};
pub use drain::{ConnectionTracker, DrainTrigger, DrainWatch, TrackedConnection, drain_channel};
pub use exec::LocalExec;
pub use fast_hash::{FastHasher, FastHashing};
pub use file_watch::{ConfigWatch, SETTLE_TIME, WatchError};
pub use proxy::{RunningProxy, StartError};
pub use state::{NotReady, ProxyState};
pub use worker::{WorkerContext, WorkerSocket, spawn_worker};

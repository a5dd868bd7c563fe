//! Running hyper's background futures on the current worker thread.

use std::future::Future;

/// A hyper executor that spawns onto the current thread's `LocalSet`, so connection tasks stay
/// on the worker that accepted them and need not be `Send`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

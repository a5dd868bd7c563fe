//! Listeners: binding sockets and accepting connections.

mod accept;
mod bind;

pub use accept::accept_loop;
pub use bind::{BindError, bind_reuseport};

//! L4 proxying for `protocol: tcp` listeners.

mod activity;
mod proxy;

pub use proxy::{NetworkFilters, proxy_tcp};

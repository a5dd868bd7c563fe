//! The HTTP data path: connections, the per-request pipeline, routing, header rules, bodies,
//! and local replies.

mod body;
mod connection;
mod deadline;
mod frame_guard;
pub mod grpc_reply;
mod headers;
mod local_reply;
mod replay;
mod route;
mod send_timeout;
mod service;
mod upgrade;

pub use body::{BoxError, ProxyBody};
pub use connection::{Activity, ConnectionSettings, DownstreamConn, MIN_HEADER_BUFFER, serve_http};
pub use headers::{client_address, shape_for_upstream};
pub use local_reply::{LocalReply, REASON_HEADER, Reason, ReplyDetails};
pub use route::RouteTable;

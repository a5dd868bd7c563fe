//! End-to-end tests: the real proxy (in-process, or the real binary) on 127.0.0.1 ports in
//! front of real upstream servers. One test binary keeps link time down.

// The whole crate is test code: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod admin;
mod balancing;
mod binary;
mod compat;
mod control;
mod control_tls;
mod demo;
mod discovery;
mod docs;
mod extensions;
mod failures;
mod file_mode;
mod forwarding;
mod frame_floods;
mod hot_swap;
mod malformed;
mod mesh;
mod other_sdks;
mod protocols;
mod replicas;
mod routing;
mod support;
mod tls;
mod wasm;

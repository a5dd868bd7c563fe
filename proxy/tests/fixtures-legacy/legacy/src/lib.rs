//! An ABI 0.1.0 filter: the two-argument headers callback, `_start` instead of `_initialize`,
//! `malloc` as the allocator. Adds a request header naming the request's method, and one
//! showing what a missing header reads as.

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

#[unsafe(no_mangle)]
pub fn _start() {
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Legacy) });
}

struct Legacy;

impl Context for Legacy {}

impl HttpContext for Legacy {
    fn on_http_request_headers(&mut self, _: usize) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let missing = self.get_http_request_header("x-not-there");
        self.set_http_request_header("x-legacy-method", Some(&method));
        self.set_http_request_header("x-legacy-missing", Some(&format!("{missing:?}")));
        Action::Continue
    }
}

//! An example of a filter of your own: only requests of known tenants pass (the tenant is in
//! a request header), and each response says which tenant it served.
//!
//! Run its tests (they build this crate for `wasm32-wasip1` and run it on the real Sluice host):
//!
//! ```sh
//! cargo test -p example-tenant-gate
//! ```
//!
//! Build the module and push it to a running proxy (`sluice demo` runs one):
//!
//! ```sh
//! cargo build --release --target wasm32-wasip1 -p example-tenant-gate
//! sluice push target/wasm32-wasip1/release/tenant_gate.wasm --name tenants \
//!   --config '{"tenants": ["acme", "globex"]}'
//! ```

use std::rc::Rc;

use serde::Deserialize;
use sluice_sdk::proxy_wasm;
use sluice_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use sluice_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TenantRoot::default()) });
}}

/// The configuration, as JSON. `sluice_sdk::config::parse` names the field in its errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The request header naming the tenant.
    #[serde(default = "default_header")]
    header: String,
    /// The tenants let through.
    tenants: Vec<String>,
    /// The response header that names the tenant served.
    #[serde(default = "default_stamp")]
    stamp: String,
}

fn default_header() -> String {
    "x-tenant".to_owned()
}

fn default_stamp() -> String {
    "x-served-tenant".to_owned()
}

#[derive(Default)]
struct TenantRoot {
    config: Option<Rc<Config>>,
    refused: u32,
}

impl Context for TenantRoot {}

impl RootContext for TenantRoot {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match sluice_sdk::config::parse::<Config>(&bytes) {
            Ok(config) if config.tenants.is_empty() => {
                log::error!("tenant-gate: tenants: list at least one tenant");
                false
            }
            Ok(config) => {
                self.config = Some(Rc::new(config));
                self.refused = sluice_sdk::host::counter("tenant_gate_refused");
                true
            }
            Err(error) => {
                // A false return refuses the configuration: the proxy keeps its old one.
                log::error!("tenant-gate: invalid configuration: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TenantFilter {
            config: self.config.clone()?,
            refused: self.refused,
            tenant: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TenantFilter {
    config: Rc<Config>,
    refused: u32,
    /// The tenant of this request, once let through.
    tenant: Option<String>,
}

impl Context for TenantFilter {}

impl HttpContext for TenantFilter {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let tenant = self.get_http_request_header(&self.config.header);
        match tenant {
            Some(tenant) if self.config.tenants.contains(&tenant) => {
                self.tenant = Some(tenant);
                Action::Continue
            }
            _ => {
                let _ = proxy_wasm::hostcalls::increment_metric(self.refused, 1);
                let body = format!(
                    "unknown tenant: send a known one in {}\n",
                    self.config.header
                );
                self.send_http_response(
                    403,
                    vec![("content-type", "text/plain")],
                    Some(body.as_bytes()),
                );
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let Some(tenant) = &self.tenant {
            self.set_http_response_header(&self.config.stamp, Some(tenant));
        }
        Action::Continue
    }
}

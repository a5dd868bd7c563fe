//! Layer 3 of the host: the data a VM's host calls work on, kept in the wasmtime `Store`
//! (never in globals). Contexts, the stream data each callback may touch, and what the guest
//! asked for that takes effect after it returns (continue, local reply).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use wasmtime::{Memory, StoreLimits, TypedFunc};

use super::metrics::VmMetrics;
use super::pairs::Pair;
use super::replay::Replay;
use super::status::AbiVersion;
use crate::runtime::FastHashing;

/// Who a plugin is: fixed for its lifetime, shared by all of its VMs.
#[derive(Debug)]
pub struct PluginInfo {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    /// Most verbose level logged: 0 trace … 5 critical.
    pub log_level: u32,
    /// The plugin wrote a header HTTP cannot carry, and that was logged (once per plugin).
    pub warned_invalid_header: std::sync::atomic::AtomicBool,
}

/// A locally generated reply a filter asked for with `proxy_send_local_response`.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Vec<Pair>,
    pub grpc_status: Option<u32>,
}

/// A header map as the guest sees it, and whether it may change it now.
#[derive(Debug, Default)]
pub struct MapSlot {
    pub pairs: Option<Vec<Pair>>,
    pub writable: bool,
}

/// Facts about the stream that properties expose.
#[derive(Debug)]
pub struct StreamInfo {
    pub connection_id: u64,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub protocol: &'static str,
    pub start: SystemTime,
    /// Known once the stream is routed (for TCP, from the start).
    pub routed: std::cell::OnceCell<Routed>,
    /// The endpoint the current attempt went to (`upstream.address`), once one was picked.
    pub upstream: Cell<Option<SocketAddr>>,
    /// Why the current attempt got no response (`sluice.upstream_failure`): a local reply
    /// reason such as `upstream_connect_failure`, `upstream_reset` or `upstream_timeout`.
    pub upstream_failure: Cell<Option<&'static str>>,
    /// What the host keeps so a filter can have the request sent again.
    pub replay: RefCell<Replay>,
    /// What the TLS handshake of the downstream connection established, if it was TLS.
    pub tls: Option<Rc<crate::tls::TlsInfo>>,
    /// Envoy's `response.code_details` and `response.flags` of the response the filters see.
    pub response_details: RefCell<Option<std::borrow::Cow<'static, str>>>,
    pub response_flags: Cell<u64>,
    /// Request body bytes received from the client (`request.size` without a content-length).
    pub request_body_bytes: Cell<u64>,
}

/// Where a stream was routed: the `route_name` and `cluster_name` properties.
#[derive(Debug, Clone)]
pub struct Routed {
    /// Empty for a route without a `name`.
    pub route_name: String,
    pub cluster_name: String,
}

impl StreamInfo {
    pub fn new(
        connection_id: u64,
        source: SocketAddr,
        destination: SocketAddr,
        protocol: &'static str,
    ) -> Self {
        Self {
            connection_id,
            source,
            destination,
            protocol,
            start: SystemTime::now(),
            routed: std::cell::OnceCell::new(),
            response_details: RefCell::new(None),
            response_flags: Cell::new(0),
            request_body_bytes: Cell::new(0),
            upstream: Cell::new(None),
            upstream_failure: Cell::new(None),
            replay: RefCell::default(),
            tls: None,
        }
    }

    /// The stream of a TLS connection: its handshake's facts become `connection.*` properties.
    pub fn with_tls(mut self, tls: Option<Rc<crate::tls::TlsInfo>>) -> Self {
        self.tls = tls;
        self
    }

    /// Records the routing decision; later callbacks (and `on_log`) see it. The first one
    /// stands.
    pub fn set_routed(&self, route_name: &str, cluster_name: &str) {
        let _ = self.routed.set(Routed {
            route_name: route_name.to_owned(),
            cluster_name: cluster_name.to_owned(),
        });
    }
}

/// What one HTTP stream context can reach during a callback.
#[derive(Debug)]
pub struct StreamState {
    pub info: Rc<StreamInfo>,
    pub request_headers: MapSlot,
    pub request_trailers: MapSlot,
    pub response_headers: MapSlot,
    pub response_trailers: MapSlot,
    /// The body buffer of the callback in progress (or being accumulated while paused).
    pub request_body: Option<Vec<u8>>,
    pub response_body: Option<Vec<u8>>,
    /// TCP data of the callback in progress (accumulated while a filter holds it).
    pub downstream_data: Option<Vec<u8>>,
    pub upstream_data: Option<Vec<u8>>,
    pub continue_downstream: bool,
    pub response_code: Option<u16>,
    pub local_response: Option<LocalResponse>,
    pub continue_request: bool,
    pub continue_response: bool,
    pub close_stream: bool,
    /// Wakes the request pipeline when the guest resumes a paused stream.
    pub resumed: Rc<ResumeSignals>,
    /// Inside `proxy_on_log`: absent maps read as NOT_FOUND instead of BAD_ARGUMENT.
    pub in_log: bool,
    /// `proxy_set_property` values (Envoy's `wasm.<name>` filter state).
    pub filter_state: HashMap<Vec<u8>, Vec<u8>>,
}

/// Wakes whoever waits on a paused stream. One signal per phase, so a request-phase waiter and
/// a response-phase waiter on the same filter (HTTP/2 full duplex) never take each other's
/// wakeup; a TCP connection's client direction uses `request`.
#[derive(Debug, Default)]
pub struct ResumeSignals {
    pub request: Notify,
    pub response: Notify,
}

impl ResumeSignals {
    /// A local reply, a close or a dead VM concerns every waiter.
    pub fn wake_all(&self) {
        self.request.notify_one();
        self.response.notify_one();
    }
}

/// The context ids of one VM (ids are per VM instance, as in Envoy).
#[derive(Debug, Default)]
pub struct Contexts {
    pub root: u32,
    next: u32,
    /// The context the host is calling into right now.
    pub current: u32,
    /// Set by `proxy_set_effective_context` for the rest of the current callback.
    pub effective: Option<u32>,
    pub live: HashSet<u32, FastHashing>,
}

pub struct HostState {
    pub plugin: Arc<PluginInfo>,
    pub abi: AbiVersion,
    pub limits: StoreLimits,
    pub memory: Option<Memory>,
    pub allocator: Option<TypedFunc<i32, i32>>,
    pub contexts: Contexts,
    /// By context id, which the host hands out itself; every host call looks its stream up.
    pub streams: HashMap<u32, StreamState, FastHashing>,
    /// True only while `proxy_on_configure` runs: the plugin configuration buffer exists then.
    pub in_configure: bool,
    /// Set when the guest changes its tick period; the VM owner re-arms the timer.
    pub tick_period: Option<Duration>,
    pub tick_changed: bool,
    pub metrics: VmMetrics,
    /// `proxy_done` was called for the root context.
    pub root_done: bool,
    /// Where `proxy_on_queue_ready` notifications for queues this VM registered are sent
    /// (the VM's worker listens); `None` for a canary VM.
    pub queue_events: Option<tokio::sync::mpsc::UnboundedSender<u32>>,
    /// The clusters `proxy_http_call` may target.
    pub clusters: Option<super::callout::Clusters>,
    /// Callout tokens are 4, 8, 12, … (low two bits 0 mark an HTTP call, as in cpp-host).
    pub last_call_token: u32,
    /// Callouts the guest asked for in the callback in progress, sent when it returns.
    pub pending_calls: Vec<super::callout::PendingCall>,
    /// HTTP and unary gRPC calls not answered yet, by token, with the stream context that made
    /// them: a stream waiting for its own call keeps its headers held (see `chain::early`).
    pub call_owners: HashMap<u32, u32>,
    /// The response being delivered by `proxy_on_http_call_response` (maps 6/7, buffer 4).
    pub call_response: Option<super::callout::CallResponse>,
    /// gRPC call tokens are 5, 9, 13, … (low two bits 01).
    pub last_grpc_token: u32,
    /// Unary gRPC calls not answered yet; dropping the sender cancels the call.
    pub grpc_calls: HashMap<u32, tokio::sync::oneshot::Sender<()>>,
    /// gRPC stream tokens are 6, 10, 14, … (low two bits 10).
    pub last_grpc_stream_token: u32,
    /// The guest's ends of its open gRPC streams.
    pub grpc_streams: HashMap<u32, super::grpc_stream::StreamHandle>,
    /// Streams opened in the callback in progress, started when it returns.
    pub pending_streams: Vec<super::grpc_stream::PendingStream>,
    /// The metadata being delivered by `proxy_on_grpc_receive_initial_metadata` (map 4) or
    /// `_trailing_metadata` (map 5): the map type and its pairs.
    pub grpc_metadata: Option<(u32, Vec<Pair>)>,
    /// The message being delivered by `proxy_on_grpc_receive` (buffer 5).
    pub grpc_message: Option<Vec<u8>>,
    /// What `proxy_get_status` reports: the last callout's outcome.
    pub call_status: (u32, Vec<u8>),
    /// Unsupported host calls already logged, so each is logged once per VM.
    pub logged_once: HashSet<&'static str>,
}

// === impl Contexts ===

impl Contexts {
    pub fn allocate(&mut self) -> u32 {
        self.next += 1;
        self.live.insert(self.next);
        self.next
    }

    /// The context host calls act on: the effective one if it is still alive, else the current.
    pub fn acting(&self) -> u32 {
        match self.effective {
            Some(id) if self.live.contains(&id) => id,
            _ => self.current,
        }
    }
}

// === impl StreamState ===

impl StreamState {
    pub fn new(info: Rc<StreamInfo>) -> Self {
        Self {
            info,
            request_headers: MapSlot::default(),
            request_trailers: MapSlot::default(),
            response_headers: MapSlot::default(),
            response_trailers: MapSlot::default(),
            request_body: None,
            response_body: None,
            downstream_data: None,
            upstream_data: None,
            continue_downstream: false,
            response_code: None,
            local_response: None,
            continue_request: false,
            continue_response: false,
            close_stream: false,
            resumed: Rc::default(),
            in_log: false,
            filter_state: HashMap::new(),
        }
    }
}

// === impl HostState ===

impl HostState {
    pub fn new(
        plugin: Arc<PluginInfo>,
        abi: AbiVersion,
        limits: StoreLimits,
        metrics: VmMetrics,
    ) -> Self {
        Self {
            plugin,
            abi,
            limits,
            memory: None,
            allocator: None,
            contexts: Contexts::default(),
            streams: HashMap::default(),
            in_configure: false,
            tick_period: None,
            tick_changed: false,
            metrics,
            root_done: false,
            queue_events: None,
            clusters: None,
            last_call_token: 0,
            pending_calls: Vec::new(),
            call_owners: HashMap::new(),
            call_response: None,
            call_status: (0, Vec::new()),
            last_grpc_token: 1,
            grpc_calls: HashMap::new(),
            last_grpc_stream_token: 2,
            grpc_streams: HashMap::new(),
            pending_streams: Vec::new(),
            grpc_metadata: None,
            grpc_message: None,
            logged_once: HashSet::new(),
        }
    }

    /// The stream the acting context belongs to, if it is a stream context.
    pub fn acting_stream(&mut self) -> Option<&mut StreamState> {
        let id = self.contexts.acting();
        self.streams.get_mut(&id)
    }

    /// Logs an unsupported host call once per VM, naming the plugin.
    pub fn log_unsupported_once(&mut self, call: &'static str, what_happens: &str) {
        if self.logged_once.insert(call) {
            tracing::warn!(plugin = %self.plugin.name, call, "{what_happens}");
        }
    }
}

//! Errors of the Wasm host: loading a plugin (reported as config errors), and a VM failing at
//! run time (answered with the plugin's fail policy).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("the Wasm engine is unavailable: {0}")]
    Engine(String),
    #[error("cannot read module {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("module sha256:{digest} does not compile: {reason}")]
    Compile { digest: String, reason: String },
    #[error(
        "module sha256:{digest} exports no known Proxy-Wasm ABI version (proxy_abi_version_0_1_0, _0_2_0 or _0_2_1)"
    )]
    NoAbiVersion { digest: String },
    #[error("module sha256:{digest} cannot be linked: {reason}")]
    Link { digest: String, reason: String },
    #[error("plugin {plugin:?}: {what}")]
    Start { plugin: String, what: String },
    #[error("plugin {plugin:?}: {callback} returned false: the plugin rejected its {rejected}")]
    Rejected {
        plugin: String,
        callback: &'static str,
        rejected: &'static str,
    },
}

/// A VM that trapped or was interrupted: the reason, for logs and the `reason` label.
#[derive(Debug, Clone)]
pub struct VmFailure {
    pub callback: &'static str,
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The callback ran past `limits.callback_time` (epoch interruption).
    Timeout,
    /// Linear memory would have grown past `limits.memory`.
    Memory,
    /// `unreachable` (a Rust or Go panic lands here), out-of-bounds access, stack overflow, …
    Trap,
    /// The VM could not be (re)started.
    Start,
    /// The context or its VM is already gone (the VM failed, or the stream ended): not a new
    /// failure of the VM, only a reason to apply the fail policy to what is left of a stream.
    Gone,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Trap => "trap",
            Self::Start => "start",
            Self::Gone => "gone",
        }
    }
}

impl VmFailure {
    pub fn from_error(callback: &'static str, error: &wasmtime::Error) -> Self {
        let message = format!("{error:?}");
        let kind = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => FailureKind::Timeout,
            _ if message.contains("forcing trap when growing memory")
                || message.contains("memory minimum size") =>
            {
                FailureKind::Memory
            }
            _ => FailureKind::Trap,
        };
        Self {
            callback,
            kind,
            message,
        }
    }
}

impl std::fmt::Display for VmFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} in {}: {}",
            self.kind.as_str(),
            self.callback,
            self.message
        )
    }
}

//! Read-modify-write of one shared-data key, safe across workers: the host's compare-and-swap
//! turns a write over someone else's newer value into a retry.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Why an [`update`] did not store its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// Other writers won every one of the tries.
    Contended,
    /// The host refused the write.
    Host(Status),
}

impl std::fmt::Display for UpdateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Contended => write!(f, "the value kept changing under us"),
            Self::Host(status) => write!(f, "the host refused the write: {status:?}"),
        }
    }
}

/// Reads `key` (`None` if absent), lets `change` compute the new value and a result from it,
/// and stores the value unless another writer came first, in which case it starts over, up
/// to `tries` times. Returns `change`'s result for the value that was stored.
pub fn update<T>(
    key: &str,
    tries: usize,
    mut change: impl FnMut(Option<&[u8]>) -> (Vec<u8>, T),
) -> Result<T, UpdateError> {
    for _ in 0..tries {
        let (stored, cas) = hostcalls::get_shared_data(key).map_err(UpdateError::Host)?;
        let (value, outcome) = change(stored.as_deref());
        match hostcalls::set_shared_data(key, Some(&value), cas) {
            Ok(()) => return Ok(outcome),
            Err(Status::CasMismatch) => continue,
            Err(status) => return Err(UpdateError::Host(status)),
        }
    }
    Err(UpdateError::Contended)
}

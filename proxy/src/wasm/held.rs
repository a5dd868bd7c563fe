//! Modules a control service sent, held in memory by sha256: a filter names one as
//! `module: sha256:<hex>`. Held until a newer overlay no longer names them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::runtime::ModuleBytes;

fn held() -> MutexGuard<'static, HashMap<String, Arc<[u8]>>> {
    static HELD: OnceLock<Mutex<HashMap<String, Arc<[u8]>>>> = OnceLock::new();
    HELD.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Holds `bytes`; returns their sha256.
pub fn hold_module(bytes: Vec<u8>) -> String {
    let module = ModuleBytes::new(bytes);
    held().insert(module.digest.clone(), module.bytes.into());
    module.digest
}

pub fn is_held(digest: &str) -> bool {
    held().contains_key(&digest.to_ascii_lowercase())
}

pub fn held_module(digest: &str) -> Option<ModuleBytes> {
    let bytes = held().get(&digest.to_ascii_lowercase()).cloned()?;
    Some(ModuleBytes::new(bytes.to_vec()))
}

/// Lets go of every module not in `keep`.
pub fn release_modules_except(keep: &HashSet<&str>) {
    held().retain(|digest, _| keep.contains(digest.as_str()));
}

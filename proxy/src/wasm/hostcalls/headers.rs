//! Header and trailer maps (`proxy_*_header_map_*`). A map is reachable only while the
//! stream holds it, as in Envoy: request headers inside `on_request_headers` (and while that
//! callback keeps the stream paused) and read-only in `on_log`.

use wasmtime::{Caller, Linker};

use crate::wasm::grpc_stream::{GRPC_INITIAL_METADATA, GRPC_TRAILING_METADATA};
use crate::wasm::guest::{CallResult, finish, read, read_string, return_bytes, write_u32};
use crate::wasm::pairs::{self, Pair};
use crate::wasm::state::{HostState, MapSlot};
use crate::wasm::status::{AbiVersion, Status};

const MAX_MAP_TYPE: u32 = 7;
const REQUEST_HEADERS: u32 = 0;
const CALL_RESPONSE_HEADERS: u32 = 6;
const CALL_RESPONSE_TRAILERS: u32 = 7;

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, HostState>, kind: i32, ptr_out: i32, size_out: i32| {
            let result: CallResult = (|| {
                check_kind(kind)?;
                // An unavailable map reads as empty here, never as an error.
                let encoded = with_map(&mut caller, kind as u32, |slot| {
                    Ok(slot.pairs.as_deref().map(pairs::encode_pairs))
                })
                .ok()
                .flatten()
                .unwrap_or_default();
                return_bytes(&mut caller, &encoded, ptr_out, size_out)
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, HostState>, kind: i32, ptr: i32, len: i32| {
            let result: CallResult = (|| {
                check_kind(kind)?;
                let new_pairs: Vec<Pair> = pairs::decode(&read(&caller, ptr, len)?)
                    .into_iter()
                    .map(|(mut k, v)| {
                        k.make_ascii_lowercase();
                        (alias(kind as u32, k), v)
                    })
                    .collect();
                for (key, value) in &new_pairs {
                    warn_if_invalid(caller.data(), kind as u32, key, value);
                }
                with_writable(&mut caller, kind as u32, |list| *list = new_pairs)
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: Caller<'_, HostState>, kind: i32, size_out: i32| {
            let result: CallResult = (|| {
                check_kind(kind)?;
                let size = with_map(&mut caller, kind as u32, |slot| {
                    let list = slot.pairs.as_ref().ok_or(Status::BadArgument)?;
                    Ok(list.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())
                })?;
                write_u32(&mut caller, size_out, size as u32)?;
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         key_ptr: i32,
         key_len: i32,
         ptr_out: i32,
         size_out: i32| {
            finish(get_value(
                &mut caller,
                kind,
                key_ptr,
                key_len,
                ptr_out,
                size_out,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32| {
            let result: CallResult = (|| {
                check_kind(kind)?;
                let key = alias(kind as u32, read_key(&caller, key_ptr, key_len)?);
                let value = read(&caller, value_ptr, value_len)?;
                warn_if_invalid(caller.data(), kind as u32, &key, &value);
                with_writable(&mut caller, kind as u32, |list| add(list, key, value))
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32| {
            let result: CallResult = (|| {
                check_kind(kind)?;
                let key = alias(kind as u32, read_key(&caller, key_ptr, key_len)?);
                let value = read(&caller, value_ptr, value_len)?;
                warn_if_invalid(caller.data(), kind as u32, &key, &value);
                with_writable(&mut caller, kind as u32, |list| replace(list, key, value))
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, HostState>, kind: i32, key_ptr: i32, key_len: i32| {
            let result: CallResult = (|| {
                check_kind(kind)?;
                let key = alias(kind as u32, read_key(&caller, key_ptr, key_len)?);
                with_writable(&mut caller, kind as u32, |list| {
                    list.retain(|(k, _)| *k != key)
                })
            })();
            finish(result)
        },
    )?;
    Ok(())
}

/// A map key from the guest, lowercase as every map's names are (lowered in place: a key is
/// read on nearly every header call).
fn read_key(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String, Status> {
    let mut key = read_string(caller, ptr, len)?;
    key.make_ascii_lowercase();
    Ok(key)
}

/// In request headers `host` is `:authority`, as in Envoy's header map (its legacy alias):
/// reading it gives the authority, and writing it sets the one `Host` the upstream gets.
fn alias(kind: u32, key: String) -> String {
    if kind == REQUEST_HEADERS && key == "host" {
        ":authority".to_owned()
    } else {
        key
    }
}

/// Says once per plugin, with the reason, that it wrote a header HTTP cannot carry: the
/// request then fails with 503 as in Envoy (`convert::InvalidHeader`), and response headers
/// and trailers go on without it, so the filter's author needs to hear why.
fn warn_if_invalid(state: &HostState, kind: u32, key: &str, value: &[u8]) {
    if kind > 3 {
        return;
    }
    let name = key.strip_prefix(':').unwrap_or(key);
    let problem = if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        "its name is not a valid HTTP field name"
    } else if http::HeaderValue::from_bytes(value).is_err() {
        "its value holds a control character (a newline, NUL, ...)"
    } else {
        return;
    };
    let plugin = &state.plugin;
    if plugin
        .warned_invalid_header
        .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    let effect = match kind {
        REQUEST_HEADERS => "the request fails with 503, as in Envoy",
        _ => "it is dropped",
    };
    tracing::warn!(
        plugin = %plugin.name,
        header = %key.escape_debug(),
        "a filter wrote a header HTTP cannot carry ({problem}): {effect}; said once per plugin"
    );
}

fn check_kind(kind: i32) -> Result<(), Status> {
    if kind as u32 > MAX_MAP_TYPE {
        return Err(Status::BadArgument);
    }
    Ok(())
}

/// Runs `f` on map `kind`: the gRPC metadata (4, 5) and callout response maps (6, 7) while
/// their callback runs, read-only; the others of the acting stream. A map that does not
/// exist now, or a streamless context, is BAD_ARGUMENT, as Envoy answers.
fn with_map<T>(
    caller: &mut Caller<'_, HostState>,
    kind: u32,
    f: impl FnOnce(&mut MapSlot) -> Result<T, Status>,
) -> Result<T, Status> {
    if let Some(read_only) = callout_map(caller.data(), kind) {
        let mut slot = MapSlot {
            pairs: Some(read_only?.clone()),
            writable: false,
        };
        return f(&mut slot);
    }
    let stream = caller
        .data_mut()
        .acting_stream()
        .ok_or(Status::BadArgument)?;
    let slot = match kind {
        0 => &mut stream.request_headers,
        1 => &mut stream.request_trailers,
        2 => &mut stream.response_headers,
        3 => &mut stream.response_trailers,
        _ => return Err(Status::BadArgument),
    };
    f(slot)
}

/// Maps 4–7, which belong to the callout callback in progress, not to a stream: `None` for
/// any other kind; BAD_ARGUMENT when no such callback is running.
fn callout_map(state: &HostState, kind: u32) -> Option<Result<&Vec<Pair>, Status>> {
    let pairs = match kind {
        GRPC_INITIAL_METADATA | GRPC_TRAILING_METADATA => match &state.grpc_metadata {
            Some((delivered, pairs)) if *delivered == kind => Some(pairs),
            _ => None,
        },
        CALL_RESPONSE_HEADERS => state.call_response.as_ref().map(|r| &r.headers),
        CALL_RESPONSE_TRAILERS => state.call_response.as_ref().map(|r| &r.trailers),
        _ => return None,
    };
    Some(pairs.ok_or(Status::BadArgument))
}

fn with_writable(
    caller: &mut Caller<'_, HostState>,
    kind: u32,
    f: impl FnOnce(&mut Vec<Pair>),
) -> CallResult {
    with_map(caller, kind, |slot| {
        match (&mut slot.pairs, slot.writable) {
            (Some(list), true) => {
                f(list);
                Ok(())
            }
            _ => Err(Status::BadArgument),
        }
    })?;
    Ok(())
}

/// Envoy's add: a new entry at the end; but `:authority`, one of Envoy's inline headers,
/// holds one value, so a second one is appended to it after a comma.
fn add(list: &mut Vec<Pair>, key: String, value: Vec<u8>) {
    if key == ":authority"
        && let Some((_, existing)) = list.iter_mut().find(|(k, _)| *k == key)
    {
        if existing.is_empty() {
            *existing = value;
        } else {
            existing.push(b',');
            existing.extend_from_slice(&value);
        }
        return;
    }
    list.push((key, value));
}

/// Envoy's replace: every entry of the key goes, and the new value is appended at the end.
fn replace(list: &mut Vec<Pair>, key: String, value: Vec<u8>) {
    list.retain(|(k, _)| *k != key);
    list.push((key, value));
}

fn get_value(
    caller: &mut Caller<'_, HostState>,
    kind: i32,
    key_ptr: i32,
    key_len: i32,
    ptr_out: i32,
    size_out: i32,
) -> CallResult {
    check_kind(kind)?;
    let key = alias(kind as u32, read_key(caller, key_ptr, key_len)?);
    let legacy = caller.data().abi == AbiVersion::V0_1_0;
    let in_log = caller.data_mut().acting_stream().is_some_and(|s| s.in_log);
    let found = with_map(caller, kind as u32, |slot| match &slot.pairs {
        Some(list) => Ok(list.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())),
        None if in_log => Err(Status::NotFound),
        None => Err(Status::BadArgument),
    });
    let value = match found {
        Ok(Some(value)) => value,
        // ABI 0.1.0 answered a missing key (or map) with an empty value.
        Ok(None) | Err(_) if legacy => Vec::new(),
        Ok(None) => return Err(Status::NotFound.into()),
        Err(status) => return Err(status.into()),
    };
    return_bytes(caller, &value, ptr_out, size_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_authority_in_request_headers_only() {
        assert_eq!(alias(REQUEST_HEADERS, "host".into()), ":authority");
        assert_eq!(
            alias(2, "host".into()),
            "host",
            "response headers keep a host header"
        );
        assert_eq!(alias(REQUEST_HEADERS, "x-host".into()), "x-host");
        let mut list: Vec<Pair> = vec![(":authority".into(), b"a.example".to_vec())];
        add(&mut list, ":authority".into(), b"b.example".to_vec());
        assert_eq!(
            list,
            vec![(":authority".into(), b"a.example,b.example".to_vec())]
        );
        add(&mut list, "x-a".into(), b"1".to_vec());
        add(&mut list, "x-a".into(), b"2".to_vec());
        assert_eq!(list.len(), 3, "other names get an entry each");
    }

    #[test]
    fn replace_drops_every_entry_and_appends_as_envoy_does() {
        let mut list: Vec<Pair> = vec![
            ("a".into(), b"1".to_vec()),
            ("x".into(), b"old".to_vec()),
            ("b".into(), b"2".to_vec()),
            ("x".into(), b"dup".to_vec()),
        ];
        replace(&mut list, "x".into(), b"new".to_vec());
        assert_eq!(
            list,
            vec![
                ("a".into(), b"1".to_vec()),
                ("b".into(), b"2".to_vec()),
                ("x".into(), b"new".to_vec())
            ]
        );
    }
}

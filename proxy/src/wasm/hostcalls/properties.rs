//! Properties (Envoy attribute names) and foreign functions.

use wasmtime::{Caller, Linker};

use crate::wasm::guest::{CallResult, finish, read, return_bytes};
use crate::wasm::pairs;
use crate::wasm::state::{HostState, StreamState};
use crate::wasm::status::Status;

/// A property value before encoding (ABI reference §5.1).
enum Value {
    Bytes(Vec<u8>),
    Int(i64),
    Uint(u64),
    Timestamp(i64),
    Map(Vec<(String, Vec<u8>)>),
    /// Known but empty (a TLS connection without a peer certificate or without that SAN):
    /// Envoy answers SERIALIZATION_FAILURE for it.
    Null,
}

pub fn register(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: Caller<'_, HostState>,
         path_ptr: i32,
         path_len: i32,
         ptr_out: i32,
         size_out: i32| {
            let result: CallResult = (|| {
                let path = read(&caller, path_ptr, path_len)?;
                let value =
                    lookup(caller.data_mut(), &path_segments(&path)).ok_or(Status::NotFound)?;
                if matches!(value, Value::Null) {
                    return Err(Status::SerializationFailure.into());
                }
                return_bytes(&mut caller, &encode(value), ptr_out, size_out)
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Caller<'_, HostState>,
         path_ptr: i32,
         path_len: i32,
         value_ptr: i32,
         value_len: i32| {
            let result: CallResult = (|| {
                let path = read(&caller, path_ptr, path_len)?;
                let value = read(&caller, value_ptr, value_len)?;
                // Envoy keeps these as stream filter state: a root context has none.
                let stream = caller.data_mut().acting_stream().ok_or(Status::NotFound)?;
                stream.filter_state.insert(path, value);
                Ok(())
            })();
            finish(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut caller: Caller<'_, HostState>, name_ptr: i32, name_len: i32, args_ptr: i32, args_len: i32, ptr_out: i32, size_out: i32| {
            let result: CallResult = (|| {
                let name = String::from_utf8_lossy(&read(&caller, name_ptr, name_len)?).into_owned();
                let args = read(&caller, args_ptr, args_len)?;
                match name.as_str() {
                    super::extensions::EJECT_ENDPOINT => {
                        let outcome = super::extensions::eject_endpoint(caller.data(), &args)?;
                        return_bytes(&mut caller, outcome.as_bytes(), ptr_out, size_out)
                    }
                    super::extensions::PREPARE_REPLAY => {
                        let outcome = super::extensions::prepare_replay(caller.data_mut(), &args)?;
                        return_bytes(&mut caller, outcome.as_bytes(), ptr_out, size_out)
                    }
                    super::extensions::REPLAY => {
                        let outcome = super::extensions::replay(caller.data_mut(), &args)?;
                        return_bytes(&mut caller, outcome.as_bytes(), ptr_out, size_out)
                    }
                    _ => {
                        tracing::debug!(plugin = %caller.data().plugin.name, function = %name, "unknown foreign function");
                        // An unknown name is NOT_FOUND, as in Envoy.
                        Err(Status::NotFound.into())
                    }
                }
            })();
            finish(result)
        },
    )?;
    Ok(())
}

fn encode(value: Value) -> Vec<u8> {
    match value {
        Value::Bytes(bytes) => bytes,
        Value::Int(v) | Value::Timestamp(v) => v.to_le_bytes().to_vec(),
        Value::Uint(v) => v.to_le_bytes().to_vec(),
        Value::Map(entries) => pairs::encode_pairs(&entries),
        Value::Null => Vec::new(),
    }
}

/// Envoy's `connection.*` TLS attributes. On a plaintext connection `mtls` is false and
/// `requested_server_name` empty, the rest NOT_FOUND; on TLS a missing certificate or SAN is
/// null.
fn tls_property(info: &crate::wasm::StreamInfo, name: &[u8]) -> Option<Value> {
    let Some(tls) = info.tls.as_deref() else {
        return match name {
            b"mtls" => Some(Value::Bytes(vec![0])),
            b"requested_server_name" => Some(text("")),
            _ => None,
        };
    };
    let peer = tls.peer.as_ref();
    let local = tls.local.as_deref();
    let or_null = |value: Option<&String>| value.map_or(Value::Null, |v| text(v.clone()));
    Some(match name {
        b"mtls" => Value::Bytes(vec![u8::from(peer.is_some())]),
        b"requested_server_name" => text(tls.server_name.clone().unwrap_or_default()),
        b"tls_version" => text(tls.version),
        b"subject_peer_certificate" => or_null(peer.map(|p| &p.subject)),
        b"subject_local_certificate" => or_null(local.map(|l| &l.subject)),
        b"uri_san_peer_certificate" => or_null(peer.and_then(|p| p.uri_sans.first())),
        b"uri_san_local_certificate" => or_null(local.and_then(|l| l.uri_sans.first())),
        b"dns_san_peer_certificate" => or_null(peer.and_then(|p| p.dns_sans.first())),
        b"dns_san_local_certificate" => or_null(local.and_then(|l| l.dns_sans.first())),
        b"sha256_peer_certificate_digest" => or_null(peer.map(|p| &p.sha256)),
        _ => return None,
    })
}

fn text(value: impl Into<String>) -> Value {
    Value::Bytes(value.into().into_bytes())
}

/// The segments of a property path: NUL-separated. The C++ SDK ends every segment with a
/// NUL, the Rust and Go SDKs only separate them; Envoy reads both, ignoring one NUL at the
/// end.
fn path_segments(path: &[u8]) -> Vec<&[u8]> {
    let path = path.strip_suffix(&[0]).unwrap_or(path);
    path.split(|b| *b == 0).collect()
}

fn lookup(state: &mut HostState, segments: &[&[u8]]) -> Option<Value> {
    let plugin = &state.plugin;
    let first = segments.first().copied().unwrap_or_default();
    match (first, segments.get(1).copied()) {
        (b"plugin_name", None) => return Some(text(plugin.name.clone())),
        (b"plugin_root_id", None) => return Some(text(plugin.root_id.clone())),
        (b"plugin_vm_id", None) => return Some(text(plugin.vm_id.clone())),
        _ => {}
    }
    let stream = state.acting_stream()?;
    stream_property(stream, segments)
}

fn stream_property(stream: &StreamState, segments: &[&[u8]]) -> Option<Value> {
    let info = &stream.info;
    let header = |name: &str| -> Option<String> {
        let list = stream.request_headers.pairs.as_ref()?;
        let values: Vec<String> = list
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let first = segments[0];
    let second = segments.get(1).copied();
    let value = match (first, second) {
        (b"source", Some(b"address")) => text(info.source.to_string()),
        (b"source", Some(b"port")) => Value::Int(i64::from(info.source.port())),
        (b"destination", Some(b"address")) => text(info.destination.to_string()),
        (b"destination", Some(b"port")) => Value::Int(i64::from(info.destination.port())),
        (b"connection", Some(b"id")) | (b"connection_id", None) => Value::Uint(info.connection_id),
        (b"connection", Some(name)) if name != b"id" => tls_property(info, name)?,
        // Sluice's name for the client's workload identity (mutual TLS).
        (b"source", Some(b"principal")) => {
            let tls = info.tls.as_ref()?;
            tls.peer_principal()
                .map_or(Value::Null, |p| text(p.to_owned()))
        }
        (b"request", Some(b"protocol")) => text(info.protocol),
        (b"request", Some(b"time")) => Value::Timestamp(
            info.start
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
        ),
        // Header-derived request attributes exist only while the stream holds the headers.
        (b"request", Some(b"path")) => text(header(":path")?),
        (b"request", Some(b"url_path")) => {
            let path = header(":path")?;
            text(path.split('?').next().unwrap_or_default().to_owned())
        }
        (b"request", Some(b"query")) => text(
            header(":path")?
                .split_once('?')
                .map(|(_, q)| q.to_owned())
                .unwrap_or_default(),
        ),
        (b"request", Some(b"host")) => text(header(":authority")?),
        (b"request", Some(b"scheme")) => text(header(":scheme")?),
        (b"request", Some(b"method")) => text(header(":method")?),
        (b"request", Some(b"referer")) => text(header("referer")?),
        (b"request", Some(b"useragent")) => text(header("user-agent")?),
        (b"request", Some(b"id")) => text(header("x-request-id")?),
        (b"request", Some(b"headers")) => match segments.get(2) {
            Some(name) => text(header(&String::from_utf8_lossy(name).to_ascii_lowercase())?),
            None => {
                let list = stream.request_headers.pairs.as_ref()?;
                Value::Map(list.clone())
            }
        },
        (b"response", Some(b"code")) => Value::Int(i64::from(stream.response_code?)),
        (b"response", Some(b"headers")) => {
            let list = stream.response_headers.pairs.as_ref()?;
            match segments.get(2) {
                Some(name) => {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    let values: Vec<String> = list
                        .iter()
                        .filter(|(k, _)| *k == name)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .collect();
                    if values.is_empty() {
                        return None;
                    }
                    text(values.join(","))
                }
                None => Value::Map(list.clone()),
            }
        }
        // Envoy 1.33 dropped the bare `route_name` and `cluster_name`: only `xds.*` names
        // them (the bare ones fall through to filter state, NotFound unless a filter set it).
        (b"xds", Some(b"route_name")) => text(info.routed.get()?.route_name.clone()),
        (b"xds", Some(b"cluster_name")) => text(info.routed.get()?.cluster_name.clone()),
        // Envoy: the request's content-length while its headers are visible, else the body
        // bytes received so far.
        (b"request", Some(b"size")) => {
            let declared = header("content-length").and_then(|length| length.parse::<i64>().ok());
            Value::Int(declared.unwrap_or_else(|| {
                i64::try_from(info.request_body_bytes.get()).unwrap_or(i64::MAX)
            }))
        }
        (b"response", Some(b"code_details")) => {
            text(info.response_details.borrow().as_deref()?.to_owned())
        }
        (b"response", Some(b"flags")) => {
            Value::Int(i64::try_from(info.response_flags.get()).unwrap_or(i64::MAX))
        }
        (b"upstream", Some(b"address")) => text(info.upstream.get()?.to_string()),
        (b"upstream", Some(b"port")) => Value::Int(i64::from(info.upstream.get()?.port())),
        // Sluice's extension: why there is no upstream response.
        (b"sluice", Some(b"upstream_failure")) => text(info.upstream_failure.get()?),
        // Anything else: what `proxy_set_property` stored under that path.
        _ => {
            let joined = segments.join(&0u8);
            Value::Bytes(stream.filter_state.get(&joined)?.clone())
        }
    };
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::path_segments;

    #[test]
    fn paths_split_at_nul_with_or_without_one_at_the_end() {
        let expected: Vec<&[u8]> = vec![b"request", b"headers", b"x-a"];
        assert_eq!(path_segments(b"request\0headers\0x-a"), expected);
        assert_eq!(path_segments(b"request\0headers\0x-a\0"), expected);
        assert_eq!(
            path_segments(b"plugin_name\0"),
            vec![b"plugin_name".as_slice()]
        );
        // Only one: an empty last segment written out stays.
        assert_eq!(
            path_segments(b"a\0\0"),
            vec![b"a".as_slice(), b"".as_slice()]
        );
    }
}

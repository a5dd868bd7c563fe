//! Reading and writing guest memory from host calls. Every pointer and length comes from the
//! guest and is checked (in 64-bit arithmetic) before use: a bad one is an
//! `INVALID_MEMORY_ACCESS` status for the guest, never a host panic.

use wasmtime::{AsContext, AsContextMut, Caller};

use super::state::HostState;
use super::status::Status;

/// Why a host call stopped: a status for the guest, or a trap to propagate (e.g. the guest's
/// allocator trapped while the host was handing it data).
#[derive(Debug)]
pub enum CallError {
    Status(Status),
    Trap(wasmtime::Error),
}

pub type CallResult<T = ()> = Result<T, CallError>;

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

/// The wire form of a host call's outcome.
pub fn finish(result: CallResult) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok as i32),
        Err(CallError::Status(status)) => Ok(status as i32),
        Err(CallError::Trap(trap)) => Err(trap),
    }
}

fn memory(caller: &Caller<'_, HostState>) -> Result<wasmtime::Memory, Status> {
    caller.data().memory.ok_or(Status::InvalidMemoryAccess)
}

/// The byte range `[ptr, ptr+len)` if it lies inside guest memory.
fn range(total: usize, ptr: i32, len: i32) -> Result<std::ops::Range<usize>, Status> {
    let start = u64::from(ptr as u32);
    let end = start + u64::from(len as u32);
    if end > total as u64 {
        return Err(Status::InvalidMemoryAccess);
    }
    Ok(start as usize..end as usize)
}

pub fn read(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    let memory = memory(caller)?;
    let data = memory.data(caller.as_context());
    Ok(data[range(data.len(), ptr, len)?].to_vec())
}

/// A guest string. Invalid UTF-8 is replaced rather than refused: names in logs and header
/// keys are compared as text, and the ABI has no status for "not UTF-8".
pub fn read_string(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String, Status> {
    // Valid UTF-8, nearly always: the bytes read become the string without a second copy.
    Ok(String::from_utf8(read(caller, ptr, len)?)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned()))
}

pub fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let memory = memory(caller)?;
    let data = memory.data_mut(caller.as_context_mut());
    let target = range(data.len(), ptr, bytes.len() as i32)?;
    data[target].copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: i32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the guest: allocated with the guest's own allocator, copied in, and the
/// pointer and size written to the out-parameters. Empty data is `(0, 0)` with no allocation.
pub fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    ptr_out: i32,
    size_out: i32,
) -> CallResult {
    if bytes.is_empty() {
        write_u32(caller, ptr_out, 0)?;
        write_u32(caller, size_out, 0)?;
        return Ok(());
    }
    let size = i32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    // Taken out for the call rather than cloned (a clone copies the function's type); a guest
    // whose allocator itself asks the host for data gets INVALID_MEMORY_ACCESS there.
    let allocator = caller
        .data_mut()
        .allocator
        .take()
        .ok_or(Status::InvalidMemoryAccess)?;
    // The allocator may grow memory: nothing borrowed from memory survives this call.
    let pointer = allocator.call(&mut *caller, size);
    caller.data_mut().allocator = Some(allocator);
    let pointer = pointer.map_err(CallError::Trap)?;
    if pointer == 0 {
        return Err(Status::InvalidMemoryAccess.into());
    }
    write(caller, pointer, bytes)?;
    write_u32(caller, ptr_out, pointer as u32)?;
    write_u32(caller, size_out, bytes.len() as u32)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_in_64_bit() {
        assert_eq!(range(100, 0, 100), Ok(0..100));
        assert_eq!(range(100, 100, 0), Ok(100..100));
        assert_eq!(range(100, 90, 11), Err(Status::InvalidMemoryAccess));
        // Lengths and pointers are unsigned: -1 is 4 GiB, never a negative offset.
        assert_eq!(range(100, -1, 1), Err(Status::InvalidMemoryAccess));
        assert_eq!(range(100, 1, -1), Err(Status::InvalidMemoryAccess));
        assert_eq!(range(usize::MAX, -1, -1), Ok(0xffff_ffff..0x1_ffff_fffe));
    }
}

//! Checked arithmetic on offsets and lengths, and bounds-checked copies
//! between buffers: the only places where the engine does either.

use crate::EngineError;

fn overflow(what: &str) -> EngineError {
    EngineError::Internal(format!("arithmetic overflow in {what}"))
}

pub(crate) fn add(a: u64, b: u64) -> Result<u64, EngineError> {
    a.checked_add(b).ok_or_else(|| overflow("add"))
}

pub(crate) fn sub(a: u64, b: u64) -> Result<u64, EngineError> {
    a.checked_sub(b).ok_or_else(|| overflow("sub"))
}

pub(crate) fn mul(a: u64, b: u64) -> Result<u64, EngineError> {
    a.checked_mul(b).ok_or_else(|| overflow("mul"))
}

pub(crate) fn div(a: u64, b: u64) -> Result<u64, EngineError> {
    a.checked_div(b).ok_or_else(|| overflow("div"))
}

pub(crate) fn to_usize(value: u64) -> Result<usize, EngineError> {
    usize::try_from(value).map_err(|_| overflow("usize conversion"))
}

pub(crate) fn to_u64(value: usize) -> Result<u64, EngineError> {
    u64::try_from(value).map_err(|_| overflow("u64 conversion"))
}

/// Copies `src` into `dst` at `at`.
pub(crate) fn copy_into(dst: &mut [u8], at: usize, src: &[u8]) -> Result<(), EngineError> {
    let end = at.checked_add(src.len()).ok_or_else(|| overflow("copy"))?;
    let len = dst.len();
    let target = dst
        .get_mut(at..end)
        .ok_or_else(|| EngineError::Internal(format!("copy of {end} bytes into a buffer of {len}")))?;
    target.copy_from_slice(src);
    Ok(())
}

/// Fills `dst[from..to]` with zeros (nothing when the range is empty).
pub(crate) fn zero(dst: &mut [u8], from: usize, to: usize) -> Result<(), EngineError> {
    if from >= to {
        return Ok(());
    }
    let len = dst.len();
    let target = dst
        .get_mut(from..to)
        .ok_or_else(|| EngineError::Internal(format!("zeroing {from}..{to} of a buffer of {len}")))?;
    target.fill(0);
    Ok(())
}

/// The bytes `src[from..to]`.
pub(crate) fn slice(src: &[u8], from: usize, to: usize) -> Result<&[u8], EngineError> {
    src.get(from..to)
        .ok_or_else(|| EngineError::Internal(format!("reading {from}..{to} of a buffer of {}", src.len())))
}

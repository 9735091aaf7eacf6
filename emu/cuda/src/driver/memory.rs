//! Device memory (allocation, copies, memsets, the free figure) and page-locked host memory.
//!
//! Every device range is checked against the live allocations (`crate::memory`): a copy or
//! memset that leaves one allocation is refused with `CUDA_ERROR_INVALID_VALUE` and a line
//! naming the range, before anything is written.

use std::ffi::c_void;

use super::errors::*;
use super::state::{Api, Out, Refusal, api, memory, state};
use super::{CUdeviceptr, CUstream};
use crate::error::EmuError;
use crate::memory::TOTAL_BYTES;

/// Which context a call works in: the current one, or its stream's.
#[derive(Clone, Copy)]
enum On {
    Current,
    Stream(CUstream),
}

impl On {
    /// The context, refused after a kernel fault there.
    fn context(self) -> Result<usize, Refusal> {
        let st = state()?;
        match self {
            On::Current => st.current_usable(),
            On::Stream(s) => st.stream_context(s),
        }
    }
}

fn memory_refusal(e: EmuError) -> Refusal {
    match e {
        EmuError::OutOfMemory { .. } => Refusal::quiet(CUDA_ERROR_OUT_OF_MEMORY),
        e => Refusal::invalid(e.to_string()),
    }
}

fn alloc(dptr: *mut CUdeviceptr, bytes: usize, on: On) -> Api {
    let out = Out::new(dptr, "dptr")?;
    let ctx = on.context()?;
    let ptr = memory().alloc(bytes as u64).map_err(memory_refusal)?;
    state()?.allocations.insert(ptr, ctx);
    // SAFETY: `dptr`, non-null, points at a writable CUdeviceptr by the contract of the
    // exported functions that call this.
    unsafe { out.set(ptr) };
    Ok(())
}

fn free(dptr: CUdeviceptr, on: On) -> Api {
    if dptr == 0 {
        return Ok(());
    }
    {
        let mut st = state()?;
        if let On::Stream(s) = on {
            st.stream_owner(s)?;
        }
        if st.allocations.remove(&dptr).is_none() {
            return Err(Refusal::invalid(format!(
                "{dptr:#x} is not the start of a live allocation (freed twice?)"
            )));
        }
    }
    memory().free(dptr).map_err(memory_refusal)
}

/// Allocates `bytesize` bytes (zero-filled) in the current context. 0 bytes is
/// `CUDA_ERROR_INVALID_VALUE`, as documented for the driver.
///
/// # Safety
/// `dptr` must be null or point at a writable `CUdeviceptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    api("cuMemAlloc_v2", || {
        if bytesize == 0 {
            return Err(Refusal::invalid("0 bytes asked"));
        }
        alloc(dptr, bytesize, On::Current)
    })
}

/// Allocates `bytesize` bytes (zero-filled, possibly 0) in `stream`'s context, at once.
///
/// # Safety
/// `dptr` must be null or point at a writable `CUdeviceptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemAllocAsync", || {
        alloc(dptr, bytesize, On::Stream(stream))
    })
}

/// Frees the allocation starting at `dptr` (0 is a no-op). Anything else is
/// `CUDA_ERROR_INVALID_VALUE`, a second free included.
///
/// # Safety
/// None beyond the C ABI: `dptr` is a device address, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    api("cuMemFree_v2", || free(dptr, On::Current))
}

/// As [`cuMemFree_v2`], at once, after checking `stream`.
///
/// # Safety
/// None beyond the C ABI: `dptr` is a device address, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    api("cuMemFreeAsync", || free(dptr, On::Stream(stream)))
}

/// # Safety
/// `src` must be null or point at `bytes` readable bytes.
unsafe fn htod(dst: CUdeviceptr, src: *const c_void, bytes: usize, on: On) -> Api {
    on.context()?;
    if bytes == 0 {
        return Ok(());
    }
    if src.is_null() {
        return Err(Refusal::invalid("srcHost is a null pointer"));
    }
    // SAFETY: `src` is non-null and, by the caller's contract, has `bytes` readable bytes,
    // which are not device memory (a separate heap) and so are not written meanwhile.
    let data = unsafe { std::slice::from_raw_parts(src.cast::<u8>(), bytes) };
    memory().write(dst, data).map_err(memory_refusal)
}

/// # Safety
/// `dst` must be null or point at `bytes` writable bytes.
unsafe fn dtoh(dst: *mut c_void, src: CUdeviceptr, bytes: usize, on: On) -> Api {
    on.context()?;
    if bytes == 0 {
        return Ok(());
    }
    if dst.is_null() {
        return Err(Refusal::invalid("dstHost is a null pointer"));
    }
    // SAFETY: `dst` is non-null and, by the caller's contract, has `bytes` writable bytes that
    // nothing else uses during the call.
    let out = unsafe { std::slice::from_raw_parts_mut(dst.cast::<u8>(), bytes) };
    memory().read(src, out).map_err(memory_refusal)
}

fn dtod(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, on: On) -> Api {
    on.context()?;
    if bytes == 0 {
        return Ok(());
    }
    memory().copy(dst, src, bytes).map_err(memory_refusal)
}

/// Copies `byte_count` bytes from the host to the device.
///
/// # Safety
/// `src_host` must point at `byte_count` readable bytes (or be anything when it is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(
    dst_device: CUdeviceptr,
    src_host: *const c_void,
    byte_count: usize,
) -> CUresult {
    // SAFETY: the caller's contract, as documented above.
    api("cuMemcpyHtoD_v2", || unsafe {
        htod(dst_device, src_host, byte_count, On::Current)
    })
}

/// As [`cuMemcpyHtoD_v2`], complete on return.
///
/// # Safety
/// `src_host` must point at `byte_count` readable bytes (or be anything when it is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst_device: CUdeviceptr,
    src_host: *const c_void,
    byte_count: usize,
    stream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, as documented above.
    api("cuMemcpyHtoDAsync_v2", || unsafe {
        htod(dst_device, src_host, byte_count, On::Stream(stream))
    })
}

/// Copies `byte_count` bytes from the device to the host.
///
/// # Safety
/// `dst_host` must point at `byte_count` writable bytes (or be anything when it is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(
    dst_host: *mut c_void,
    src_device: CUdeviceptr,
    byte_count: usize,
) -> CUresult {
    // SAFETY: the caller's contract, as documented above.
    api("cuMemcpyDtoH_v2", || unsafe {
        dtoh(dst_host, src_device, byte_count, On::Current)
    })
}

/// As [`cuMemcpyDtoH_v2`], complete on return.
///
/// # Safety
/// `dst_host` must point at `byte_count` writable bytes (or be anything when it is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst_host: *mut c_void,
    src_device: CUdeviceptr,
    byte_count: usize,
    stream: CUstream,
) -> CUresult {
    // SAFETY: the caller's contract, as documented above.
    api("cuMemcpyDtoHAsync_v2", || unsafe {
        dtoh(dst_host, src_device, byte_count, On::Stream(stream))
    })
}

/// Copies `byte_count` bytes within device memory (the ranges may be in different
/// allocations; overlapping ranges copy as if through a temporary).
///
/// # Safety
/// None beyond the C ABI: the addresses are device addresses, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoD_v2(
    dst_device: CUdeviceptr,
    src_device: CUdeviceptr,
    byte_count: usize,
) -> CUresult {
    api("cuMemcpyDtoD_v2", || {
        dtod(dst_device, src_device, byte_count, On::Current)
    })
}

/// As [`cuMemcpyDtoD_v2`], complete on return.
///
/// # Safety
/// None beyond the C ABI: the addresses are device addresses, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst_device: CUdeviceptr,
    src_device: CUdeviceptr,
    byte_count: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemcpyDtoDAsync_v2", || {
        dtod(dst_device, src_device, byte_count, On::Stream(stream))
    })
}

/// Sets `count` elements of `pattern.len()` bytes each, starting at `dst` (which must be
/// aligned to that size), to `pattern`.
fn memset(dst: CUdeviceptr, pattern: &[u8], count: usize, on: On) -> Api {
    on.context()?;
    let size = pattern.len();
    if !dst.is_multiple_of(size as u64) {
        return Err(Refusal::invalid(format!(
            "{dst:#x} is not aligned to the {size}-byte elements set"
        )));
    }
    let bytes = count
        .checked_mul(size)
        .ok_or_else(|| Refusal::invalid(format!("{count} elements of {size} bytes overflow")))?;
    if bytes == 0 {
        return Ok(());
    }
    let mut mem = memory();
    if size == 1 {
        return mem.fill(dst, pattern[0], bytes).map_err(memory_refusal);
    }
    let out = mem.slice_mut(dst, bytes).map_err(memory_refusal)?;
    for chunk in out.chunks_exact_mut(size) {
        chunk.copy_from_slice(pattern);
    }
    Ok(())
}

/// Sets `n` bytes at `dst_device` to `uc`.
///
/// # Safety
/// None beyond the C ABI: the address is a device address, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8_v2(dst_device: CUdeviceptr, uc: u8, n: usize) -> CUresult {
    api("cuMemsetD8_v2", || {
        memset(dst_device, &[uc], n, On::Current)
    })
}

/// Sets `n` 16-bit values at `dst_device` (2-byte aligned) to `us`.
///
/// # Safety
/// None beyond the C ABI: the address is a device address, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD16_v2(dst_device: CUdeviceptr, us: u16, n: usize) -> CUresult {
    api("cuMemsetD16_v2", || {
        memset(dst_device, &us.to_ne_bytes(), n, On::Current)
    })
}

/// Sets `n` 32-bit values at `dst_device` (4-byte aligned) to `ui`.
///
/// # Safety
/// None beyond the C ABI: the address is a device address, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD32_v2(dst_device: CUdeviceptr, ui: u32, n: usize) -> CUresult {
    api("cuMemsetD32_v2", || {
        memset(dst_device, &ui.to_ne_bytes(), n, On::Current)
    })
}

/// As [`cuMemsetD8_v2`], complete on return.
///
/// # Safety
/// None beyond the C ABI: the address is a device address, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD8Async(
    dst_device: CUdeviceptr,
    uc: u8,
    n: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemsetD8Async", || {
        memset(dst_device, &[uc], n, On::Stream(stream))
    })
}

/// As [`cuMemsetD16_v2`], complete on return.
///
/// # Safety
/// None beyond the C ABI: the address is a device address, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD16Async(
    dst_device: CUdeviceptr,
    us: u16,
    n: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemsetD16Async", || {
        memset(dst_device, &us.to_ne_bytes(), n, On::Stream(stream))
    })
}

/// As [`cuMemsetD32_v2`], complete on return.
///
/// # Safety
/// None beyond the C ABI: the address is a device address, checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemsetD32Async(
    dst_device: CUdeviceptr,
    ui: u32,
    n: usize,
    stream: CUstream,
) -> CUresult {
    api("cuMemsetD32Async", || {
        memset(dst_device, &ui.to_ne_bytes(), n, On::Stream(stream))
    })
}

/// Free and total device memory: 16 GiB in all, shared by every emulated device, less the
/// live allocations of all.
///
/// # Safety
/// `free` and `total` must be null or point at writable `size_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    api("cuMemGetInfo_v2", || {
        let (free, total) = (Out::new(free, "free")?, Out::new(total, "total")?);
        On::Current.context()?;
        let used = memory().used();
        let as_usize = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
        // SAFETY: the caller's contract, as documented above.
        unsafe {
            free.set(as_usize(TOTAL_BYTES.saturating_sub(used)));
            total.set(as_usize(TOTAL_BYTES));
        }
        Ok(())
    })
}

/// Page-locked host memory is plain host memory here: page-aligned and zero-filled.
fn host_alloc(pp: *mut *mut c_void, bytesize: usize) -> Api {
    let out = Out::new(pp, "pp")?;
    state()?.current()?;
    let layout = std::alloc::Layout::from_size_align(bytesize.max(1), 4096)
        .map_err(|e| Refusal::invalid(format!("{bytesize} bytes: {e}")))?;
    if bytesize == 0 {
        return Err(Refusal::invalid("0 bytes asked"));
    }
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return Err(Refusal::quiet(CUDA_ERROR_OUT_OF_MEMORY));
    }
    state()?.host.insert(p as usize, layout);
    // SAFETY: `pp`, non-null, points at a writable pointer by the contract of the exported
    // functions that call this.
    unsafe { out.set(p.cast::<c_void>()) };
    Ok(())
}

/// Allocates `bytesize` bytes of host memory (any flags).
///
/// # Safety
/// `pp` must be null or point at a writable `void *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    bytesize: usize,
    _flags: u32,
) -> CUresult {
    api("cuMemHostAlloc", || host_alloc(pp, bytesize))
}

/// As [`cuMemHostAlloc`] with no flags.
///
/// # Safety
/// `pp` must be null or point at a writable `void *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytesize: usize) -> CUresult {
    api("cuMemAllocHost_v2", || host_alloc(pp, bytesize))
}

/// Frees memory of [`cuMemHostAlloc`]; any other pointer is `CUDA_ERROR_INVALID_VALUE`.
///
/// # Safety
/// `p` must not be used after this call when it came from [`cuMemHostAlloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    api("cuMemFreeHost", || {
        let layout = state()?
            .host
            .remove(&(p as usize))
            .ok_or_else(|| Refusal::invalid(format!("{p:?} is not a live cuMemHostAlloc block")))?;
        // SAFETY: `p` was returned by `alloc_zeroed` with this layout (it was in the table)
        // and is removed from the table, so it is freed once.
        unsafe { std::alloc::dealloc(p.cast::<u8>(), layout) };
        Ok(())
    })
}

//! Primary contexts (the only contexts there are) and each thread's current context.

use super::device::device;
use super::errors::*;
use super::state::{
    Api, CURRENT, Out, Refusal, api, config, context_device, context_handle, free_all, state,
};
use super::{CUcontext, CUdevice};

/// Retains device `dev`'s primary context, creating it (empty, without error) when it has no
/// other user. Does not make it current.
///
/// # Safety
/// `pctx` must be null or point at a writable `CUcontext`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxRetain", || {
        let out = Out::new(pctx, "pctx")?;
        let (d, _) = device(dev)?;
        let mut st = state()?;
        st.contexts[d].refs += 1;
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(context_handle(d) as CUcontext) };
        Ok(())
    })
}

/// Releases device `dev`'s primary context; the last release destroys it: its memory, modules,
/// streams and events are freed and a sticky error is forgotten.
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxRelease_v2", || release(dev))
}

/// The name of [`cuDevicePrimaryCtxRelease_v2`] before CUDA 11 (the same ABI).
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxRelease", || release(dev))
}

fn release(dev: CUdevice) -> Api {
    let (d, _) = device(dev)?;
    let mut st = state()?;
    let ctx = &mut st.contexts[d];
    if ctx.refs == 0 {
        return Err(Refusal::new(
            CUDA_ERROR_INVALID_CONTEXT,
            format!("device {dev}'s primary context is not retained"),
        ));
    }
    ctx.refs -= 1;
    if ctx.refs == 0 {
        let freed = st.clear_context(d);
        drop(st);
        free_all(&freed);
    }
    Ok(())
}

/// Destroys everything in device `dev`'s primary context (memory, modules, streams, events)
/// and forgets its sticky error; its users keep it retained. A test that provoked a kernel
/// fault recovers with this.
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxReset_v2", || reset(dev))
}

/// The name of [`cuDevicePrimaryCtxReset_v2`] before CUDA 11 (the same ABI).
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    api("cuDevicePrimaryCtxReset", || reset(dev))
}

fn reset(dev: CUdevice) -> Api {
    let (d, _) = device(dev)?;
    let mut st = state()?;
    let freed = st.clear_context(d);
    drop(st);
    free_all(&freed);
    Ok(())
}

/// Whether device `dev`'s primary context is alive (retained), and its flags (always 0).
///
/// # Safety
/// `flags` and `active` must be null or point at a writable `unsigned int` and `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxGetState(
    dev: CUdevice,
    flags: *mut u32,
    active: *mut i32,
) -> CUresult {
    api("cuDevicePrimaryCtxGetState", || {
        let (flags, active) = (Out::new(flags, "flags")?, Out::new(active, "active")?);
        let (d, _) = device(dev)?;
        let st = state()?;
        // SAFETY: the caller's contract, as documented above.
        unsafe {
            flags.set(0);
            active.set(i32::from(st.contexts[d].refs > 0));
        }
        Ok(())
    })
}

/// Accepts any scheduling flags (they change nothing here).
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxSetFlags_v2(dev: CUdevice, _flags: u32) -> CUresult {
    api("cuDevicePrimaryCtxSetFlags_v2", || device(dev).map(drop))
}

/// Makes `ctx` this thread's current context (replacing the top of its stack); null unbinds.
///
/// # Safety
/// None beyond the C ABI: `ctx` is only compared, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: CUcontext) -> CUresult {
    api("cuCtxSetCurrent", || {
        if ctx.is_null() {
            CURRENT.with(|c| c.borrow_mut().pop());
            return Ok(());
        }
        let h = live_context(ctx)?;
        CURRENT.with(|c| {
            let mut stack = c.borrow_mut();
            stack.pop();
            stack.push(h);
        });
        Ok(())
    })
}

/// Pushes `ctx` on this thread's context stack, making it current.
///
/// # Safety
/// None beyond the C ABI: `ctx` is only compared, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPushCurrent_v2(ctx: CUcontext) -> CUresult {
    api("cuCtxPushCurrent_v2", || {
        let h = live_context(ctx)?;
        CURRENT.with(|c| c.borrow_mut().push(h));
        Ok(())
    })
}

/// Pops this thread's current context, storing it in `*pctx` when `pctx` is not null.
///
/// # Safety
/// `pctx` must be null or point at a writable `CUcontext`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxPopCurrent_v2(pctx: *mut CUcontext) -> CUresult {
    api("cuCtxPopCurrent_v2", || {
        config()?;
        let top = CURRENT
            .with(|c| c.borrow_mut().pop())
            .ok_or_else(|| Refusal::new(CUDA_ERROR_INVALID_CONTEXT, "no context is current"))?;
        if let Ok(out) = Out::new(pctx, "pctx") {
            // SAFETY: the caller's contract, as documented above.
            unsafe { out.set(top as CUcontext) };
        }
        Ok(())
    })
}

/// This thread's current context, or null.
///
/// # Safety
/// `pctx` must be null or point at a writable `CUcontext`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut CUcontext) -> CUresult {
    api("cuCtxGetCurrent", || {
        let out = Out::new(pctx, "pctx")?;
        config()?;
        let top = CURRENT.with(|c| c.borrow().last().copied()).unwrap_or(0);
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(top as CUcontext) };
        Ok(())
    })
}

/// The device of the current context.
///
/// # Safety
/// `device_out` must be null or point at a writable `CUdevice`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetDevice(device_out: *mut CUdevice) -> CUresult {
    api("cuCtxGetDevice", || {
        let out = Out::new(device_out, "device")?;
        let d = state()?.current()?;
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(i32::try_from(d).unwrap_or(i32::MAX)) };
        Ok(())
    })
}

/// Waits for the current context's work: none is ever pending, so this only reports a sticky
/// error.
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    api("cuCtxSynchronize", || state()?.current_usable().map(drop))
}

/// Accepts any flags for the current context (scheduling changes nothing here).
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetFlags(_flags: u32) -> CUresult {
    api("cuCtxSetFlags", || state()?.current().map(drop))
}

/// Accepts any cache preference for the current context.
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxSetCacheConfig(_config: u32) -> CUresult {
    api("cuCtxSetCacheConfig", || state()?.current().map(drop))
}

/// The current context's cache preference: `CU_FUNC_CACHE_PREFER_NONE`.
///
/// # Safety
/// `pconfig` must be null or point at a writable `CUfunc_cache`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetCacheConfig(pconfig: *mut u32) -> CUresult {
    api("cuCtxGetCacheConfig", || {
        let out = Out::new(pconfig, "pconfig")?;
        state()?.current()?;
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(0) };
        Ok(())
    })
}

/// Stream priorities: 0 (least) to -5 (greatest), as on the GPUs emulated. Either pointer may
/// be null.
///
/// # Safety
/// `least` and `greatest` must each be null or point at a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut i32,
    greatest: *mut i32,
) -> CUresult {
    api("cuCtxGetStreamPriorityRange", || {
        state()?.current()?;
        // SAFETY: the caller's contract, as documented above.
        unsafe {
            if let Ok(out) = Out::new(least, "least") {
                out.set(0);
            }
            if let Ok(out) = Out::new(greatest, "greatest") {
                out.set(-5);
            }
        }
        Ok(())
    })
}

/// The handle of a retained primary context, or `CUDA_ERROR_INVALID_CONTEXT`.
fn live_context(ctx: CUcontext) -> Result<usize, Refusal> {
    let st = state()?;
    let h = ctx as usize;
    match context_device(h, st.contexts.len()) {
        Some(d) if st.contexts[d].refs > 0 => Ok(h),
        Some(_) => Err(Refusal::new(
            CUDA_ERROR_INVALID_CONTEXT,
            format!("context {h:#x} has been released by all its users"),
        )),
        None => Err(Refusal::new(
            CUDA_ERROR_INVALID_CONTEXT,
            format!("{h:#x} is not a context"),
        )),
    }
}

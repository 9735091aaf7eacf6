//! Streams and events. Work is complete when issued, so a stream is always idle and an event
//! is complete once recorded; what they still do is check their handles, report a sticky
//! error, and (events) time the host between two records.

use std::ffi::c_void;
use std::time::Instant;

use super::errors::*;
use super::state::{Api, Event, Out, Refusal, State, Stream, api, state};
use super::{CUevent, CUstream};

/// `CU_STREAM_NON_BLOCKING`, the one stream flag.
const STREAM_NON_BLOCKING: u32 = 1;
/// `CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS`.
const EVENT_FLAGS: u32 = 0x7;
const EVENT_DISABLE_TIMING: u32 = 0x2;

fn create_stream(ph_stream: *mut CUstream, flags: u32) -> Api {
    let out = Out::new(ph_stream, "phStream")?;
    if flags & !STREAM_NON_BLOCKING != 0 {
        return Err(Refusal::invalid(format!("stream flags {flags:#x}")));
    }
    let mut st = state()?;
    let ctx = st.current_usable()?;
    let h = st.new_handle();
    st.streams.insert(h, Stream { ctx });
    // SAFETY: `ph_stream`, non-null, points at a writable CUstream by the contract of the
    // exported functions that call this.
    unsafe { out.set(h as CUstream) };
    Ok(())
}

/// Creates a stream in the current context (flags: 0 or `CU_STREAM_NON_BLOCKING`).
///
/// # Safety
/// `ph_stream` must be null or point at a writable `CUstream`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(ph_stream: *mut CUstream, flags: u32) -> CUresult {
    api("cuStreamCreate", || create_stream(ph_stream, flags))
}

/// As [`cuStreamCreate`]; the priority changes nothing.
///
/// # Safety
/// `ph_stream` must be null or point at a writable `CUstream`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    ph_stream: *mut CUstream,
    flags: u32,
    _priority: i32,
) -> CUresult {
    api("cuStreamCreateWithPriority", || {
        create_stream(ph_stream, flags)
    })
}

fn destroy_stream(stream: CUstream) -> Api {
    let h = stream as usize;
    state()?
        .streams
        .remove(&h)
        .map(drop)
        .ok_or_else(|| Refusal::handle("stream (a default stream cannot be destroyed)", h))
}

/// Destroys a stream made by [`cuStreamCreate`] (also after a kernel fault).
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy_v2(stream: CUstream) -> CUresult {
    api("cuStreamDestroy_v2", || destroy_stream(stream))
}

/// The name of [`cuStreamDestroy_v2`] before CUDA 4 (the same ABI).
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamDestroy(stream: CUstream) -> CUresult {
    api("cuStreamDestroy", || destroy_stream(stream))
}

/// Waits for the stream: it is always idle, so this checks it and reports a sticky error.
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamSynchronize(stream: CUstream) -> CUresult {
    api("cuStreamSynchronize", || {
        state()?.stream_context(stream).map(drop)
    })
}

/// Whether the stream is idle: always, so `CUDA_SUCCESS` (or a sticky error).
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamQuery(stream: CUstream) -> CUresult {
    api("cuStreamQuery", || {
        state()?.stream_context(stream).map(drop)
    })
}

/// Orders `stream` after `event`'s record: already so, as all work is complete when issued.
///
/// # Safety
/// None beyond the C ABI: the handles are checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamWaitEvent(
    stream: CUstream,
    event: CUevent,
    flags: u32,
) -> CUresult {
    api("cuStreamWaitEvent", || {
        if flags > 1 {
            return Err(Refusal::invalid(format!("wait flags {flags:#x}")));
        }
        let st = state()?;
        st.stream_context(stream)?;
        let e = event_of(&st, event)?;
        st.usable(e.ctx)
    })
}

/// Calls `func(user_data)` on this thread before returning (the stream has nothing pending).
///
/// # Safety
/// `func` must be safe to call with `user_data`, as for the driver.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuLaunchHostFunc(
    stream: CUstream,
    func: Option<unsafe extern "C" fn(*mut c_void)>,
    user_data: *mut c_void,
) -> CUresult {
    api("cuLaunchHostFunc", || {
        let func = func.ok_or_else(|| Refusal::invalid("fn is null"))?;
        state()?.stream_context(stream)?;
        // SAFETY: the caller's contract, as documented above; no lock is held, so the
        // function may call the API (which the driver forbids, but does not enforce).
        unsafe { func(user_data) };
        Ok(())
    })
}

fn event_of(st: &State, event: CUevent) -> Result<&Event, Refusal> {
    let h = event as usize;
    st.events.get(&h).ok_or_else(|| Refusal::handle("event", h))
}

/// Creates an event in the current context (flags: any of `CU_EVENT_BLOCKING_SYNC`,
/// `CU_EVENT_DISABLE_TIMING`, `CU_EVENT_INTERPROCESS`).
///
/// # Safety
/// `ph_event` must be null or point at a writable `CUevent`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(ph_event: *mut CUevent, flags: u32) -> CUresult {
    api("cuEventCreate", || {
        let out = Out::new(ph_event, "phEvent")?;
        if flags & !EVENT_FLAGS != 0 {
            return Err(Refusal::invalid(format!("event flags {flags:#x}")));
        }
        let mut st = state()?;
        let ctx = st.current_usable()?;
        let h = st.new_handle();
        st.events.insert(
            h,
            Event {
                ctx,
                timing: flags & EVENT_DISABLE_TIMING == 0,
                recorded: None,
            },
        );
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(h as CUevent) };
        Ok(())
    })
}

/// Records `event` on `stream` (which must be of the event's context): complete at once, at
/// the host's present time.
///
/// # Safety
/// None beyond the C ABI: the handles are checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventRecord(event: CUevent, stream: CUstream) -> CUresult {
    api("cuEventRecord", || {
        let mut st = state()?;
        let ctx = st.stream_context(stream)?;
        let h = event as usize;
        let e = st
            .events
            .get_mut(&h)
            .ok_or_else(|| Refusal::handle("event", h))?;
        if e.ctx != ctx {
            return Err(Refusal::new(
                CUDA_ERROR_INVALID_HANDLE,
                format!("event {h:#x} and the stream belong to different contexts"),
            ));
        }
        e.recorded = Some(Instant::now());
        Ok(())
    })
}

fn event_done(event: CUevent) -> Api {
    let st = state()?;
    let e = event_of(&st, event)?;
    st.usable(e.ctx)
}

/// Whether `event`'s work is done: always (or a sticky error).
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventQuery(event: CUevent) -> CUresult {
    api("cuEventQuery", || event_done(event))
}

/// Waits for `event`: returns at once (or a sticky error).
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventSynchronize(event: CUevent) -> CUresult {
    api("cuEventSynchronize", || event_done(event))
}

/// Milliseconds of host time between the records of `start` and `end`. An event not yet
/// recorded or made with `CU_EVENT_DISABLE_TIMING` is `CUDA_ERROR_INVALID_HANDLE`, as for the
/// driver.
///
/// # Safety
/// `ms` must be null or point at a writable `float`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime(
    ms: *mut f32,
    start: CUevent,
    end: CUevent,
) -> CUresult {
    api("cuEventElapsedTime", || {
        let out = Out::new(ms, "pMilliseconds")?;
        let st = state()?;
        let (s, e) = (event_of(&st, start)?, event_of(&st, end)?);
        st.usable(s.ctx)?;
        st.usable(e.ctx)?;
        if !s.timing || !e.timing {
            return Err(Refusal::new(
                CUDA_ERROR_INVALID_HANDLE,
                "an event made with CU_EVENT_DISABLE_TIMING has no time",
            ));
        }
        let (Some(t0), Some(t1)) = (s.recorded, e.recorded) else {
            return Err(Refusal::new(
                CUDA_ERROR_INVALID_HANDLE,
                "an event that was never recorded has no time",
            ));
        };
        let millis = match t1.checked_duration_since(t0) {
            Some(d) => d.as_secs_f64() * 1e3,
            None => -(t0.duration_since(t1).as_secs_f64() * 1e3),
        };
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(millis as f32) };
        Ok(())
    })
}

fn destroy_event(event: CUevent) -> Api {
    let h = event as usize;
    state()?
        .events
        .remove(&h)
        .map(drop)
        .ok_or_else(|| Refusal::handle("event", h))
}

/// Destroys an event (also after a kernel fault).
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy_v2(event: CUevent) -> CUresult {
    api("cuEventDestroy_v2", || destroy_event(event))
}

/// The name of [`cuEventDestroy_v2`] before CUDA 4 (the same ABI).
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventDestroy(event: CUevent) -> CUresult {
    api("cuEventDestroy", || destroy_event(event))
}

//! The process-wide state behind the API: the configuration read at `cuInit`, the contexts,
//! the handle tables, the device memory, each thread's current context, and the counters.
//!
//! Two locks, always taken in this order and never the other way: [`State`] (handles,
//! contexts; held briefly) then [`Memory`] (held for a copy or for a whole launch, without
//! the first, so that the handle calls of other threads go on while a kernel runs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use super::errors::*;
use crate::memory::Memory;
use crate::ptx::{Kernel, Module};

/// A compute capability the emulator can stand for, with the figures of its GPU (H100 SXM for
/// 9.0, A100 SXM for 8.0) that the device attributes report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    pub major: i32,
    pub minor: i32,
}

impl Arch {
    pub const SM_90: Arch = Arch { major: 9, minor: 0 };
    pub const SM_80: Arch = Arch { major: 8, minor: 0 };

    /// The value of `CONVOY_EMU_ARCH`: unset or `sm_90` is 9.0, `sm_80` is 8.0.
    pub fn from_env_value(value: Option<&str>) -> Result<Arch, String> {
        match value.map(str::trim) {
            None | Some("") | Some("sm_90") => Ok(Arch::SM_90),
            Some("sm_80") => Ok(Arch::SM_80),
            Some(other) => Err(format!(
                "CONVOY_EMU_ARCH={other} is not one the emulator knows (sm_90 or sm_80)"
            )),
        }
    }

    fn is_90(self) -> bool {
        self == Arch::SM_90
    }
    pub(crate) fn multiprocessors(self) -> i32 {
        if self.is_90() { 132 } else { 108 }
    }
    /// kHz.
    pub(crate) fn clock_khz(self) -> i32 {
        if self.is_90() { 1_980_000 } else { 1_410_000 }
    }
    /// kHz.
    pub(crate) fn memory_clock_khz(self) -> i32 {
        if self.is_90() { 2_619_000 } else { 1_215_000 }
    }
    pub(crate) fn l2_bytes(self) -> i32 {
        if self.is_90() { 50 << 20 } else { 40 << 20 }
    }
    pub(crate) fn shared_per_multiprocessor(self) -> i32 {
        if self.is_90() { 228 << 10 } else { 164 << 10 }
    }
    /// The most shared memory one block may have after opting in
    /// (`cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)`).
    pub(crate) fn shared_optin(self) -> i32 {
        if self.is_90() { 227 << 10 } else { 163 << 10 }
    }
}

/// Shared memory per block without opting in.
pub(crate) const SHARED_PER_BLOCK: i32 = 48 << 10;

/// What `cuInit` found in the environment.
#[derive(Debug)]
pub(crate) struct Config {
    pub arch: Arch,
    /// The emulated devices this process sees, by their physical index: the ordinal `i` of the
    /// API is `visible[i]`.
    pub visible: Vec<u32>,
}

/// The most devices `CONVOY_EMU_DEVICES` may ask for.
const MAX_DEVICES: u32 = 16;

impl Config {
    fn from_env() -> Result<Config, String> {
        let var = |name: &str| std::env::var(name).ok();
        let arch = Arch::from_env_value(var("CONVOY_EMU_ARCH").as_deref())?;
        let devices = match var("CONVOY_EMU_DEVICES") {
            None => 1,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_DEVICES).contains(n))
                .ok_or_else(|| {
                    format!("CONVOY_EMU_DEVICES={v} is not a device count from 1 to {MAX_DEVICES}")
                })?,
        };
        Ok(Config {
            arch,
            visible: visible_devices(devices, var("CUDA_VISIBLE_DEVICES").as_deref()),
        })
    }
}

/// The devices `CUDA_VISIBLE_DEVICES` leaves visible of `physical` ones, in its order, as the
/// driver reads it: the list up to its first entry that is not a present, not yet listed
/// index (so `""` hides every device); unset shows all.
pub fn visible_devices(physical: u32, list: Option<&str>) -> Vec<u32> {
    let Some(list) = list else {
        return (0..physical).collect();
    };
    let mut visible = Vec::new();
    for entry in list.split(',') {
        match entry.trim().parse::<u32>() {
            Ok(i) if i < physical && !visible.contains(&i) => visible.push(i),
            _ => break,
        }
    }
    visible
}

static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();

/// The configuration, read from the environment on the first call (`cuInit`).
pub(crate) fn init_config() -> &'static Result<Config, String> {
    CONFIG.get_or_init(Config::from_env)
}

/// The configuration after a successful `cuInit`.
pub(crate) fn config() -> Result<&'static Config, Refusal> {
    match CONFIG.get() {
        Some(Ok(c)) if !c.visible.is_empty() => Ok(c),
        _ => Err(Refusal::new(
            CUDA_ERROR_NOT_INITIALIZED,
            "cuInit has not succeeded",
        )),
    }
}

/// A refused call: the code it returns and, for a caller's bug, the line stderr gets.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub code: CUresult,
    pub why: Option<String>,
}

impl Refusal {
    pub fn new(code: CUresult, why: impl Into<String>) -> Refusal {
        Refusal {
            code,
            why: Some(why.into()),
        }
    }

    /// A refusal that prints nothing (a sticky error, reported when it happened).
    pub fn quiet(code: CUresult) -> Refusal {
        Refusal { code, why: None }
    }

    pub fn invalid(why: impl Into<String>) -> Refusal {
        Refusal::new(CUDA_ERROR_INVALID_VALUE, why)
    }

    pub fn handle(what: &str, h: usize) -> Refusal {
        Refusal::new(
            CUDA_ERROR_INVALID_HANDLE,
            format!("{h:#x} is not a live {what}"),
        )
    }
}

pub(crate) type Api = Result<(), Refusal>;

/// Runs the body of the API call `call`: its refusal becomes its code (and a line on stderr),
/// and a panic `CUDA_ERROR_UNKNOWN` instead of unwinding into C.
pub(crate) fn api(call: &str, body: impl FnOnce() -> Api) -> CUresult {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(r)) => {
            if let Some(why) = r.why {
                eprintln!("convoy-cuda-emu: {call}: {why}");
            }
            r.code
        }
        Err(_) => {
            eprintln!("convoy-cuda-emu: {call}: the emulator panicked (above)");
            CUDA_ERROR_UNKNOWN
        }
    }
}

/// An out-parameter, checked non-null before the call does anything.
pub(crate) struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    pub fn new(p: *mut T, what: &str) -> Result<Out<T>, Refusal> {
        NonNull::new(p)
            .map(Out)
            .ok_or_else(|| Refusal::invalid(format!("{what} is a null pointer")))
    }

    /// The pointer, for a call that writes an array through it.
    pub fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }

    /// # Safety
    /// The pointer given to [`Out::new`] points at a writable, aligned `T` (the API's
    /// contract with its caller).
    pub unsafe fn set(self, value: T) {
        // SAFETY: the caller's contract, as documented above.
        unsafe { self.0.as_ptr().write(value) }
    }
}

/// The handle of device `d`'s primary context: fixed per device, as the driver's is.
const CONTEXT_BASE: usize = 0xc0_0000;
/// Where the other handles start (never reused, never a context's).
const HANDLE_BASE: usize = 0x1000_0000;

pub(crate) fn context_handle(device: usize) -> usize {
    CONTEXT_BASE + device * 0x100
}

/// The device whose primary context `handle` is, if it is one.
pub(crate) fn context_device(handle: usize, devices: usize) -> Option<usize> {
    let off = handle.checked_sub(CONTEXT_BASE)?;
    (off % 0x100 == 0 && off / 0x100 < devices).then_some(off / 0x100)
}

/// A device's primary context.
#[derive(Debug, Default)]
pub(crate) struct Context {
    /// `cuDevicePrimaryCtxRetain`s not yet released; alive while above 0.
    pub refs: u32,
    /// The error of a kernel fault, returned by every later call on this context.
    pub sticky: Option<CUresult>,
}

#[derive(Debug)]
pub(crate) struct Stream {
    pub ctx: usize,
}

#[derive(Debug)]
pub(crate) struct Event {
    pub ctx: usize,
    pub timing: bool,
    /// When it was last recorded: work is complete when issued, so recording is completing.
    pub recorded: Option<Instant>,
}

pub(crate) struct LoadedModule {
    pub ctx: usize,
    pub module: Module,
    /// The function handles given out, by kernel name (the same name gives the same handle).
    pub functions: HashMap<String, usize>,
}

#[derive(Debug)]
pub(crate) struct Function {
    pub ctx: usize,
    pub module: usize,
    pub kernel: Arc<Kernel>,
    /// `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
    pub max_dynamic_shared: i32,
    /// `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT`.
    pub carveout: i32,
}

#[derive(Default)]
pub(crate) struct State {
    next_handle: usize,
    /// One per visible device, by ordinal.
    pub contexts: Vec<Context>,
    /// The context of each live allocation, by its start.
    pub allocations: HashMap<u64, usize>,
    pub streams: HashMap<usize, Stream>,
    pub events: HashMap<usize, Event>,
    pub modules: HashMap<usize, LoadedModule>,
    pub functions: HashMap<usize, Function>,
    /// `cuMemHostAlloc` blocks: address to layout.
    pub host: HashMap<usize, std::alloc::Layout>,
}

impl State {
    pub fn new_handle(&mut self) -> usize {
        if self.next_handle < HANDLE_BASE {
            self.next_handle = HANDLE_BASE;
        }
        self.next_handle += 0x10;
        self.next_handle
    }

    /// The context current on this thread, alive (whatever its sticky error).
    pub fn current(&self) -> Result<usize, Refusal> {
        let handle = CURRENT.with(|c| c.borrow().last().copied());
        let Some(handle) = handle else {
            return Err(Refusal::new(
                CUDA_ERROR_INVALID_CONTEXT,
                "no context is current on this thread (cuCtxSetCurrent)",
            ));
        };
        match context_device(handle, self.contexts.len()) {
            Some(d) if self.contexts[d].refs > 0 => Ok(d),
            _ => Err(Refusal::new(
                CUDA_ERROR_INVALID_CONTEXT,
                format!("the current context {handle:#x} has been released"),
            )),
        }
    }

    /// Refuses work on context `ctx` after a kernel fault there.
    pub fn usable(&self, ctx: usize) -> Api {
        match self.contexts.get(ctx).and_then(|c| c.sticky) {
            Some(code) => Err(Refusal::quiet(code)),
            None => Ok(()),
        }
    }

    /// The current context, refused after a fault.
    pub fn current_usable(&self) -> Result<usize, Refusal> {
        let ctx = self.current()?;
        self.usable(ctx)?;
        Ok(ctx)
    }

    /// The context of `stream` (one of the default streams, 0, `CU_STREAM_LEGACY` or
    /// `CU_STREAM_PER_THREAD`, being the current context's), refused after a fault.
    pub fn stream_context(&self, stream: *mut c_void) -> Result<usize, Refusal> {
        let ctx = self.stream_owner(stream)?;
        self.usable(ctx)?;
        Ok(ctx)
    }

    /// The context of `stream`, as [`State::stream_context`] but also after a fault.
    pub fn stream_owner(&self, stream: *mut c_void) -> Result<usize, Refusal> {
        let h = stream as usize;
        if h <= 2 {
            self.current()
        } else {
            self.streams
                .get(&h)
                .map(|s| s.ctx)
                .ok_or_else(|| Refusal::handle("stream", h))
        }
    }

    /// Drops everything of context `ctx` (its allocations, modules, functions, streams,
    /// events) and its sticky error; returns the allocations to free.
    pub fn clear_context(&mut self, ctx: usize) -> Vec<u64> {
        self.streams.retain(|_, s| s.ctx != ctx);
        self.events.retain(|_, e| e.ctx != ctx);
        self.modules.retain(|_, m| m.ctx != ctx);
        self.functions.retain(|_, f| f.ctx != ctx);
        let freed: Vec<u64> = self
            .allocations
            .iter()
            .filter(|(_, c)| **c == ctx)
            .map(|(p, _)| *p)
            .collect();
        for p in &freed {
            self.allocations.remove(p);
        }
        if let Some(c) = self.contexts.get_mut(ctx) {
            c.sticky = None;
        }
        freed
    }
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(|| Mutex::new(State::default()));
static MEMORY: LazyLock<Mutex<Memory>> = LazyLock::new(|| Mutex::new(Memory::new()));

thread_local! {
    /// This thread's context stack (`cuCtxPushCurrent`); the last is the current context.
    pub(crate) static CURRENT: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The state, after a successful `cuInit`. A panic while it was held (a bug) does not make
/// every later call fail: the state is left consistent between statements.
pub(crate) fn state() -> Result<MutexGuard<'static, State>, Refusal> {
    let config = config()?;
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if st.contexts.len() < config.visible.len() {
        st.contexts
            .resize_with(config.visible.len(), Context::default);
    }
    Ok(st)
}

/// The device memory. Never taken before [`state`] by a thread that holds it.
pub(crate) fn memory() -> MutexGuard<'static, Memory> {
    MEMORY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Frees `allocations` (of a context being cleared).
pub(crate) fn free_all(allocations: &[u64]) {
    if allocations.is_empty() {
        return;
    }
    let mut mem = memory();
    for &p in allocations {
        // The table and the memory agree; a failure would only mean it is already gone.
        let _ = mem.free(p);
    }
}

/// What this process's launches have done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Launches that ran (to completion or to a fault).
    pub launches: u64,
    /// Instructions executed, summed over threads, by the launches that completed.
    pub thread_instructions: u64,
    /// Wall-clock seconds spent in launches.
    pub seconds: f64,
}

static LAUNCHES: AtomicU64 = AtomicU64::new(0);
static THREAD_INSTRUCTIONS: AtomicU64 = AtomicU64::new(0);
static LAUNCH_NANOS: AtomicU64 = AtomicU64::new(0);

/// This process's launch counters. With `CONVOY_EMU_STATS=FILE` set, each launch also appends
/// a line to FILE: `kernel=NAME grid=X,Y,Z block=X,Y,Z thread_instructions=N seconds=S pid=P`
/// (`thread_instructions=-` and `fault=1` after a fault).
pub fn stats() -> Stats {
    Stats {
        launches: LAUNCHES.load(Ordering::Relaxed),
        thread_instructions: THREAD_INSTRUCTIONS.load(Ordering::Relaxed),
        seconds: LAUNCH_NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
    }
}

pub(crate) fn count_launch(thread_instructions: Option<u64>, seconds: f64) {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    if let Some(n) = thread_instructions {
        THREAD_INSTRUCTIONS.fetch_add(n, Ordering::Relaxed);
    }
    LAUNCH_NANOS.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_visible_devices_is_read_as_the_driver_reads_it() {
        assert_eq!(visible_devices(2, None), [0, 1]);
        assert_eq!(visible_devices(2, Some("1")), [1]);
        assert_eq!(visible_devices(4, Some("3, 1")), [3, 1]);
        assert_eq!(
            visible_devices(2, Some("")),
            [] as [u32; 0],
            "empty hides all"
        );
        assert_eq!(
            visible_devices(2, Some("0,5,1")),
            [0],
            "stops at a missing one"
        );
        assert_eq!(visible_devices(2, Some("1,1")), [1], "stops at a repeat");
        assert_eq!(visible_devices(2, Some("GPU-1234")), [] as [u32; 0]);
    }

    #[test]
    fn the_architecture_comes_from_convoy_emu_arch() {
        assert_eq!(Arch::from_env_value(None), Ok(Arch::SM_90));
        assert_eq!(Arch::from_env_value(Some("sm_80")), Ok(Arch::SM_80));
        assert_eq!(Arch::from_env_value(Some(" sm_90 ")), Ok(Arch::SM_90));
        assert!(Arch::from_env_value(Some("sm_70")).is_err());
        assert_eq!(Arch::SM_90.shared_optin(), 232_448);
        assert_eq!(Arch::SM_80.shared_optin(), 166_912);
    }

    #[test]
    fn context_handles_name_their_device_and_nothing_else_does() {
        assert_eq!(context_device(context_handle(0), 1), Some(0));
        assert_eq!(context_device(context_handle(1), 1), None, "no such device");
        assert_eq!(context_device(context_handle(0) + 8, 1), None);
        assert_eq!(context_device(0, 1), None);
        assert_eq!(context_device(HANDLE_BASE + 0x10, 16), None);
    }
}

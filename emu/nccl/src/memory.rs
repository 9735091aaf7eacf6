//! How the stand-in reaches the buffers it is handed: through the CUDA driver API of whatever
//! libcuda this process has loaded (the real driver, or the emulated one of `emu/cuda`, whose
//! device memory is host memory behind device addresses), looked up at run time. It never links
//! to a CUDA library: it opens `libcuda.so` (else `libcuda.so.1`) by name, which hands back the
//! library the process already loaded under that name.
//!
//! Tests of the transport that have no CUDA stand-in switch the whole process to
//! [`use_host_memory`], where buffer pointers are plain host addresses.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::Library;

use crate::error::NcclError;

/// A `CUcontext` (0: none), kept as an address so it can travel between threads.
pub(crate) type Context = usize;

type CuResult = c_int;
type MemcpyDtoH = unsafe extern "C" fn(*mut c_void, u64, usize) -> CuResult;
type MemcpyHtoD = unsafe extern "C" fn(u64, *const c_void, usize) -> CuResult;
type CtxGetCurrent = unsafe extern "C" fn(*mut *mut c_void) -> CuResult;
type CtxSetCurrent = unsafe extern "C" fn(*mut c_void) -> CuResult;
type CtxGetDevice = unsafe extern "C" fn(*mut c_int) -> CuResult;
type StreamSynchronize = unsafe extern "C" fn(*mut c_void) -> CuResult;
type GetErrorName = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;
type Init = unsafe extern "C" fn(u32) -> CuResult;
type DeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> CuResult;
type PrimaryCtxRetain = unsafe extern "C" fn(*mut *mut c_void, c_int) -> CuResult;
type PrimaryCtxRelease = unsafe extern "C" fn(c_int) -> CuResult;

/// The driver entry points the stand-in uses. The first six are required; the rest serve
/// error messages and `ncclCommInitAll` only.
pub(crate) struct Driver {
    memcpy_dtoh: MemcpyDtoH,
    memcpy_htod: MemcpyHtoD,
    ctx_get_current: CtxGetCurrent,
    ctx_set_current: CtxSetCurrent,
    ctx_get_device: CtxGetDevice,
    stream_synchronize: StreamSynchronize,
    get_error_name: Option<GetErrorName>,
    init: Option<Init>,
    device_get: Option<DeviceGet>,
    primary_ctx_retain: Option<PrimaryCtxRetain>,
    primary_ctx_release: Option<PrimaryCtxRelease>,
    /// Keeps the library mapped for as long as the pointers above are used (the whole process).
    _lib: Library,
}

/// Where buffers live.
pub(crate) enum Memory {
    /// Device addresses, copied through the CUDA driver.
    Cuda(Result<Driver, NcclError>),
    /// Host addresses (tests only, see [`use_host_memory`]).
    Host,
}

static MEMORY: OnceLock<Memory> = OnceLock::new();

/// Makes every communicator of this process treat buffer pointers as host addresses instead of
/// CUDA device addresses, and never load libcuda. For tests of the transport and the C API
/// without a CUDA stand-in. Idempotent; an error once a communicator has already used the CUDA
/// driver.
///
/// # Safety
/// From now on every buffer pointer given to a collective of this process must be a host
/// address valid for the whole operation (until it is seen complete or the communicator is
/// aborted).
pub unsafe fn use_host_memory() -> Result<(), NcclError> {
    match MEMORY.get_or_init(|| Memory::Host) {
        Memory::Host => Ok(()),
        Memory::Cuda(_) => Err(NcclError::InvalidUsage(
            "use_host_memory after a communicator already used the CUDA driver".into(),
        )),
    }
}

/// The process's memory backend, opening the CUDA driver on first use.
pub(crate) fn memory() -> &'static Memory {
    MEMORY.get_or_init(|| Memory::Cuda(Driver::open()))
}

impl Driver {
    fn open() -> Result<Driver, NcclError> {
        let mut tried = Vec::new();
        for name in ["libcuda.so", "libcuda.so.1"] {
            // SAFETY: loading libcuda runs its initialisers; with the driver (or its stand-in)
            // already loaded by the caller this only returns the existing handle.
            match unsafe { Library::new(name) } {
                Ok(lib) => return Driver::bind(lib, name),
                Err(e) => tried.push(format!("{name}: {e}")),
            }
        }
        Err(NcclError::Cuda(format!(
            "the CUDA driver could not be loaded ({})",
            tried.join("; ")
        )))
    }

    fn bind(lib: Library, name: &str) -> Result<Driver, NcclError> {
        fn get<T: Copy>(lib: &Library, lib_name: &str, sym: &str) -> Result<T, NcclError> {
            // SAFETY: every symbol is looked up with the C signature the CUDA driver API
            // documents for it (the type aliases above).
            unsafe { lib.get::<T>(sym.as_bytes()) }
                .map(|s| *s)
                .map_err(|e| NcclError::Cuda(format!("{lib_name} has no {sym}: {e}")))
        }
        fn opt<T: Copy>(lib: &Library, sym: &str) -> Option<T> {
            // SAFETY: as above.
            unsafe { lib.get::<T>(sym.as_bytes()) }.ok().map(|s| *s)
        }
        Ok(Driver {
            memcpy_dtoh: get(&lib, name, "cuMemcpyDtoH_v2")?,
            memcpy_htod: get(&lib, name, "cuMemcpyHtoD_v2")?,
            ctx_get_current: get(&lib, name, "cuCtxGetCurrent")?,
            ctx_set_current: get(&lib, name, "cuCtxSetCurrent")?,
            ctx_get_device: get(&lib, name, "cuCtxGetDevice")?,
            stream_synchronize: get(&lib, name, "cuStreamSynchronize")?,
            get_error_name: opt(&lib, "cuGetErrorName"),
            init: opt(&lib, "cuInit"),
            device_get: opt(&lib, "cuDeviceGet"),
            primary_ctx_retain: opt(&lib, "cuDevicePrimaryCtxRetain"),
            primary_ctx_release: opt(&lib, "cuDevicePrimaryCtxRelease_v2"),
            _lib: lib,
        })
    }

    /// `Ok` for CUDA_SUCCESS, else an error naming the call and the driver's code.
    fn check(&self, code: CuResult, call: impl FnOnce() -> String) -> Result<(), NcclError> {
        if code == 0 {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        let known = match self.get_error_name {
            // SAFETY: cuGetErrorName writes a pointer to a static string (or fails).
            Some(f) => (unsafe { f(code, &mut name) }) == 0 && !name.is_null(),
            None => false,
        };
        let name = if known {
            // SAFETY: non-null, NUL-terminated and static (see above).
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        } else {
            "CUDA error".into()
        };
        Err(NcclError::Cuda(format!(
            "{} returned {name} ({code})",
            call()
        )))
    }
}

impl Memory {
    fn driver(&self) -> Result<Option<&Driver>, NcclError> {
        match self {
            Memory::Host => Ok(None),
            Memory::Cuda(Ok(d)) => Ok(Some(d)),
            Memory::Cuda(Err(e)) => Err(e.clone()),
        }
    }

    /// The calling thread's current context and its device (`(0, 0)` without one, or with
    /// host memory).
    pub fn current(&self) -> Result<(Context, c_int), NcclError> {
        let Some(d) = self.driver()? else {
            return Ok((0, 0));
        };
        let mut ctx: *mut c_void = std::ptr::null_mut();
        // SAFETY: writes one pointer to a live local.
        d.check(unsafe { (d.ctx_get_current)(&mut ctx) }, || {
            "cuCtxGetCurrent".into()
        })?;
        if ctx.is_null() {
            return Ok((0, 0));
        }
        let mut device: c_int = 0;
        // SAFETY: writes one int to a live local; a context is current.
        d.check(unsafe { (d.ctx_get_device)(&mut device) }, || {
            "cuCtxGetDevice".into()
        })?;
        Ok((ctx as usize, device))
    }

    /// Makes `ctx` current on the calling thread (nothing for 0 or host memory).
    pub fn bind(&self, ctx: Context) -> Result<(), NcclError> {
        match self.driver()? {
            Some(d) if ctx != 0 => {
                // SAFETY: `ctx` came from cuCtxGetCurrent or cuDevicePrimaryCtxRetain and is
                // alive for as long as the communicator that uses it (the caller's contract).
                d.check(unsafe { (d.ctx_set_current)(ctx as *mut c_void) }, || {
                    format!("cuCtxSetCurrent({ctx:#x})")
                })
            }
            _ => Ok(()),
        }
    }

    /// Waits until everything queued on `stream` before the collective has run, so its input
    /// is in place.
    pub fn sync(&self, stream: usize) -> Result<(), NcclError> {
        match self.driver()? {
            Some(d) => {
                // SAFETY: the stream handle the caller passed to the collective, which must stay
                // valid until the collective completes.
                d.check(
                    unsafe { (d.stream_synchronize)(stream as *mut c_void) },
                    || format!("cuStreamSynchronize({stream:#x})"),
                )
            }
            None => Ok(()),
        }
    }

    /// Copies `len` bytes at `src` (a device address, or host with host memory) to a new
    /// buffer.
    ///
    /// # Safety
    /// `src` addresses `len` readable bytes (device memory of the current context).
    pub unsafe fn read(&self, src: u64, len: usize) -> Result<Vec<u8>, NcclError> {
        let mut out = vec![0u8; len];
        if len == 0 {
            return Ok(out);
        }
        match self.driver()? {
            Some(d) => {
                // SAFETY: `out` has `len` writable bytes; the caller guarantees the source.
                let code = unsafe { (d.memcpy_dtoh)(out.as_mut_ptr().cast(), src, len) };
                d.check(code, || {
                    format!("cuMemcpyDtoH_v2(from {src:#x}, {len} bytes)")
                })?;
            }
            None => {
                // SAFETY: the caller guarantees `len` readable host bytes at `src` that do not
                // overlap the fresh `out`.
                unsafe {
                    std::ptr::copy_nonoverlapping(src as usize as *const u8, out.as_mut_ptr(), len)
                };
            }
        }
        Ok(out)
    }

    /// Copies `data` to `dst` (a device address, or host with host memory).
    ///
    /// # Safety
    /// `dst` addresses `data.len()` writable bytes (device memory of the current context) that
    /// nothing else accesses during the copy.
    pub unsafe fn write(&self, dst: u64, data: &[u8]) -> Result<(), NcclError> {
        if data.is_empty() {
            return Ok(());
        }
        match self.driver()? {
            Some(d) => {
                // SAFETY: `data` is readable for its length; the caller guarantees the target.
                let code = unsafe { (d.memcpy_htod)(dst, data.as_ptr().cast(), data.len()) };
                d.check(code, || {
                    format!("cuMemcpyHtoD_v2(to {dst:#x}, {} bytes)", data.len())
                })
            }
            None => {
                // SAFETY: the caller guarantees `data.len()` writable host bytes at `dst`, not
                // overlapping `data` (a buffer of our own).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        dst as usize as *mut u8,
                        data.len(),
                    )
                };
                Ok(())
            }
        }
    }

    /// Retains the primary context of device `ordinal` (for `ncclCommInitAll`); 0 with host
    /// memory.
    pub fn retain_primary(&self, ordinal: c_int) -> Result<Context, NcclError> {
        let Some(d) = self.driver()? else {
            return Ok(0);
        };
        let (Some(device_get), Some(retain)) = (d.device_get, d.primary_ctx_retain) else {
            return Err(NcclError::Cuda(
                "the CUDA driver lacks cuDeviceGet or cuDevicePrimaryCtxRetain".into(),
            ));
        };
        if let Some(init) = d.init {
            // SAFETY: cuInit takes flags 0 and is idempotent.
            d.check(unsafe { init(0) }, || "cuInit(0)".into())?;
        }
        let mut device: c_int = 0;
        // SAFETY: writes one int to a live local.
        d.check(unsafe { device_get(&mut device, ordinal) }, || {
            format!("cuDeviceGet({ordinal})")
        })?;
        let mut ctx: *mut c_void = std::ptr::null_mut();
        // SAFETY: writes one pointer to a live local; `device` came from cuDeviceGet.
        d.check(unsafe { retain(&mut ctx, device) }, || {
            format!("cuDevicePrimaryCtxRetain(device {ordinal})")
        })?;
        Ok(ctx as usize)
    }

    /// Releases what [`Memory::retain_primary`] retained.
    pub fn release_primary(&self, ordinal: c_int) {
        if let Ok(Some(d)) = self.driver()
            && let (Some(device_get), Some(release)) = (d.device_get, d.primary_ctx_release)
        {
            let mut device: c_int = 0;
            // SAFETY: as in `retain_primary`; a failure leaves the context retained, which
            // only costs memory.
            unsafe {
                if device_get(&mut device, ordinal) == 0 {
                    release(device);
                }
            }
        }
    }
}

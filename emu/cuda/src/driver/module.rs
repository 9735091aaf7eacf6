//! Modules (PTX text, parsed by `crate::ptx`), their functions, and launches (run by
//! `crate::exec` before `cuLaunchKernel` returns).

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use super::errors::*;
use super::state::{
    Api, Function, LoadedModule, Out, Refusal, SHARED_PER_BLOCK, State, api, config, count_launch,
    memory, state,
};
use super::{CUfunction, CUmodule, CUstream};
use crate::error::{EmuError, FaultKind};
use crate::exec::{self, Checks, Dims};
use crate::ptx::{Kernel, Module};

/// The first bytes of a cubin (ELF) and of the two fatbin layouts: images the emulator cannot
/// run, refused with `CUDA_ERROR_INVALID_IMAGE` rather than parsed as text.
const BINARY_MAGICS: [[u8; 4]; 3] = [
    *b"\x7fELF",
    [0x50, 0xed, 0x55, 0xba],
    [0xb1, 0x43, 0x62, 0x46],
];

fn refuse_binary(head: &[u8]) -> Api {
    if BINARY_MAGICS.iter().any(|m| head.starts_with(m)) {
        return Err(Refusal::new(
            CUDA_ERROR_INVALID_IMAGE,
            "the image is a cubin or fatbin; the emulator runs only PTX text",
        ));
    }
    Ok(())
}

/// Parses PTX text and registers the module in the current context.
fn load(out: Out<CUmodule>, text: &str) -> Api {
    state()?.current_usable()?;
    let module =
        Module::parse(text).map_err(|e| Refusal::new(CUDA_ERROR_INVALID_PTX, e.to_string()))?;
    let mut st = state()?;
    let ctx = st.current_usable()?;
    let h = st.new_handle();
    st.modules.insert(
        h,
        LoadedModule {
            ctx,
            module,
            functions: HashMap::new(),
        },
    );
    // SAFETY: the pointer was checked non-null; the exported functions that call this have
    // the contract that it points at a writable CUmodule.
    unsafe { out.set(h as CUmodule) };
    Ok(())
}

/// Loads a module from `image`, NUL-terminated PTX text (what NVRTC makes and cudarc's
/// `Ptx::from_src` passes). A cubin or fatbin is `CUDA_ERROR_INVALID_IMAGE`; text the
/// interpreter cannot parse `CUDA_ERROR_INVALID_PTX`, with the line at fault on stderr.
///
/// # Safety
/// `module` must be null or point at a writable `CUmodule`; `image` must be null or point at
/// a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut CUmodule, image: *const c_void) -> CUresult {
    api("cuModuleLoadData", || {
        let out = Out::new(module, "module")?;
        if image.is_null() {
            return Err(Refusal::invalid("image is a null pointer"));
        }
        // SAFETY: by the caller's contract `image` is a NUL-terminated string: its bytes up to
        // the NUL are readable.
        let text = unsafe { CStr::from_ptr(image.cast::<c_char>()) };
        let bytes = text.to_bytes();
        refuse_binary(&bytes[..bytes.len().min(4)])?;
        let text = text.to_str().map_err(|e| {
            Refusal::new(CUDA_ERROR_INVALID_PTX, format!("the PTX is not UTF-8: {e}"))
        })?;
        load(out, text)
    })
}

/// Loads a module from the PTX file `fname`.
///
/// # Safety
/// `module` must be null or point at a writable `CUmodule`; `fname` must be null or a
/// NUL-terminated path.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleLoad(module: *mut CUmodule, fname: *const c_char) -> CUresult {
    api("cuModuleLoad", || {
        let out = Out::new(module, "module")?;
        if fname.is_null() {
            return Err(Refusal::invalid("fname is a null pointer"));
        }
        // SAFETY: by the caller's contract `fname` is a NUL-terminated string.
        let path = unsafe { CStr::from_ptr(fname) }
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&path)
            .map_err(|e| Refusal::new(CUDA_ERROR_FILE_NOT_FOUND, format!("reading {path}: {e}")))?;
        refuse_binary(&bytes)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Refusal::new(CUDA_ERROR_INVALID_PTX, format!("{path} is not UTF-8: {e}"))
        })?;
        load(out, text.trim_end_matches('\0'))
    })
}

/// Unloads a module; its functions become invalid handles (also after a kernel fault).
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleUnload(hmod: CUmodule) -> CUresult {
    api("cuModuleUnload", || {
        let mut st = state()?;
        let h = hmod as usize;
        st.modules
            .remove(&h)
            .ok_or_else(|| Refusal::handle("module", h))?;
        st.functions.retain(|_, f| f.module != h);
        Ok(())
    })
}

/// The kernel `name` of a module (`CUDA_ERROR_NOT_FOUND` if it has none); the same name gives
/// the same handle.
///
/// # Safety
/// `hfunc` must be null or point at a writable `CUfunction`; `name` must be null or a
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuModuleGetFunction(
    hfunc: *mut CUfunction,
    hmod: CUmodule,
    name: *const c_char,
) -> CUresult {
    api("cuModuleGetFunction", || {
        let out = Out::new(hfunc, "hfunc")?;
        if name.is_null() {
            return Err(Refusal::invalid("name is a null pointer"));
        }
        // SAFETY: by the caller's contract `name` is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let mut st = state()?;
        let h = get_function(&mut st, hmod as usize, &name)?;
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(h as CUfunction) };
        Ok(())
    })
}

fn get_function(st: &mut State, module: usize, name: &str) -> Result<usize, Refusal> {
    let m = st
        .modules
        .get(&module)
        .ok_or_else(|| Refusal::handle("module", module))?;
    st.usable(m.ctx)?;
    if let Some(&h) = m.functions.get(name) {
        return Ok(h);
    }
    let ctx = m.ctx;
    let kernel = m.module.kernel(name).map_err(|e| match e {
        EmuError::NoKernel(_) => Refusal::new(CUDA_ERROR_NOT_FOUND, e.to_string()),
        e => Refusal::invalid(e.to_string()),
    })?;
    let h = st.new_handle();
    st.functions.insert(
        h,
        Function {
            ctx,
            module,
            max_dynamic_shared: SHARED_PER_BLOCK.saturating_sub(static_shared(&kernel)),
            kernel,
            carveout: -1,
        },
    );
    if let Some(m) = st.modules.get_mut(&module) {
        m.functions.insert(name.to_string(), h);
    }
    Ok(h)
}

/// The kernel's static shared memory, as the attributes count it.
fn static_shared(kernel: &Kernel) -> i32 {
    i32::try_from(kernel.shared_bytes).unwrap_or(i32::MAX)
}

/// The most threads a block of `kernel` may have: 1024, or less by its `.maxntid`.
fn max_threads(kernel: &Kernel) -> u32 {
    kernel.max_threads.unwrap_or(1024).min(1024)
}

fn function_of(st: &State, hfunc: CUfunction) -> Result<&Function, Refusal> {
    let h = hfunc as usize;
    st.functions
        .get(&h)
        .ok_or_else(|| Refusal::handle("function", h))
}

/// A function attribute (`CUfunction_attribute`): its thread limit (`.maxntid`) and static
/// shared memory, the maximum dynamic shared memory and carveout as set, the compute
/// capability for the PTX and binary versions, 32 registers, and 0 for constant and local
/// memory (which the interpreter does not size).
///
/// # Safety
/// `pi` must be null or point at a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncGetAttribute(
    pi: *mut i32,
    attrib: u32,
    hfunc: CUfunction,
) -> CUresult {
    api("cuFuncGetAttribute", || {
        let out = Out::new(pi, "pi")?;
        let arch = config()?.arch;
        let st = state()?;
        let f = function_of(&st, hfunc)?;
        let value = match attrib {
            0 => max_threads(&f.kernel) as i32,    // MAX_THREADS_PER_BLOCK
            1 => static_shared(&f.kernel),         // SHARED_SIZE_BYTES
            2 | 3 => 0,                            // CONST_, LOCAL_SIZE_BYTES
            4 => 32,                               // NUM_REGS
            5 | 6 => arch.major * 10 + arch.minor, // PTX_VERSION, BINARY_VERSION
            7 => 0,                                // CACHE_MODE_CA
            8 => f.max_dynamic_shared,             // MAX_DYNAMIC_SHARED_SIZE_BYTES
            9 => f.carveout,                       // PREFERRED_SHARED_MEMORY_CARVEOUT
            10..=15 => 0,                          // cluster attributes
            _ => {
                return Err(Refusal::invalid(format!(
                    "function attribute {attrib} is not one the emulator answers"
                )));
            }
        };
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(value) };
        Ok(())
    })
}

/// Sets `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` (up to the opt-in limit of the
/// emulated GPU less the kernel's static shared memory) or `CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT` (-1 to 100); other
/// attributes are `CUDA_ERROR_INVALID_VALUE`.
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncSetAttribute(
    hfunc: CUfunction,
    attrib: u32,
    value: i32,
) -> CUresult {
    api("cuFuncSetAttribute", || {
        let optin = config()?.arch.shared_optin();
        let mut st = state()?;
        let h = hfunc as usize;
        let f = st
            .functions
            .get_mut(&h)
            .ok_or_else(|| Refusal::handle("function", h))?;
        let most = optin.saturating_sub(static_shared(&f.kernel));
        match attrib {
            8 if (0..=most).contains(&value) => f.max_dynamic_shared = value,
            9 if (-1..=100).contains(&value) => f.carveout = value,
            8 | 9 => {
                return Err(Refusal::invalid(format!(
                    "{value} is out of range for function attribute {attrib}"
                )));
            }
            _ => {
                return Err(Refusal::invalid(format!(
                    "function attribute {attrib} cannot be set here"
                )));
            }
        }
        Ok(())
    })
}

/// Accepts any cache preference for a function.
///
/// # Safety
/// None beyond the C ABI: the handle is checked, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuFuncSetCacheConfig(hfunc: CUfunction, _config: u32) -> CUresult {
    api("cuFuncSetCacheConfig", || {
        function_of(&*state()?, hfunc).map(drop)
    })
}

/// Runs kernel `f` on a grid of `grid_dim_*` blocks of `block_dim_*` threads with
/// `shared_mem_bytes` of dynamic shared memory, to completion, before returning.
/// `kernel_params` holds one pointer per kernel parameter, to its value (as many bytes as the
/// PTX declares); `extra` is not supported (unless empty).
///
/// A launch configuration beyond the emulated GPU's limits is `CUDA_ERROR_INVALID_VALUE`.
/// A fault while the kernel runs prints "convoy-cuda-emu: " and the fault, returns
/// `CUDA_ERROR_ILLEGAL_ADDRESS` (a memory fault) or `CUDA_ERROR_LAUNCH_FAILED`, and makes
/// that error sticky in the context. `CONVOY_EMU_RACECHECK=1` checks shared-memory races.
///
/// # Safety
/// `kernel_params` must be null or hold a readable pointer per parameter of the kernel, each
/// to that parameter's bytes; `extra` must be null or a `CU_LAUNCH_PARAM_END`-terminated array.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // cuda.h's signature
pub unsafe extern "C" fn cuLaunchKernel(
    f: CUfunction,
    grid_dim_x: u32,
    grid_dim_y: u32,
    grid_dim_z: u32,
    block_dim_x: u32,
    block_dim_y: u32,
    block_dim_z: u32,
    shared_mem_bytes: u32,
    stream: CUstream,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    api("cuLaunchKernel", || {
        let dims = Dims {
            grid: [grid_dim_x, grid_dim_y, grid_dim_z],
            block: [block_dim_x, block_dim_y, block_dim_z],
            dynamic_shared: shared_mem_bytes,
        };
        let (ctx, kernel) = {
            let st = state()?;
            let func = function_of(&st, f)?;
            let ctx = st.stream_context(stream)?;
            if ctx != func.ctx {
                return Err(Refusal::new(
                    CUDA_ERROR_INVALID_HANDLE,
                    format!(
                        "kernel {}: the function and the stream belong to different contexts",
                        func.kernel.name
                    ),
                ));
            }
            check_dims(&func.kernel, dims, func.max_dynamic_shared)?;
            (ctx, func.kernel.clone())
        };
        // SAFETY: the caller's contract, as documented above.
        let params = unsafe { read_params(&kernel, kernel_params, extra) }?;
        run(ctx, &kernel, dims, &params)
    })
}

fn check_dims(kernel: &Kernel, dims: Dims, max_dynamic_shared: i32) -> Api {
    let [gx, gy, gz] = dims.grid;
    let [bx, by, bz] = dims.block;
    let refuse = |why: String| Err(Refusal::invalid(format!("kernel {}: {why}", kernel.name)));
    if dims.grid.contains(&0) || dims.block.contains(&0) {
        return refuse(format!(
            "an empty grid ({gx},{gy},{gz}) or block ({bx},{by},{bz})"
        ));
    }
    if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return refuse(format!(
            "grid ({gx},{gy},{gz}) exceeds (2147483647,65535,65535)"
        ));
    }
    let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
    if bx > 1024 || by > 1024 || bz > 64 || threads > 1024 {
        return refuse(format!(
            "block ({bx},{by},{bz}) exceeds (1024,1024,64) or 1024 threads"
        ));
    }
    let most = max_threads(kernel);
    if threads > u64::from(most) {
        return Err(Refusal::new(
            CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
            format!(
                "kernel {}: block ({bx},{by},{bz}) has {threads} threads, its .maxntid allows {most}",
                kernel.name
            ),
        ));
    }
    if i64::from(dims.dynamic_shared) > i64::from(max_dynamic_shared) {
        return refuse(format!(
            "{} bytes of dynamic shared memory exceed the function's {max_dynamic_shared} \
             (cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) raises it)",
            dims.dynamic_shared
        ));
    }
    Ok(())
}

/// Copies each parameter's bytes out of the caller's `kernel_params`.
///
/// # Safety
/// As [`cuLaunchKernel`]'s `kernel_params` and `extra`.
unsafe fn read_params(
    kernel: &Kernel,
    kernel_params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<Vec<Vec<u8>>, Refusal> {
    // SAFETY: a non-null `extra` is, by the caller's contract, an array ending with
    // CU_LAUNCH_PARAM_END (a null pointer): its first element is readable.
    if !extra.is_null() && !unsafe { *extra }.is_null() {
        return Err(Refusal::new(
            CUDA_ERROR_NOT_SUPPORTED,
            format!(
                "kernel {}: parameters through `extra` are not supported; pass kernelParams",
                kernel.name
            ),
        ));
    }
    if kernel.params.is_empty() {
        return Ok(Vec::new());
    }
    if kernel_params.is_null() {
        return Err(Refusal::invalid(format!(
            "kernel {} has {} parameters and kernelParams is null",
            kernel.name,
            kernel.params.len()
        )));
    }
    let mut values = Vec::with_capacity(kernel.params.len());
    for (i, param) in kernel.params.iter().enumerate() {
        // SAFETY: by the caller's contract `kernel_params` holds a pointer per parameter.
        let p = unsafe { *kernel_params.add(i) };
        if p.is_null() && param.size > 0 {
            return Err(Refusal::invalid(format!(
                "kernel {}: kernelParams[{i}] ({}) is null",
                kernel.name, param.name
            )));
        }
        let bytes = if param.size == 0 {
            Vec::new()
        } else {
            // SAFETY: by the caller's contract `p` points at the parameter's value, whose size
            // is the one the PTX declares.
            unsafe { std::slice::from_raw_parts(p.cast::<u8>(), param.size) }.to_vec()
        };
        values.push(bytes);
    }
    Ok(values)
}

/// Runs one launch with the memory locked (and the handle tables not), then counts it; a
/// fault (or a panic of the interpreter) becomes the context's sticky error.
fn run(ctx: usize, kernel: &Kernel, dims: Dims, params: &[Vec<u8>]) -> Api {
    let checks = Checks {
        race: std::env::var("CONVOY_EMU_RACECHECK").is_ok_and(|v| !v.is_empty() && v != "0"),
    };
    let refs: Vec<&[u8]> = params.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let outcome = {
        let mut mem = memory();
        catch_unwind(AssertUnwindSafe(|| {
            exec::launch(kernel, dims, &refs, &mut mem, checks)
        }))
    };
    let seconds = started.elapsed().as_secs_f64();
    let error = match outcome {
        Ok(Ok(stats)) => {
            count_launch(Some(stats.thread_instructions), seconds);
            append_stats(&kernel.name, dims, Some(stats.thread_instructions), seconds);
            return Ok(());
        }
        Ok(Err(e)) => e,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            EmuError::Launch {
                kernel: kernel.name.clone(),
                msg: format!("the interpreter panicked: {what}"),
            }
        }
    };
    count_launch(None, seconds);
    append_stats(&kernel.name, dims, None, seconds);
    eprintln!("convoy-cuda-emu: {error}");
    let code = fault_code(&error);
    let mut st = state()?;
    if let Some(c) = st.contexts.get_mut(ctx)
        && c.refs > 0
        && c.sticky.is_none()
    {
        c.sticky = Some(code);
    }
    Err(Refusal::quiet(code))
}

/// The code a kernel fault returns, as a GPU would: `CUDA_ERROR_MISALIGNED_ADDRESS` for a
/// misaligned access, `CUDA_ERROR_ILLEGAL_ADDRESS` for one outside the live allocations (or
/// the shared window), `CUDA_ERROR_LAUNCH_FAILED` for anything else (barrier deadlock,
/// incomplete warp collective, race, unsupported instruction, instruction budget).
///
pub(crate) fn fault_code(e: &EmuError) -> CUresult {
    match e {
        EmuError::Memory(_)
        | EmuError::Fault {
            kind: FaultKind::OutOfBounds,
            ..
        } => CUDA_ERROR_ILLEGAL_ADDRESS,
        EmuError::Fault {
            kind: FaultKind::Misaligned,
            ..
        } => CUDA_ERROR_MISALIGNED_ADDRESS,
        _ => CUDA_ERROR_LAUNCH_FAILED,
    }
}

/// With `CONVOY_EMU_STATS=FILE`, appends the launch's line to FILE (one `write`, so the lines
/// of concurrent processes do not interleave).
fn append_stats(kernel: &str, dims: Dims, thread_instructions: Option<u64>, seconds: f64) {
    let Some(path) = std::env::var_os("CONVOY_EMU_STATS").filter(|p| !p.is_empty()) else {
        return;
    };
    let line = stats_line(kernel, dims, thread_instructions, seconds);
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "convoy-cuda-emu: CONVOY_EMU_STATS: appending to {}: {e}",
            path.to_string_lossy()
        );
    }
}

pub(crate) fn stats_line(
    kernel: &str,
    dims: Dims,
    thread_instructions: Option<u64>,
    seconds: f64,
) -> String {
    let [gx, gy, gz] = dims.grid;
    let [bx, by, bz] = dims.block;
    let n = match thread_instructions {
        Some(n) => n.to_string(),
        None => "- fault=1".into(),
    };
    format!(
        "kernel={} grid={gx},{gy},{gz} block={bx},{by},{bz} thread_instructions={n} \
         seconds={seconds:.6} pid={}\n",
        kernel,
        std::process::id()
    )
}

/// Marks context `ctx` faulted as a launch would (for tests of the sticky error, until the
/// interpreter can make a real fault).
#[cfg(test)]
pub(crate) fn fault_for_test(ctx: usize, e: &EmuError) -> CUresult {
    let code = fault_code(e);
    if let Ok(mut st) = state()
        && let Some(c) = st.contexts.get_mut(ctx)
    {
        c.sticky = Some(code);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::*;

    fn fault(kind: FaultKind, msg: &str) -> EmuError {
        EmuError::Fault {
            kind,
            kernel: "k".into(),
            bx: 0,
            by: 0,
            bz: 0,
            tx: 1,
            ty: 0,
            tz: 0,
            line: 7,
            text: "st.global.f32 [%rd4], %f1;".into(),
            msg: msg.into(),
        }
    }

    #[test]
    fn memory_faults_are_illegal_addresses_and_the_rest_launch_failures() {
        let oob = fault(
            FaultKind::OutOfBounds,
            "out-of-bounds global write of 4 bytes at 0x7f0000000400 (no live allocation holds it)",
        );
        assert_eq!(fault_code(&oob), CUDA_ERROR_ILLEGAL_ADDRESS);
        let shared = fault(
            FaultKind::OutOfBounds,
            "out-of-bounds shared read of 4 bytes at 0x10 (the block has 0 bytes)",
        );
        assert_eq!(fault_code(&shared), CUDA_ERROR_ILLEGAL_ADDRESS);
        let odd = fault(
            FaultKind::Misaligned,
            "misaligned address 0x7f0000000002 for a 4-byte access",
        );
        assert_eq!(fault_code(&odd), CUDA_ERROR_MISALIGNED_ADDRESS);
        assert_eq!(
            fault_code(&EmuError::Memory("x".into())),
            CUDA_ERROR_ILLEGAL_ADDRESS
        );
        let barrier = fault(
            FaultKind::Other,
            "bar.sync reached by 31 of the 32 threads of warp 0",
        );
        assert_eq!(fault_code(&barrier), CUDA_ERROR_LAUNCH_FAILED);
        let launch = EmuError::Launch {
            kernel: "k".into(),
            msg: "unsupported".into(),
        };
        assert_eq!(fault_code(&launch), CUDA_ERROR_LAUNCH_FAILED);
    }

    #[test]
    fn a_stats_line_names_the_kernel_and_its_work() {
        let dims = Dims {
            grid: [2, 1, 1],
            block: [128, 1, 1],
            dynamic_shared: 0,
        };
        let line = stats_line("add", dims, Some(1000), 0.5);
        assert!(line.starts_with(
            "kernel=add grid=2,1,1 block=128,1,1 thread_instructions=1000 seconds=0.500000 pid="
        ));
        assert!(line.ends_with('\n'));
        assert!(stats_line("add", dims, None, 0.5).contains("thread_instructions=- fault=1"));
    }

    /// The only test of this binary that uses the process-wide driver state (the others of
    /// the API are in tests/driver.rs, another process): a fault must not poison them.
    #[test]
    fn a_fault_is_sticky_until_the_context_is_reset() {
        // SAFETY: every pointer passed points at a live local of the type the call writes or
        // reads, of the size given.
        unsafe {
            assert_eq!(cuInit(0), CUDA_SUCCESS);
            let mut ctx = std::ptr::null_mut();
            assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
            assert_eq!(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
            let mut a = 0u64;
            assert_eq!(cuMemAlloc_v2(&mut a, 64), CUDA_SUCCESS);
            let mut s = std::ptr::null_mut();
            assert_eq!(cuStreamCreate(&mut s, 0), CUDA_SUCCESS);

            let code = fault_for_test(
                0,
                &fault(
                    FaultKind::OutOfBounds,
                    "4 bytes at 0x10 are not inside one live device allocation",
                ),
            );
            assert_eq!(code, CUDA_ERROR_ILLEGAL_ADDRESS);
            let mut b = 0u64;
            assert_eq!(cuMemAlloc_v2(&mut b, 64), CUDA_ERROR_ILLEGAL_ADDRESS);
            assert_eq!(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
            assert_eq!(cuStreamSynchronize(s), CUDA_ERROR_ILLEGAL_ADDRESS);
            let host = [0u8; 4];
            assert_eq!(
                cuMemcpyHtoD_v2(a, host.as_ptr().cast(), 4),
                CUDA_ERROR_ILLEGAL_ADDRESS
            );
            // Freeing still works, and device queries do not touch the context.
            assert_eq!(cuMemFree_v2(a), CUDA_SUCCESS);
            let mut n = 0;
            assert_eq!(cuDeviceGetCount(&mut n), CUDA_SUCCESS);

            assert_eq!(cuDevicePrimaryCtxReset_v2(0), CUDA_SUCCESS);
            assert_eq!(cuCtxSynchronize(), CUDA_SUCCESS);
            assert_eq!(
                cuStreamSynchronize(s),
                CUDA_ERROR_INVALID_HANDLE,
                "reset destroyed it"
            );
            assert_eq!(cuMemAlloc_v2(&mut b, 64), CUDA_SUCCESS);

            // The last release destroys the context: its memory is gone, and a thread that
            // still has it current is refused until it is retained again.
            assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
            assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CUDA_ERROR_INVALID_CONTEXT);
            assert_eq!(cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
            assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
            assert_eq!(cuCtxSynchronize(), CUDA_SUCCESS);
            assert_eq!(
                cuMemcpyHtoD_v2(b, host.as_ptr().cast(), 4),
                CUDA_ERROR_INVALID_VALUE,
                "freed with its context"
            );
            assert_eq!(cuMemFree_v2(b), CUDA_ERROR_INVALID_VALUE);
            assert_eq!(cuDevicePrimaryCtxRelease_v2(0), CUDA_SUCCESS);
        }
    }
}

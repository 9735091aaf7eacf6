//! One GPU: its context, its default stream, and the kernels compiled for its compute
//! capability (each source compiled once per device, on first use).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::compile::{Arch, CompileSettings, compile};
use super::error::CudaError;
use super::source::source;

pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub arch: Arch,
    settings: CompileSettings,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

/// Whether a CUDA driver can be loaded here (`CudaContext::new` panics without one).
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen libcuda; no driver function is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The CUDA version the PTX we generate needs from the driver (NVRTC 12.4 emits PTX ISA 8.4):
/// what `cuDriverGetVersion` reports for the R550 drivers.
pub const MIN_DRIVER_CUDA: i32 = 12040;

/// The CUDA version the installed driver supports (`cuDriverGetVersion`, e.g. 12040 for
/// 12.4), or `None` without a driver.
pub fn driver_cuda_version() -> Option<i32> {
    if !driver_available() {
        return None;
    }
    let mut v: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion only writes one int through the pointer, which points at a
    // live local; it needs no cuInit and no context.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some(v)
}

/// GPUs visible to this process; 0 without a driver.
pub fn device_count() -> usize {
    if !driver_available() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

impl Device {
    /// GPU `ordinal`, or `Ok(None)` when this machine has no CUDA driver or no such GPU (the
    /// GPU tests skip then; a worker advertises no GPUs).
    pub fn open(ordinal: usize) -> Result<Option<Device>, CudaError> {
        if ordinal >= device_count() {
            return Ok(None);
        }
        if let Some(found) = driver_cuda_version().filter(|&v| v < MIN_DRIVER_CUDA) {
            return Err(CudaError::OldDriver { found });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::Driver {
            during: format!("opening GPU {ordinal}"),
            msg: e.to_string(),
        })?;
        let (major, minor) = ctx.compute_capability().map_err(|e| CudaError::Driver {
            during: "reading the compute capability".into(),
            msg: e.to_string(),
        })?;
        let stream = ctx.default_stream();
        Ok(Some(Device {
            ctx,
            stream,
            arch: Arch {
                major: major as u32,
                minor: minor as u32,
            },
            settings: CompileSettings::from_env(),
            modules: Mutex::new(HashMap::new()),
        }))
    }

    /// The kernel `kernel` of the op family `family`, compiling the family for this device on
    /// first use.
    pub fn function(&self, family: &str, kernel: &str) -> Result<CudaFunction, CudaError> {
        let src = source(family).ok_or_else(|| CudaError::UnknownSource(family.to_string()))?;
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(src.name) {
                Some(m) => m.clone(),
                None => {
                    let compiled = compile(src, self.arch, &self.settings)?;
                    let m = self
                        .ctx
                        .load_module(Ptx::from_src(compiled.ptx))
                        .map_err(|e| CudaError::Driver {
                            during: format!(
                                "loading {} (PTX from NVRTC; a driver older than the PTX needs \
                                 R550 or newer)",
                                src.file
                            ),
                            msg: e.to_string(),
                        })?;
                    modules.insert(src.name, m.clone());
                    m
                }
            }
        };
        module.load_function(kernel).map_err(|e| CudaError::Driver {
            during: format!("finding kernel {kernel} in {}", src.file),
            msg: e.to_string(),
        })
    }
}

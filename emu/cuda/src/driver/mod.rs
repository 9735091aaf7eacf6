//! The CUDA driver API, as `extern "C"` functions with the C ABI of CUDA 12.4: what cudarc 0.19
//! (dynamic loading, which resolves each symbol by name when first called) and convoy's own
//! direct calls (`cuDriverGetVersion`, the worker's `cuInit` + `cuDeviceGetCount` probe) use.
//!
//! The emulated machine: `CONVOY_EMU_DEVICES` devices (default 1, after `CUDA_VISIBLE_DEVICES`
//! as the real driver applies it), each of the compute capability `CONVOY_EMU_ARCH` names
//! (`sm_90` by default, or `sm_80`), named "convoy emulated GPU (PTX interpreter)". One primary
//! context per device; no other contexts. All devices share one address space (memory.rs),
//! so a pointer of one device is valid on another, as with peer access enabled.
//!
//! Work runs when it is issued: a copy, memset or launch is complete when the call returns,
//! whatever its stream, so every stream and event is always idle (`cuStreamQuery` and
//! `cuEventQuery` succeed) and `cuEventElapsedTime` is host wall-clock time between records.
//!
//! Errors: every refusal is a `CUresult` the real driver would give in that case, with one
//! line on stderr ("convoy-cuda-emu: call: why") for the ones that are a caller's bug. A kernel
//! fault prints "convoy-cuda-emu: " and the fault, returns `CUDA_ERROR_ILLEGAL_ADDRESS` (an
//! access outside the live allocations), `CUDA_ERROR_MISALIGNED_ADDRESS` or
//! `CUDA_ERROR_LAUNCH_FAILED` (any other fault) and, as on a GPU, makes the error sticky: every
//! later call that would use that context returns it, until the primary context is released by
//! all its users (or reset). Calls that only free (`cuMemFree`, `cuModuleUnload`,
//! `cuStreamDestroy`, `cuEventDestroy`) still work in a faulted context. A configuration beyond
//! the GPU's limits (grid, block, shared memory) is refused before running and is not sticky.
//!
//! Handles (contexts, streams, events, modules, functions) are numbers cast to pointers, never
//! dereferenced and never reused, so a stale or foreign one is `CUDA_ERROR_INVALID_HANDLE`.
//!
//! `CONVOY_EMU_RACECHECK=1` turns on the interpreter's shared-memory race check;
//! `CONVOY_EMU_STATS=FILE` appends one line per launch to FILE (see [`stats`]).

// The exported names and parameters are cuda.h's.
#![allow(non_snake_case)]

mod context;
mod device;
mod errors;
mod memory;
mod module;
mod state;
mod stream;

pub use context::*;
pub use device::*;
pub use errors::*;
pub use memory::*;
pub use module::*;
pub use state::{Arch, Stats, stats, visible_devices};
pub use stream::*;

use std::ffi::c_void;

/// A device ordinal (cuda.h: `int`).
pub type CUdevice = i32;
/// A device address (cuda.h: `unsigned long long`).
pub type CUdeviceptr = u64;
pub type CUcontext = *mut c_void;
pub type CUstream = *mut c_void;
pub type CUevent = *mut c_void;
pub type CUmodule = *mut c_void;
pub type CUfunction = *mut c_void;

/// The CUDA version the emulated driver reports (`cuDriverGetVersion`): 12.4, the PTX ISA
/// NVRTC 12.4 emits.
pub const DRIVER_VERSION: i32 = 12040;

/// What `cuDeviceGetName` answers; tests recognise the emulator by its start, "convoy emulated".
pub const DEVICE_NAME: &str = "convoy emulated GPU (PTX interpreter)";

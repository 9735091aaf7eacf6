//! The CUDA backend's kernels: `.cu` sources in `kernels/cuda/` (one per op family, shapes
//! written beside every argument), embedded in the binary and compiled at run time with NVRTC
//! for the device's compute capability.
//!
//! Everything here builds without CUDA: cudarc loads libnvrtc (and later libcuda, libnccl) with
//! `dlopen` on first use, so a CPU-only machine only needs these libraries when it compiles or
//! launches a kernel. [`nvrtc_available`] says whether compiling is possible here.

mod compile;
mod device;
mod error;
pub mod ops;
pub mod prep;
mod source;

pub use compile::{Arch, CompileSettings, Compiled, compile, nvrtc_available};
pub use device::{Device, MIN_DRIVER_CUDA, device_count, driver_available, driver_cuda_version};
pub use error::CudaError;
pub use source::{SOURCES, Source, source};

//! A functional PTX interpreter behind the CUDA driver API: loaded as `libcuda.so` by the
//! emulated GPU test pass, it runs convoy's kernels (the PTX NVRTC makes of `kernels/cuda/`) on
//! the CPU, so that CI, which has no GPU, executes the CUDA backend.
//!
//! What it is: one legal schedule of each launch (blocks one after another, warps in lockstep
//! with reconvergence at the lowest waiting instruction), correctly rounded IEEE arithmetic
//! (`.approx` instructions too), `mma.sync` with an exactly summed, once rounded accumulate,
//! and checks a GPU does not make: every global access against the live allocations, barriers
//! in divergent code, warp collectives with lanes missing, and optionally shared-memory races.
//! What it is not: no timing, no occupancy, no caches, no cuBLASLt, no concurrency between
//! streams (launches run when issued). See emu/README.md.

pub mod driver;
pub mod error;
pub mod exec;
pub mod memory;
pub mod ptx;

pub use error::{EmuError, FaultKind};
pub use exec::{Checks, Dims, LaunchStats, launch};
pub use memory::Memory;
pub use ptx::{Kernel, Module, Param};

//! What the emulator refuses, named precisely: a kernel fault names the kernel, the PTX line,
//! the instruction and the thread, as compute-sanitizer would.

use thiserror::Error;

/// What a kernel fault is, for the CUDA error code the driver returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Outside every live allocation, or outside the block's shared memory.
    OutOfBounds,
    Misaligned,
    /// Deadlocks, divergent collectives, races, unsupported operations.
    Other,
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EmuError {
    /// The PTX text does not parse, or uses a form the interpreter does not implement.
    #[error("PTX line {line}: {msg}: `{text}`")]
    Ptx {
        line: usize,
        text: String,
        msg: String,
    },
    #[error("no kernel named {0} in the module")]
    NoKernel(String),
    /// A fault while a kernel ran (out-of-bounds access, barrier deadlock, race, ...).
    #[error(
        "kernel {kernel}, block ({bx},{by},{bz}), thread ({tx},{ty},{tz}), PTX line {line} `{text}`: {msg}"
    )]
    Fault {
        kind: FaultKind,
        kernel: String,
        bx: u32,
        by: u32,
        bz: u32,
        tx: u32,
        ty: u32,
        tz: u32,
        line: usize,
        text: String,
        msg: String,
    },
    #[error("launch of {kernel}: {msg}")]
    Launch { kernel: String, msg: String },
    /// A host-side memory call on an address that is not a live allocation.
    #[error("{0}")]
    Memory(String),
    #[error("out of emulated device memory: {requested} bytes asked, {free} free")]
    OutOfMemory { requested: u64, free: u64 },
}

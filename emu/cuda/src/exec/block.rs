//! The state of a block in flight: its warps' registers and lanes, and what its instructions
//! share (parameters, memory, shared memory, the race shadow); and the fault that names a
//! thread of it.

use super::race;
use crate::error::{EmuError, FaultKind};
use crate::memory::Memory;
use crate::ptx::Kernel;

/// A launch's shape: blocks in the grid, threads in a block, bytes of dynamic shared memory.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    Ready,
    /// Waiting at `bar.sync`; `pc` is the instruction after it.
    AtBarrier,
    Exited,
    /// Beyond the block's thread count (a partial last warp).
    Absent,
}

pub(crate) struct Warp {
    /// `regs[r * 32 + lane]`: every register as 64 bits (narrower types use the low bits).
    pub regs: Vec<u64>,
    pub pc: [u32; 32],
    pub lane: [Lane; 32],
    /// The warp's index in its block.
    pub index: u32,
}

/// What instructions of one block share.
pub(crate) struct Block<'a> {
    pub kernel: &'a Kernel,
    pub params: &'a [u8],
    pub mem: &'a mut Memory,
    pub shared: Vec<u8>,
    pub race: Option<race::Shadow>,
    pub ctaid: [u32; 3],
    pub dims: Dims,
    pub executed: u64,
    /// Warp instructions issued in this launch (the race check's "same instruction" stamp).
    pub serial: u64,
    /// Thread instructions the launch may execute before it is declared hung.
    pub budget: u64,
}

/// A fault at instruction `pc` of thread `tid` of the current block.
pub(crate) fn fault(b: &Block, tid: u32, pc: u32, msg: String) -> EmuError {
    fault_of(FaultKind::Other, b, tid, pc, msg)
}

pub(crate) fn fault_of(kind: FaultKind, b: &Block, tid: u32, pc: u32, msg: String) -> EmuError {
    let [bx, by, _] = b.dims.block;
    let line = b.kernel.insts.get(pc as usize).map_or(0, |i| i.line);
    EmuError::Fault {
        kind,
        kernel: b.kernel.name.clone(),
        bx: b.ctaid[0],
        by: b.ctaid[1],
        bz: b.ctaid[2],
        tx: tid % bx,
        ty: (tid / bx) % by,
        tz: tid / (bx * by),
        line,
        text: b.kernel.line_text(line).to_string(),
        msg,
    }
}

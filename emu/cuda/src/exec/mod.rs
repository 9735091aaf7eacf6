//! Runs one launch: blocks one after another; in a block, each warp runs until all its live
//! lanes wait at `bar.sync` or have exited, then the barrier releases.
//!
//! A warp executes in lockstep: at each step the lanes at the lowest program counter among
//! those ready run the instruction there, together. Divergent lanes therefore reconverge where
//! their paths meet (NVRTC lays out loops and conditionals so that the join is the lowest
//! waiting address), and warp collectives (`shfl.sync`, `mma.sync`) see exactly the lanes that
//! arrived together — a collective reached with members missing is a fault, not a guess.

mod block;
mod float;
mod mma;
mod race;
mod step;

use crate::error::EmuError;
use crate::memory::Memory;
use crate::ptx::Kernel;
use crate::ptx::ir::{Op, SPECIALS};

pub use block::Dims;
use block::{Block, Lane, Warp, fault};

/// Optional checks (the memcheck of global accesses is always on).
#[derive(Clone, Copy, Debug, Default)]
pub struct Checks {
    /// Shared-memory race check: two threads of a block touching the same shared byte between
    /// two barriers, at least one of them writing (lanes of one warp instruction excepted).
    pub race: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LaunchStats {
    /// Instructions executed, summed over threads (a guarded-off lane counts too: it issued).
    pub thread_instructions: u64,
}

/// The most shared memory a block may use (sm_90's opt-in limit).
pub const MAX_SHARED: usize = 227 * 1024;
/// Instructions one launch may execute before it is declared hung (an infinite loop).
const DEFAULT_BUDGET: u64 = 200_000_000_000;

/// Runs `kernel` to completion. `params[i]` holds the bytes of parameter `i` (as many as
/// `kernel.params[i].size`).
pub fn launch(
    kernel: &Kernel,
    dims: Dims,
    params: &[&[u8]],
    mem: &mut Memory,
    checks: Checks,
) -> Result<LaunchStats, EmuError> {
    let refuse = |msg: String| EmuError::Launch {
        kernel: kernel.name.clone(),
        msg,
    };
    let threads: u64 = dims.block.iter().map(|&d| u64::from(d)).product();
    if threads == 0 || dims.grid.contains(&0) {
        return Err(refuse(format!(
            "empty launch: grid {:?}, block {:?}",
            dims.grid, dims.block
        )));
    }
    let limit = kernel.max_threads.unwrap_or(1024).min(1024);
    if threads > u64::from(limit) {
        return Err(refuse(format!(
            "{threads} threads per block; the kernel allows at most {limit}"
        )));
    }
    let shared_bytes = kernel.shared_bytes + dims.dynamic_shared as usize;
    if shared_bytes > MAX_SHARED {
        return Err(refuse(format!(
            "{shared_bytes} bytes of shared memory; a block may use {MAX_SHARED}"
        )));
    }
    if params.len() != kernel.params.len() {
        return Err(refuse(format!(
            "{} parameters given, the kernel takes {}",
            params.len(),
            kernel.params.len()
        )));
    }
    let mut buf = vec![0u8; kernel.param_bytes];
    for (p, bytes) in kernel.params.iter().zip(params) {
        if bytes.len() != p.size {
            return Err(refuse(format!(
                "parameter {} is {} bytes, given {}",
                p.name,
                p.size,
                bytes.len()
            )));
        }
        buf[p.offset..p.offset + p.size].copy_from_slice(bytes);
    }
    let mut block = Block {
        kernel,
        params: &buf,
        mem,
        shared: vec![0; shared_bytes],
        race: checks.race.then(|| race::Shadow::new(shared_bytes)),
        ctaid: [0; 3],
        dims,
        executed: 0,
        serial: 0,
        budget: std::env::var("CONVOY_EMU_MAX_INSTRUCTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_BUDGET),
    };
    for z in 0..dims.grid[2] {
        for y in 0..dims.grid[1] {
            for x in 0..dims.grid[0] {
                block.ctaid = [x, y, z];
                // Shared memory starts each block zeroed (a GPU leaves it undefined; zero keeps
                // runs reproducible), and the race shadow forgets the previous block.
                block.shared.fill(0);
                if let Some(r) = &mut block.race {
                    r.new_block();
                }
                run_block(&mut block, threads as u32)?;
            }
        }
    }
    Ok(LaunchStats {
        thread_instructions: block.executed,
    })
}

fn new_warp(b: &Block, index: u32, threads: u32) -> Warp {
    let regs = b.kernel.regs;
    let mut w = Warp {
        regs: vec![0; regs * 32],
        pc: [0; 32],
        lane: [Lane::Absent; 32],
        index,
    };
    let [bx, by, _] = b.dims.block;
    for l in 0..32u32 {
        let tid = index * 32 + l;
        if tid >= threads {
            continue;
        }
        w.lane[l as usize] = Lane::Ready;
        let specials = [
            tid % bx,
            (tid / bx) % by,
            tid / (bx * by),
            b.dims.block[0],
            b.dims.block[1],
            b.dims.block[2],
            b.ctaid[0],
            b.ctaid[1],
            b.ctaid[2],
            b.dims.grid[0],
            b.dims.grid[1],
            b.dims.grid[2],
            l,
            index,
        ];
        debug_assert_eq!(specials.len(), SPECIALS.len());
        for (r, v) in specials.iter().enumerate() {
            w.regs[r * 32 + l as usize] = u64::from(*v);
        }
    }
    w
}

fn run_block(b: &mut Block, threads: u32) -> Result<(), EmuError> {
    let mut warps: Vec<Warp> = (0..threads.div_ceil(32))
        .map(|i| new_warp(b, i, threads))
        .collect();
    loop {
        for w in warps.iter_mut() {
            run_warp(b, w)?;
        }
        // Every lane now waits at a barrier or has exited.
        let mut waiting: Option<(u32, u32)> = None; // (pc after the barrier, linear tid)
        let mut exited = None;
        for w in &warps {
            for l in 0..32 {
                let tid = w.index * 32 + l as u32;
                match w.lane[l] {
                    Lane::AtBarrier => match waiting {
                        None => waiting = Some((w.pc[l], tid)),
                        Some((pc, _)) if pc != w.pc[l] => {
                            let other = b.kernel.insts[pc as usize - 1].line;
                            return Err(fault(
                                b,
                                tid,
                                w.pc[l] - 1,
                                format!(
                                    "threads of the block wait at different barriers (this one \
                                     and PTX line {other}): __syncthreads in divergent code"
                                ),
                            ));
                        }
                        Some(_) => {}
                    },
                    Lane::Exited => exited = exited.or(Some(tid)),
                    _ => {}
                }
            }
        }
        let Some((pc, tid)) = waiting else {
            return Ok(());
        };
        if let Some(gone) = exited {
            return Err(fault(
                b,
                tid,
                pc - 1,
                format!(
                    "deadlock: threads wait at this barrier but thread {gone} of the block has \
                     exited (__syncthreads after an early return)"
                ),
            ));
        }
        for w in warps.iter_mut() {
            for l in 0..32 {
                if w.lane[l] == Lane::AtBarrier {
                    w.lane[l] = Lane::Ready;
                }
            }
        }
        if let Some(r) = &mut b.race {
            r.barrier();
        }
    }
}

/// Runs `w` until none of its lanes is ready.
fn run_warp(b: &mut Block, w: &mut Warp) -> Result<(), EmuError> {
    let insts = &b.kernel.insts;
    let n = insts.len() as u32;
    loop {
        // The lanes at the lowest program counter among the ready ones run next, together.
        let mut pc = u32::MAX;
        let mut ready = 0u32;
        for l in 0..32 {
            if w.lane[l] == Lane::Ready {
                ready |= 1 << l;
                pc = pc.min(w.pc[l]);
            }
        }
        if ready == 0 {
            return Ok(());
        }
        let mut mask = 0u32;
        for l in 0..32 {
            if ready & (1 << l) != 0 && w.pc[l] == pc {
                mask |= 1 << l;
            }
        }
        let others = ready & !mask;
        if b.executed > b.budget {
            return Err(fault(
                b,
                w.index * 32 + mask.trailing_zeros(),
                pc.min(n.saturating_sub(1)),
                format!(
                    "more than {} thread instructions: an endless loop? \
                     (CONVOY_EMU_MAX_INSTRUCTIONS raises the limit)",
                    b.budget
                ),
            ));
        }
        // Straight-line code runs without rescheduling while no other lane of the warp is
        // ready (the common, converged case): only control flow moves lanes apart.
        loop {
            if pc >= n {
                let tid = w.index * 32 + mask.trailing_zeros();
                return Err(fault(
                    b,
                    tid,
                    n.saturating_sub(1),
                    "ran past the kernel's last instruction".into(),
                ));
            }
            b.executed += u64::from(mask.count_ones());
            b.serial += 1;
            step::step(b, w, pc, mask)?;
            if matches!(insts[pc as usize].op, Op::Bra { .. } | Op::Ret | Op::Bar) {
                // step moved the lanes on.
                break;
            }
            pc += 1;
            if others != 0 {
                for l in 0..32 {
                    if mask & (1 << l) != 0 {
                        w.pc[l] = pc;
                    }
                }
                break;
            }
        }
    }
}

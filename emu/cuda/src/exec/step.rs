//! One warp instruction: the lanes in `mask` (all at the same program counter) execute the
//! instruction there; a guard predicate turns lanes off without stopping their progress.

use super::block::{Block, Lane, Warp, fault, fault_of};
use super::float::{self, ftz};
use super::mma;
use crate::error::{EmuError, FaultKind};
use crate::ptx::SHARED_BASE;
use crate::ptx::ir::*;

/// Runs `body` for each lane set in `mask`, lowest first.
macro_rules! each {
    ($mask:expr, |$l:ident| $body:block) => {{
        let mut m: u32 = $mask;
        while m != 0 {
            let $l = m.trailing_zeros() as usize;
            m &= m - 1;
            $body
        }
    }};
}

#[inline(always)]
fn rd(w: &Warp, s: Src, l: usize) -> u64 {
    match s {
        Src::Reg(r) => w.regs[r as usize * 32 + l],
        Src::Imm(v) => v,
    }
}

#[inline(always)]
fn wr(w: &mut Warp, d: Reg, l: usize, v: u64) {
    w.regs[d as usize * 32 + l] = v;
}

#[inline(always)]
fn trunc(v: u64, bits: Width) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

#[inline(always)]
fn sext(v: u64, bits: Width) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        ((v << (64 - bits)) as i64) >> (64 - bits)
    }
}

#[inline(always)]
fn f32v(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

#[inline(always)]
fn bits32(x: f32) -> u64 {
    u64::from(x.to_bits())
}

pub(crate) fn step(b: &mut Block, w: &mut Warp, pc: u32, mask: u32) -> Result<(), EmuError> {
    let kernel = b.kernel;
    let inst = &kernel.insts[pc as usize];
    let mut active = mask;
    if let Some((p, neg)) = inst.guard {
        active = 0;
        each!(mask, |l| {
            if ((w.regs[p as usize * 32 + l] & 1) != 0) != neg {
                active |= 1 << l;
            }
        });
    }
    let tid0 = |m: u32| w.index * 32 + m.trailing_zeros();
    match inst.op {
        Op::Mov { d, a, bits } => each!(active, |l| {
            let v = trunc(rd(w, a, l), bits);
            wr(w, d, l, v);
        }),
        Op::Pack { d, parts, n, bits } => each!(active, |l| {
            let mut v = 0u64;
            for (k, part) in parts.iter().take(usize::from(n)).enumerate() {
                v |= trunc(rd(w, *part, l), bits) << (usize::from(bits) * k);
            }
            wr(w, d, l, v);
        }),
        Op::Unpack { d, n, bits, a } => each!(active, |l| {
            let v = rd(w, a, l);
            for (k, r) in d.iter().take(usize::from(n)).enumerate() {
                wr(w, *r, l, trunc(v >> (usize::from(bits) * k), bits));
            }
        }),
        Op::CvtBf16x2 { d, a, b: bb } => each!(active, |l| {
            let hi = u64::from(float::f32_to_bf16(f32v(rd(w, a, l))));
            let lo = u64::from(float::f32_to_bf16(f32v(rd(w, bb, l))));
            wr(w, d, l, (hi << 16) | lo);
        }),
        Op::Int {
            op,
            w: width,
            signed,
            d,
            a,
            b: bb,
        } => each!(active, |l| {
            let x = trunc(rd(w, a, l), width);
            let y = trunc(rd(w, bb, l), width);
            let (sx, sy) = (sext(x, width), sext(y, width));
            let v = match op {
                IntOp::Add => x.wrapping_add(y),
                IntOp::Sub => x.wrapping_sub(y),
                IntOp::MulLo => x.wrapping_mul(y),
                IntOp::And => x & y,
                IntOp::Or => x | y,
                IntOp::Xor => x ^ y,
                IntOp::Min if signed => sx.min(sy) as u64,
                IntOp::Max if signed => sx.max(sy) as u64,
                IntOp::Min => x.min(y),
                IntOp::Max => x.max(y),
                // Division by zero: all ones, as the hardware gives (PTX leaves it undefined).
                IntOp::Div if y == 0 => u64::MAX,
                IntOp::Rem if y == 0 => x,
                IntOp::Div if signed => sx.wrapping_div(sy) as u64,
                IntOp::Rem if signed => sx.wrapping_rem(sy) as u64,
                IntOp::Div => x / y,
                IntOp::Rem => x % y,
                // Shift amounts are unsigned and clamp at the width.
                IntOp::Shl => {
                    let s = rd(w, bb, l) as u32;
                    if s >= u32::from(width) { 0 } else { x << s }
                }
                IntOp::Shr => {
                    let s = (rd(w, bb, l) as u32).min(u32::from(width) - 1 + u32::from(!signed));
                    if signed {
                        (sx >> s.min(63)) as u64
                    } else if s >= u32::from(width) {
                        0
                    } else {
                        x >> s
                    }
                }
            };
            wr(w, d, l, trunc(v, width));
        }),
        Op::IntNeg { w: width, d, a } => each!(active, |l| {
            let v = trunc(rd(w, a, l).wrapping_neg(), width);
            wr(w, d, l, v);
        }),
        Op::IntNot { w: width, d, a } => each!(active, |l| {
            let v = trunc(!rd(w, a, l), width);
            wr(w, d, l, v);
        }),
        Op::MulWide {
            signed,
            d,
            a,
            b: bb,
        } => each!(active, |l| {
            let (x, y) = (rd(w, a, l), rd(w, bb, l));
            let v = if signed {
                (i64::from(x as u32 as i32) * i64::from(y as u32 as i32)) as u64
            } else {
                u64::from(x as u32) * u64::from(y as u32)
            };
            wr(w, d, l, v);
        }),
        Op::MadLo {
            w: width,
            d,
            a,
            b: bb,
            c,
        } => each!(active, |l| {
            let v = rd(w, a, l)
                .wrapping_mul(rd(w, bb, l))
                .wrapping_add(rd(w, c, l));
            wr(w, d, l, trunc(v, width));
        }),
        Op::F32 {
            op,
            ftz: z,
            d,
            a,
            b: bb,
            ..
        } => each!(active, |l| {
            let (mut x, mut y) = (f32v(rd(w, a, l)), f32v(rd(w, bb, l)));
            if z {
                (x, y) = (ftz(x), ftz(y));
            }
            let mut r = match op {
                FloatOp::Add => x + y,
                FloatOp::Sub => x - y,
                FloatOp::Mul => x * y,
                FloatOp::Div => x / y,
                FloatOp::Min => float::min32(x, y),
                FloatOp::Max => float::max32(x, y),
            };
            if z {
                r = ftz(r);
            }
            wr(w, d, l, bits32(r));
        }),
        Op::F32Un { op, ftz: z, d, a } => each!(active, |l| {
            let mut x = f32v(rd(w, a, l));
            if z {
                x = ftz(x);
            }
            let mut r = match op {
                FloatUn::Neg => -x,
                FloatUn::Abs => x.abs(),
                FloatUn::Sqrt => x.sqrt(),
                FloatUn::Rcp | FloatUn::RcpApprox => 1.0 / x,
                FloatUn::Ex2Approx => f64::from(x).exp2() as f32,
                FloatUn::Lg2Approx => f64::from(x).log2() as f32,
            };
            if z {
                r = ftz(r);
            }
            wr(w, d, l, bits32(r));
        }),
        Op::Fma32 {
            rnd: Round::Nearest,
            ftz: false,
            d,
            a,
            b: bb,
            c,
        } => {
            let (mut x, mut y, mut z, mut out) = ([0f32; 32], [0f32; 32], [0f32; 32], [0f32; 32]);
            each!(active, |l| {
                x[l] = f32v(rd(w, a, l));
                y[l] = f32v(rd(w, bb, l));
                z[l] = f32v(rd(w, c, l));
            });
            float::fma_rn_lanes(&x, &y, &z, &mut out);
            each!(active, |l| {
                wr(w, d, l, bits32(out[l]));
            });
        }
        Op::Fma32 {
            rnd,
            ftz: z,
            d,
            a,
            b: bb,
            c,
        } => each!(active, |l| {
            let (mut x, mut y, mut s) = (f32v(rd(w, a, l)), f32v(rd(w, bb, l)), f32v(rd(w, c, l)));
            if z {
                (x, y, s) = (ftz(x), ftz(y), ftz(s));
            }
            let mut r = float::fma32(x, y, s, rnd);
            if z {
                r = ftz(r);
            }
            wr(w, d, l, bits32(r));
        }),
        Op::F64 {
            op, d, a, b: bb, ..
        } => each!(active, |l| {
            let (x, y) = (f64::from_bits(rd(w, a, l)), f64::from_bits(rd(w, bb, l)));
            let r = match op {
                FloatOp::Add => x + y,
                FloatOp::Sub => x - y,
                FloatOp::Mul => x * y,
                FloatOp::Div => x / y,
                FloatOp::Min => float::min64(x, y),
                FloatOp::Max => float::max64(x, y),
            };
            wr(w, d, l, r.to_bits());
        }),
        Op::F64Un { op, d, a } => {
            if !matches!(
                op,
                FloatUn::Neg | FloatUn::Abs | FloatUn::Sqrt | FloatUn::Rcp
            ) {
                return Err(fault(
                    b,
                    tid0(active | mask),
                    pc,
                    "f64 .approx function".into(),
                ));
            }
            each!(active, |l| {
                let x = f64::from_bits(rd(w, a, l));
                let r = match op {
                    FloatUn::Neg => -x,
                    FloatUn::Abs => x.abs(),
                    FloatUn::Sqrt => x.sqrt(),
                    _ => 1.0 / x,
                };
                wr(w, d, l, r.to_bits());
            })
        }
        Op::Fma64 {
            rnd,
            d,
            a,
            b: bb,
            c,
        } => {
            if rnd != Round::Nearest {
                return Err(fault(
                    b,
                    tid0(mask),
                    pc,
                    "fma.f64 with directed rounding".into(),
                ));
            }
            each!(active, |l| {
                let (x, y, s) = (
                    f64::from_bits(rd(w, a, l)),
                    f64::from_bits(rd(w, bb, l)),
                    f64::from_bits(rd(w, c, l)),
                );
                wr(w, d, l, x.mul_add(y, s).to_bits());
            })
        }
        Op::Setp {
            cmp,
            ty,
            d,
            a,
            b: bb,
        } => each!(active, |l| {
            let (x, y) = (rd(w, a, l), rd(w, bb, l));
            let ord = match ty {
                CmpTy::S(width) => Some(sext(x, width).cmp(&sext(y, width))),
                CmpTy::U(width) => Some(trunc(x, width).cmp(&trunc(y, width))),
                CmpTy::F32 => f32v(x).partial_cmp(&f32v(y)),
                CmpTy::F64 => f64::from_bits(x).partial_cmp(&f64::from_bits(y)),
            };
            let v = compare(cmp, ord);
            wr(w, d, l, u64::from(v));
        }),
        Op::Selp {
            bits,
            d,
            a,
            b: bb,
            p,
        } => each!(active, |l| {
            let v = if rd(w, p, l) & 1 != 0 {
                rd(w, a, l)
            } else {
                rd(w, bb, l)
            };
            wr(w, d, l, trunc(v, bits));
        }),
        Op::Pred { op, d, a, b: bb } => each!(active, |l| {
            let (x, y) = (rd(w, a, l) & 1, rd(w, bb, l) & 1);
            let v = match op {
                PredOp::And => x & y,
                PredOp::Or => x | y,
                PredOp::Xor => x ^ y,
                PredOp::Not => x ^ 1,
            };
            wr(w, d, l, v);
        }),
        Op::Cvt {
            to,
            from,
            rnd,
            int_rnd,
            sat,
            ftz: z,
            d,
            a,
        } => {
            let mut bad = None;
            each!(active, |l| {
                match convert(to, from, rnd, int_rnd, sat, z, rd(w, a, l)) {
                    Some(v) => wr(w, d, l, v),
                    None => bad = Some(l),
                }
            });
            if let Some(l) = bad {
                return Err(fault(
                    b,
                    w.index * 32 + l as u32,
                    pc,
                    format!("unsupported conversion {from:?} -> {to:?}"),
                ));
            }
        }
        Op::Ld {
            space,
            bytes,
            n,
            signed,
            d,
            addr,
        } => {
            let size = usize::from(bytes) * usize::from(n);
            let mut buf = [0u8; 32];
            each!(active, |l| {
                let at = address(w, addr, l);
                let tid = w.index * 32 + l as u32;
                let data = &mut buf[..size];
                load(b, space, at, data, tid).map_err(|(k, m)| fault_of(k, b, tid, pc, m))?;
                for k in 0..usize::from(n) {
                    let mut v = 0u64;
                    for (i, &byte) in data[k * usize::from(bytes)..(k + 1) * usize::from(bytes)]
                        .iter()
                        .enumerate()
                    {
                        v |= u64::from(byte) << (8 * i);
                    }
                    if signed {
                        v = sext(v, bytes * 8) as u64;
                    }
                    wr(w, d[k], l, v);
                }
            })
        }
        Op::St {
            space,
            bytes,
            n,
            s,
            addr,
        } => {
            let size = usize::from(bytes) * usize::from(n);
            let mut buf = [0u8; 32];
            each!(active, |l| {
                let at = address(w, addr, l);
                let tid = w.index * 32 + l as u32;
                for k in 0..usize::from(n) {
                    let v = rd(w, s[k], l);
                    for i in 0..usize::from(bytes) {
                        buf[k * usize::from(bytes) + i] = (v >> (8 * i)) as u8;
                    }
                }
                store(b, space, at, &buf[..size], tid)
                    .map_err(|(k, m)| fault_of(k, b, tid, pc, m))?;
            })
        }
        // Control flow moves the lanes on itself (run_warp advances the others): taken branches
        // to the target, guarded-off lanes to the next instruction.
        Op::Bra { target } => each!(mask, |l| {
            w.pc[l] = if active & (1 << l) != 0 {
                target
            } else {
                pc + 1
            };
        }),
        Op::Ret => each!(mask, |l| {
            w.pc[l] = pc + 1;
            if active & (1 << l) != 0 {
                w.lane[l] = Lane::Exited;
            }
        }),
        Op::Bar => each!(mask, |l| {
            w.pc[l] = pc + 1;
            if active & (1 << l) != 0 {
                w.lane[l] = Lane::AtBarrier;
            }
        }),
        Op::Shfl {
            mode,
            d,
            p,
            a,
            b: bb,
            c,
            mask: members,
        } => shfl(b, w, pc, active, mode, d, p, a, bb, c, members)?,
        Op::MmaBf16 { d, a, b: bb, c } => {
            let present = present(w);
            if active != present || present != u32::MAX {
                return Err(fault(
                    b,
                    tid0(mask),
                    pc,
                    format!(
                        "mma.sync needs all 32 lanes of the warp converged; lanes {:#010x} \
                         arrived",
                        active
                    ),
                ));
            }
            mma::mma_bf16(w, d, a, bb, c);
        }
    }
    Ok(())
}

/// Lanes of the warp that exist (not beyond the block) and have not exited.
fn present(w: &Warp) -> u32 {
    let mut m = 0;
    for l in 0..32 {
        if matches!(w.lane[l], Lane::Ready | Lane::AtBarrier) {
            m |= 1 << l;
        }
    }
    m
}

fn compare(cmp: Cmp, ord: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::*;
    match (cmp, ord) {
        (Cmp::Num, o) => o.is_some(),
        (Cmp::Nan, o) => o.is_none(),
        (Cmp::Equ | Cmp::Neu | Cmp::Ltu | Cmp::Leu | Cmp::Gtu | Cmp::Geu, None) => true,
        (_, None) => false,
        (Cmp::Eq | Cmp::Equ, Some(o)) => o == Equal,
        (Cmp::Ne | Cmp::Neu, Some(o)) => o != Equal,
        (Cmp::Lt | Cmp::Ltu, Some(o)) => o == Less,
        (Cmp::Le | Cmp::Leu, Some(o)) => o != Greater,
        (Cmp::Gt | Cmp::Gtu, Some(o)) => o == Greater,
        (Cmp::Ge | Cmp::Geu, Some(o)) => o != Less,
    }
}

fn round_int(x: f64, rnd: Option<Round>) -> f64 {
    match rnd {
        Some(Round::Zero) => x.trunc(),
        Some(Round::Down) => x.floor(),
        Some(Round::Up) => x.ceil(),
        _ => x.round_ties_even(),
    }
}

/// `cvt`: `None` for a conversion the interpreter does not implement.
fn convert(
    to: Scalar,
    from: Scalar,
    rnd: Option<Round>,
    int_rnd: bool,
    sat: bool,
    z: bool,
    v: u64,
) -> Option<u64> {
    let float_in = |v: u64| -> Option<f64> {
        Some(match from {
            Scalar::F32 => {
                let x = f32v(v);
                f64::from(if z { ftz(x) } else { x })
            }
            Scalar::F64 => f64::from_bits(v),
            Scalar::Bf16 => f64::from(float::bf16_to_f32(v as u16)),
            Scalar::F16 => f64::from(float::f16_to_f32(v as u16)),
            _ => return None,
        })
    };
    match (to, from) {
        (Scalar::S(tw) | Scalar::U(tw), Scalar::S(fw)) => {
            (!sat).then(|| trunc(sext(v, fw) as u64, tw))
        }
        (Scalar::S(tw) | Scalar::U(tw), Scalar::U(fw)) => (!sat).then(|| trunc(trunc(v, fw), tw)),
        (Scalar::S(tw), _) => {
            // Float to signed: round as asked, saturate to the range, NaN to 0 (as `as` does).
            let x = round_int(float_in(v)?, rnd);
            let r: i64 = match tw {
                8 => x as i8 as i64,
                16 => x as i16 as i64,
                32 => x as i32 as i64,
                _ => x as i64,
            };
            Some(trunc(r as u64, tw))
        }
        (Scalar::U(tw), _) => {
            let x = round_int(float_in(v)?, rnd);
            let r: u64 = match tw {
                8 => x as u8 as u64,
                16 => x as u16 as u64,
                32 => x as u32 as u64,
                _ => x as u64,
            };
            Some(r)
        }
        (_, Scalar::S(fw)) | (_, Scalar::U(fw)) => {
            if rnd.is_some_and(|r| r != Round::Nearest) {
                return None;
            }
            let signed = matches!(from, Scalar::S(_));
            let x = trunc(v, fw);
            Some(match to {
                Scalar::F32 if signed => bits32(sext(x, fw) as f32),
                Scalar::F32 => bits32(x as f32),
                Scalar::F64 if signed => (sext(x, fw) as f64).to_bits(),
                Scalar::F64 => (x as f64).to_bits(),
                _ => return None,
            })
        }
        (Scalar::F32, _) => {
            let mut x = float_in(v)?;
            if int_rnd {
                x = round_int(x, rnd);
            } else if from == Scalar::F64 && rnd.is_some_and(|r| r != Round::Nearest) {
                return None;
            }
            let mut r = x as f32;
            if sat {
                r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
            }
            if z {
                r = ftz(r);
            }
            Some(bits32(r))
        }
        (Scalar::F64, _) => {
            let mut x = float_in(v)?;
            if int_rnd {
                x = round_int(x, rnd);
            }
            if sat {
                x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
            }
            Some(x.to_bits())
        }
        (Scalar::Bf16, Scalar::F32) if rnd == Some(Round::Nearest) => {
            Some(u64::from(float::f32_to_bf16(f32v(v))))
        }
        (Scalar::F16, Scalar::F32) if rnd == Some(Round::Nearest) => {
            Some(u64::from(float::f32_to_f16(f32v(v))))
        }
        _ => None,
    }
}

fn address(w: &Warp, a: Addr, l: usize) -> u64 {
    let base = a.base.map_or(0, |r| w.regs[r as usize * 32 + l]);
    base.wrapping_add(a.offset as u64)
}

type Refusal = (FaultKind, String);

fn misaligned(at: u64, size: usize) -> Result<(), Refusal> {
    if at.is_multiple_of(size as u64) {
        Ok(())
    } else {
        Err((
            FaultKind::Misaligned,
            format!("misaligned address {at:#x} for a {size}-byte access"),
        ))
    }
}

fn shared_range(b: &Block, at: u64, size: usize, what: &str) -> Result<usize, Refusal> {
    let off = at.wrapping_sub(SHARED_BASE);
    if at < SHARED_BASE || off + size as u64 > b.shared.len() as u64 {
        return Err((
            FaultKind::OutOfBounds,
            format!(
                "out-of-bounds shared {what} of {size} bytes at {at:#x} (the block has {} bytes \
                 of shared memory from {SHARED_BASE:#x})",
                b.shared.len()
            ),
        ));
    }
    Ok(off as usize)
}

fn global_oob(what: &str, size: usize, at: u64) -> Refusal {
    (
        FaultKind::OutOfBounds,
        format!(
            "out-of-bounds global {what} of {size} bytes at {at:#x} (no live allocation holds it)"
        ),
    )
}

fn race(msg: String) -> Refusal {
    (FaultKind::Other, msg)
}

fn load(b: &mut Block, space: Space, at: u64, out: &mut [u8], tid: u32) -> Result<(), Refusal> {
    let size = out.len();
    misaligned(at, size)?;
    match space {
        Space::Global => {
            let data = b
                .mem
                .slice(at, size)
                .map_err(|_| global_oob("read", size, at))?;
            out.copy_from_slice(data);
        }
        Space::Shared => {
            let off = shared_range(b, at, size, "read")?;
            if let Some(r) = &mut b.race {
                r.access(off, size, tid, false, b.serial).map_err(race)?;
            }
            out.copy_from_slice(&b.shared[off..off + size]);
        }
        Space::Param => {
            let off = at as usize;
            let data = b.params.get(off..off + size).ok_or_else(|| {
                (
                    FaultKind::OutOfBounds,
                    format!("parameter read past the parameters at {at}"),
                )
            })?;
            out.copy_from_slice(data);
        }
    }
    Ok(())
}

fn store(b: &mut Block, space: Space, at: u64, data: &[u8], tid: u32) -> Result<(), Refusal> {
    let size = data.len();
    misaligned(at, size)?;
    match space {
        Space::Global => b
            .mem
            .slice_mut(at, size)
            .map_err(|_| global_oob("write", size, at))?
            .copy_from_slice(data),
        Space::Shared => {
            let off = shared_range(b, at, size, "write")?;
            if let Some(r) = &mut b.race {
                r.access(off, size, tid, true, b.serial).map_err(race)?;
            }
            b.shared[off..off + size].copy_from_slice(data);
        }
        Space::Param => return Err((FaultKind::Other, "store to the parameter space".into())),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn shfl(
    b: &mut Block,
    w: &mut Warp,
    pc: u32,
    active: u32,
    mode: ShflMode,
    d: Reg,
    p: Option<Reg>,
    a: Src,
    bb: Src,
    c: Src,
    members: Src,
) -> Result<(), EmuError> {
    if active == 0 {
        return Ok(());
    }
    let first = active.trailing_zeros() as usize;
    let member_mask = rd(w, members, first) as u32;
    let present = present(w);
    let missing = member_mask & present & !active;
    if missing != 0 {
        return Err(fault(
            b,
            w.index * 32 + first as u32,
            pc,
            format!(
                "shfl.sync with member mask {member_mask:#010x} reached by lanes {active:#010x} \
                 only: lanes {missing:#010x} are elsewhere (divergent warp collective)"
            ),
        ));
    }
    let mut vals = [0u64; 32];
    each!(active, |l| {
        vals[l] = rd(w, a, l);
    });
    let mut out = [(0u64, false); 32];
    let mut bad = None;
    each!(active, |l| {
        let lane = l as u32;
        let bval = rd(w, bb, l) as u32 & 31;
        let cv = rd(w, c, l) as u32;
        let clamp = cv & 31;
        let seg = (cv >> 8) & 31;
        let max_lane = (lane & seg) | (clamp & !seg);
        let min_lane = lane & seg;
        let (j, ok) = match mode {
            ShflMode::Up => {
                let j = lane as i32 - bval as i32;
                (j, j >= max_lane as i32)
            }
            ShflMode::Down => {
                let j = (lane + bval) as i32;
                (j, j <= max_lane as i32)
            }
            ShflMode::Bfly => {
                let j = (lane ^ bval) as i32;
                (j, j <= max_lane as i32)
            }
            ShflMode::Idx => {
                let j = (min_lane | (bval & !seg)) as i32;
                (j, j <= max_lane as i32)
            }
        };
        let src = if ok { j as usize } else { l };
        if active & (1 << src) == 0 {
            bad = Some((l, src));
        }
        out[l] = (vals[src], ok);
    });
    if let Some((l, src)) = bad {
        return Err(fault(
            b,
            w.index * 32 + l as u32,
            pc,
            format!("shfl.sync reads lane {src}, which did not execute it"),
        ));
    }
    each!(active, |l| {
        wr(w, d, l, out[l].0 & 0xffff_ffff);
        if let Some(p) = p {
            wr(w, p, l, u64::from(out[l].1));
        }
    });
    Ok(())
}

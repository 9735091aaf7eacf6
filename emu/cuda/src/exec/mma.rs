//! `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: D = A·B + C for a 16×16 bf16 A, a
//! 16×8 bf16 B and a 16×8 f32 C spread over the 32 lanes in the fragment layouts of the PTX
//! ISA (section "Matrix Fragments for mma.m16n8k16 with floating point type"). With g =
//! lane / 4 and t = lane % 4, each lane holds:
//! - A: reg 0 = row g, columns 2t, 2t+1 (low half first); reg 1 = row g+8, same columns;
//!   reg 2 = row g, columns 2t+8, 2t+9; reg 3 = row g+8, columns 2t+8, 2t+9;
//! - B: reg 0 = rows (k) 2t, 2t+1 of column g; reg 1 = rows 2t+8, 2t+9 of column g;
//! - C, D: rows g (elements 0, 1) and g+8 (2, 3), columns 2t and 2t+1.
//!
//! Products of bf16 values are exact; the 16 products and C are summed in f64 and rounded once
//! to f32. The tensor cores' own summation truncates differently; the GPU tests' tolerances
//! cover both.

use super::block::Warp;
use crate::ptx::ir::{Reg, Src};

fn bf16(v: u64, high: bool) -> f64 {
    let h = if high { (v >> 16) as u16 } else { v as u16 };
    f64::from(f32::from_bits(u32::from(h) << 16))
}

pub(crate) fn mma_bf16(w: &mut Warp, d: [Reg; 4], a: [Reg; 4], b: [Reg; 2], c: [Src; 4]) {
    let reg = |w: &Warp, r: Reg, l: usize| w.regs[r as usize * 32 + l];
    let mut am = [[0f64; 16]; 16];
    let mut bm = [[0f64; 8]; 16];
    let mut cm = [[0f64; 8]; 16];
    for l in 0..32 {
        let (g, t) = (l / 4, l % 4);
        for (k, &(row, col)) in [
            (g, 2 * t),
            (g + 8, 2 * t),
            (g, 2 * t + 8),
            (g + 8, 2 * t + 8),
        ]
        .iter()
        .enumerate()
        {
            let v = reg(w, a[k], l);
            am[row][col] = bf16(v, false);
            am[row][col + 1] = bf16(v, true);
        }
        for (k, &row) in [2 * t, 2 * t + 8].iter().enumerate() {
            let v = reg(w, b[k], l);
            bm[row][g] = bf16(v, false);
            bm[row + 1][g] = bf16(v, true);
        }
        for (k, &(row, col)) in [
            (g, 2 * t),
            (g, 2 * t + 1),
            (g + 8, 2 * t),
            (g + 8, 2 * t + 1),
        ]
        .iter()
        .enumerate()
        {
            let v = match c[k] {
                Src::Reg(r) => reg(w, r, l),
                Src::Imm(v) => v,
            };
            cm[row][col] = f64::from(f32::from_bits(v as u32));
        }
    }
    let mut out = [[0f32; 8]; 16];
    for i in 0..16 {
        for j in 0..8 {
            let mut s = cm[i][j];
            for k in 0..16 {
                s += am[i][k] * bm[k][j];
            }
            out[i][j] = s as f32;
        }
    }
    for l in 0..32 {
        let (g, t) = (l / 4, l % 4);
        for (k, &(row, col)) in [
            (g, 2 * t),
            (g, 2 * t + 1),
            (g + 8, 2 * t),
            (g + 8, 2 * t + 1),
        ]
        .iter()
        .enumerate()
        {
            w.regs[d[k] as usize * 32 + l] = u64::from(out[row][col].to_bits());
        }
    }
}

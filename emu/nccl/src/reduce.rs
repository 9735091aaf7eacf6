//! The arithmetic of reductions, on the little-endian bytes of each rank's buffer.
//!
//! Deterministic by construction: element by element, rank 0's value combined with rank 1's,
//! then rank 2's, and so on, whatever order the contributions arrived in. f32 and f64 are
//! accumulated in their own type (as NCCL does, so a 2-rank sum is bit-identical to NCCL's);
//! f16 and bf16 are accumulated in f32 and rounded once at the end (NCCL rounds after every
//! step: results may differ from a GPU's in the last bit). Integers wrap on overflow. `avg` is
//! the sum divided by the number of ranks (integers: truncated). `max`/`min` of floats ignore a
//! NaN operand, as `fmaxf`/`fminf` do.

use crate::abi::{DataType, RedOp};

/// Reduces `inputs` (one per rank, in rank order, each a whole number of `dtype` elements of the
/// same length) with `op`.
pub fn reduce(dtype: DataType, op: RedOp, inputs: &[&[u8]]) -> Vec<u8> {
    match dtype {
        DataType::Int8 => fold::<i8>(op, inputs),
        DataType::Uint8 => fold::<u8>(op, inputs),
        DataType::Int32 => fold::<i32>(op, inputs),
        DataType::Uint32 => fold::<u32>(op, inputs),
        DataType::Int64 => fold::<i64>(op, inputs),
        DataType::Uint64 => fold::<u64>(op, inputs),
        DataType::Float16 => fold::<F16>(op, inputs),
        DataType::Float32 => fold::<f32>(op, inputs),
        DataType::Float64 => fold::<f64>(op, inputs),
        DataType::Bfloat16 => fold::<Bf16>(op, inputs),
    }
}

/// An element type as stored (`SIZE` bytes) and the type it is accumulated in.
trait Element {
    const SIZE: usize;
    type Acc: Arith;
    fn load(bytes: &[u8]) -> Self::Acc;
    fn store(acc: Self::Acc, out: &mut Vec<u8>);
}

trait Arith: Copy {
    fn add(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    fn max(self, other: Self) -> Self;
    fn min(self, other: Self) -> Self;
    fn div_ranks(self, ranks: usize) -> Self;
}

fn fold<E: Element>(op: RedOp, inputs: &[&[u8]]) -> Vec<u8> {
    let Some(first) = inputs.first() else {
        return Vec::new();
    };
    let mut acc: Vec<E::Acc> = first.chunks_exact(E::SIZE).map(E::load).collect();
    for input in &inputs[1..] {
        let combine: fn(E::Acc, E::Acc) -> E::Acc = match op {
            RedOp::Sum | RedOp::Avg => Arith::add,
            RedOp::Prod => Arith::mul,
            RedOp::Max => Arith::max,
            RedOp::Min => Arith::min,
        };
        for (a, x) in acc.iter_mut().zip(input.chunks_exact(E::SIZE)) {
            *a = combine(*a, E::load(x));
        }
    }
    let mut out = Vec::with_capacity(first.len());
    for a in acc {
        let a = match op {
            RedOp::Avg => a.div_ranks(inputs.len()),
            _ => a,
        };
        E::store(a, &mut out);
    }
    out
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = size_of::<$t>();
            type Acc = $t;
            fn load(bytes: &[u8]) -> $t {
                let mut b = [0; size_of::<$t>()];
                b.copy_from_slice(&bytes[..size_of::<$t>()]);
                <$t>::from_le_bytes(b)
            }
            fn store(acc: $t, out: &mut Vec<u8>) {
                out.extend_from_slice(&acc.to_le_bytes());
            }
        }

        impl Arith for $t {
            fn add(self, other: $t) -> $t {
                self.wrapping_add(other)
            }
            fn mul(self, other: $t) -> $t {
                self.wrapping_mul(other)
            }
            fn max(self, other: $t) -> $t {
                Ord::max(self, other)
            }
            fn min(self, other: $t) -> $t {
                Ord::min(self, other)
            }
            fn div_ranks(self, ranks: usize) -> $t {
                // Any rank count divides in i128 without overflow; the quotient's magnitude is
                // at most the sum's, so it fits back.
                (self as i128 / ranks.max(1) as i128) as $t
            }
        }
    )*};
}

integer!(i8, u8, i32, u32, i64, u64);

macro_rules! float {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = size_of::<$t>();
            type Acc = $t;
            fn load(bytes: &[u8]) -> $t {
                let mut b = [0; size_of::<$t>()];
                b.copy_from_slice(&bytes[..size_of::<$t>()]);
                <$t>::from_le_bytes(b)
            }
            fn store(acc: $t, out: &mut Vec<u8>) {
                out.extend_from_slice(&acc.to_le_bytes());
            }
        }

        impl Arith for $t {
            fn add(self, other: $t) -> $t {
                self + other
            }
            fn mul(self, other: $t) -> $t {
                self * other
            }
            fn max(self, other: $t) -> $t {
                <$t>::max(self, other)
            }
            fn min(self, other: $t) -> $t {
                <$t>::min(self, other)
            }
            fn div_ranks(self, ranks: usize) -> $t {
                self / ranks as $t
            }
        }
    )*};
}

float!(f32, f64);

/// IEEE binary16, accumulated in f32.
struct F16;

impl Element for F16 {
    const SIZE: usize = 2;
    type Acc = f32;
    fn load(bytes: &[u8]) -> f32 {
        f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]]))
    }
    fn store(acc: f32, out: &mut Vec<u8>) {
        out.extend_from_slice(&f32_to_f16(acc).to_le_bytes());
    }
}

/// bfloat16, accumulated in f32.
struct Bf16;

impl Element for Bf16 {
    const SIZE: usize = 2;
    type Acc = f32;
    fn load(bytes: &[u8]) -> f32 {
        bf16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]]))
    }
    fn store(acc: f32, out: &mut Vec<u8>) {
        out.extend_from_slice(&f32_to_bf16(acc).to_le_bytes());
    }
}

/// binary16 bits to the f32 of the same value (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: man · 2^-24, exact in f32.
            let v = man as f32 / 16_777_216.0;
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 to binary16 bits, rounded to nearest, ties to even; overflow becomes infinity and NaN
/// stays NaN.
pub fn f32_to_f16(value: f32) -> u16 {
    let x = value.to_bits();
    let sign = (x & 0x8000_0000) >> 16;
    let exp = x & 0x7f80_0000;
    let man = x & 0x007f_ffff;
    if exp == 0x7f80_0000 {
        let nan = if man == 0 { 0 } else { 0x0200 };
        return (sign | 0x7c00 | nan | (man >> 13)) as u16;
    }
    let half_exp = (exp >> 23) as i32 - 127 + 15;
    if half_exp >= 0x1f {
        return (sign | 0x7c00) as u16;
    }
    if half_exp <= 0 {
        if 14 - half_exp > 24 {
            return sign as u16;
        }
        let man = man | 0x0080_0000;
        let shift = (14 - half_exp) as u32;
        let mut half_man = man >> shift;
        let round = 1u32 << (shift - 1);
        if man & round != 0 && man & (3 * round - 1) != 0 {
            half_man += 1;
        }
        return (sign | half_man) as u16;
    }
    let bits = sign | ((half_exp as u32) << 10) | (man >> 13);
    let round = 0x0000_1000;
    if man & round != 0 && man & (3 * round - 1) != 0 {
        // A carry out of the mantissa correctly bumps the exponent (up to infinity).
        (bits + 1) as u16
    } else {
        bits as u16
    }
}

/// bfloat16 bits to f32 (exact).
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// f32 to bfloat16 bits, rounded to nearest, ties to even; NaN stays NaN.
pub fn f32_to_bf16(value: f32) -> u16 {
    let x = value.to_bits();
    if value.is_nan() {
        return ((x >> 16) | 0x0040) as u16;
    }
    let round = 0x7fff + ((x >> 16) & 1);
    (x.wrapping_add(round) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy, const N: usize>(v: &[T], le: fn(T) -> [u8; N]) -> Vec<u8> {
        v.iter().flat_map(|&x| le(x)).collect()
    }

    #[test]
    fn f16_round_trips_every_value() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan(), "{h:#x}");
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#x} = {f}");
            }
        }
    }

    #[test]
    fn f16_known_values_and_rounding() {
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "rounds up to infinity");
        assert_eq!(f32_to_f16(0.1), 0x2e66);
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(
            f32_to_f16(2f32.powi(-25)),
            0x0000,
            "a tie rounds to even (zero)"
        );
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-25)), 0x0001);
        // 1 + 2^-11 is halfway between 1 and the next f16: ties to even (1).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn bf16_known_values_and_rounding() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        // 1 + 2^-8 is halfway: ties to even.
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        for b in [0u16, 0x8000, 0x0001, 0x7f7f, 0xc2f7] {
            assert_eq!(f32_to_bf16(bf16_to_f32(b)), b);
        }
    }

    #[test]
    fn every_op_on_floats_and_integers() {
        let a = bytes(&[1.5f32, -2.0, 8.0], f32::to_le_bytes);
        let b = bytes(&[2.5f32, 4.0, -1.0], f32::to_le_bytes);
        let c = bytes(&[-1.0f32, 1.0, 2.0], f32::to_le_bytes);
        let ins = [&a[..], &b[..], &c[..]];
        let f = |op| -> Vec<f32> {
            reduce(DataType::Float32, op, &ins)
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                .collect()
        };
        assert_eq!(f(RedOp::Sum), [3.0, 3.0, 9.0]);
        assert_eq!(f(RedOp::Prod), [-3.75, -8.0, -16.0]);
        assert_eq!(f(RedOp::Max), [2.5, 4.0, 8.0]);
        assert_eq!(f(RedOp::Min), [-1.0, -2.0, -1.0]);
        assert_eq!(f(RedOp::Avg), [1.0, 1.0, 3.0]);

        let a = bytes(&[i32::MAX, -7, 5], i32::to_le_bytes);
        let b = bytes(&[1, 2, 5], i32::to_le_bytes);
        let i = |op| -> Vec<i32> {
            reduce(DataType::Int32, op, &[&a, &b])
                .chunks_exact(4)
                .map(|x| i32::from_le_bytes(x.try_into().unwrap()))
                .collect()
        };
        assert_eq!(i(RedOp::Sum), [i32::MIN, -5, 10], "wraps");
        assert_eq!(i(RedOp::Avg), [i32::MIN / 2, -2, 5], "truncates");
        assert_eq!(i(RedOp::Max), [i32::MAX, 2, 5]);
        assert_eq!(
            reduce(DataType::Uint8, RedOp::Sum, &[&[200, 1], &[100, 2]]),
            [44, 3]
        );
    }

    #[test]
    fn sums_run_in_rank_order() {
        // (1e8 + 1) - 1e8 in f32 is 0 but (1e8 - 1e8) + 1 is 1: the order is rank order.
        let ins: Vec<Vec<u8>> = [1e8f32, 1.0, -1e8]
            .iter()
            .map(|x| x.to_le_bytes().to_vec())
            .collect();
        let refs: Vec<&[u8]> = ins.iter().map(|v| &v[..]).collect();
        assert_eq!(
            reduce(DataType::Float32, RedOp::Sum, &refs),
            0f32.to_le_bytes()
        );
    }

    #[test]
    fn half_types_accumulate_in_f32() {
        let h = |x: f32| f32_to_f16(x).to_le_bytes().to_vec();
        let out = reduce(DataType::Float16, RedOp::Sum, &[&h(1.0), &h(2.0), &h(0.5)]);
        assert_eq!(f16_to_f32(u16::from_le_bytes([out[0], out[1]])), 3.5);
        let b = |x: f32| f32_to_bf16(x).to_le_bytes().to_vec();
        let out = reduce(DataType::Bfloat16, RedOp::Avg, &[&b(1.0), &b(2.0)]);
        assert_eq!(bf16_to_f32(u16::from_le_bytes([out[0], out[1]])), 1.5);
    }
}

//! Floating-point semantics the host's arithmetic does not give directly: rounding toward ±∞
//! and zero for `fma`, flush-to-zero, the `.approx` functions (computed correctly rounded
//! through f64), and the narrow formats bf16 and f16.

use crate::ptx::ir::Round;

/// Subnormal inputs and results become zero of the same sign (`.ftz`).
pub fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

pub fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

pub fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

/// a·b + c rounded once to nearest, without a libm call: a·b is exact in f64, the sum is
/// rounded to odd in f64 (53 ≥ 24 + 2 bits, so the final rounding to f32 is then correct, with
/// no double-rounding error).
#[inline(always)]
pub fn fma32_rn(a: f32, b: f32, c: f32) -> f32 {
    let p = f64::from(a) * f64::from(b);
    let cc = f64::from(c);
    let s = p + cc;
    if !s.is_finite() {
        return a.mul_add(b, c);
    }
    let bb = s - p;
    let e = (p - (s - bb)) + (cc - bb);
    let bits = s.to_bits();
    if e != 0.0 && bits & 1 == 0 {
        // Inexact and even: step to the odd neighbour on the side of the exact value.
        let away = (e > 0.0) == (s > 0.0);
        return f64::from_bits(if away { bits + 1 } else { bits - 1 }) as f32;
    }
    s as f32
}

/// `out[i] = x[i]·y[i] + z[i]` rounded once to nearest for a whole warp: the hardware's fused
/// multiply-add where the CPU has one (the emulated GEMMs spend most of their time here),
/// [`fma32_rn`] elsewhere. Both are the correctly rounded result.
pub fn fma_rn_lanes(x: &[f32; 32], y: &[f32; 32], z: &[f32; 32], out: &mut [f32; 32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has FMA and AVX2 (checked just above), the only requirement of a
        // `target_feature` function; the arrays are plain values.
        unsafe { fma_lanes_hw(x, y, z, out) };
        return;
    }
    for i in 0..32 {
        out[i] = fma32_rn(x[i], y[i], z[i]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma,avx2")]
fn fma_lanes_hw(x: &[f32; 32], y: &[f32; 32], z: &[f32; 32], out: &mut [f32; 32]) {
    for i in 0..32 {
        out[i] = x[i].mul_add(y[i], z[i]);
    }
}

/// a·b + c rounded once in direction `rnd` (IEEE 754 fusedMultiplyAdd).
#[inline]
pub fn fma32(a: f32, b: f32, c: f32, rnd: Round) -> f32 {
    if rnd == Round::Nearest {
        return fma32_rn(a, b, c);
    }
    let r = a.mul_add(b, c);
    if rnd == Round::Nearest || r.is_nan() {
        return r;
    }
    // The exact value is p + cc (p is exact in f64: 24 + 24 significant bits); two-sum splits
    // p + cc into s + e exactly, which says on which side of r the exact value lies.
    let p = f64::from(a) * f64::from(b);
    let cc = f64::from(c);
    if p.is_infinite() || cc.is_infinite() {
        return r;
    }
    let s = p + cc;
    let bb = s - p;
    let e = (p - (s - bb)) + (cc - bb);
    if s == 0.0 && e == 0.0 {
        // An exact zero (IEEE 754 6.3): zeros of one sign keep it; otherwise −0 only when
        // rounding down.
        if p == 0.0 && cc == 0.0 && p.is_sign_negative() == cc.is_sign_negative() {
            return p as f32;
        }
        return if rnd == Round::Down { -0.0 } else { 0.0 };
    }
    let diff = s - f64::from(r);
    let below = diff < 0.0 || (diff == 0.0 && e < 0.0);
    let above = diff > 0.0 || (diff == 0.0 && e > 0.0);
    if r.is_infinite() {
        // Round-to-nearest overflowed; directed modes may stop at the largest finite value.
        let toward_max = match rnd {
            Round::Down => r > 0.0,
            Round::Up => r < 0.0,
            Round::Zero => true,
            Round::Nearest => false,
        };
        return if toward_max { f32::MAX.copysign(r) } else { r };
    }
    match rnd {
        Round::Down if below => next_down(r),
        Round::Up if above => next_up(r),
        Round::Zero if (r > 0.0 && below) || (r < 0.0 && above) => {
            if r > 0.0 {
                next_down(r)
            } else {
                next_up(r)
            }
        }
        _ => r,
    }
}

/// IEEE 754-2019 minimumNumber/maximumNumber, as PTX `min`/`max`: a NaN operand yields the
/// other one, and −0 orders below +0.
pub fn min32(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        return b;
    }
    if b.is_nan() {
        return a;
    }
    if a == 0.0 && b == 0.0 {
        return if a.is_sign_negative() { a } else { b };
    }
    if a < b { a } else { b }
}

pub fn max32(a: f32, b: f32) -> f32 {
    if a.is_nan() {
        return b;
    }
    if b.is_nan() {
        return a;
    }
    if a == 0.0 && b == 0.0 {
        return if a.is_sign_positive() { a } else { b };
    }
    if a > b { a } else { b }
}

pub fn min64(a: f64, b: f64) -> f64 {
    if a.is_nan() {
        return b;
    }
    if b.is_nan() {
        return a;
    }
    if a < b || (a == b && a.is_sign_negative()) {
        a
    } else {
        b
    }
}

pub fn max64(a: f64, b: f64) -> f64 {
    if a.is_nan() {
        return b;
    }
    if b.is_nan() {
        return a;
    }
    if a > b || (a == b && a.is_sign_positive()) {
        a
    } else {
        b
    }
}

/// The nearest bf16 (ties to even), as `cvt.rn.bf16.f32`; NaN stays a quiet NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// The nearest binary16 (ties to even), as `cvt.rn.f16.f32`.
pub fn f32_to_f16(x: f32) -> u16 {
    let u = x.to_bits();
    let sign = ((u >> 16) & 0x8000) as u16;
    if x.is_nan() {
        return sign | 0x7e00;
    }
    let a = x.abs();
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 2.0f32.powi(-14) {
        // Subnormal half: multiples of 2^-24, rounded to nearest even by the f32 addition of
        // a constant that puts the unit in the last place at 2^-24.
        let scaled = a * 2.0f32.powi(24);
        return sign | scaled.round_ties_even() as u16;
    }
    let bits = a.to_bits();
    let exp = ((bits >> 23) as i32) - 127 + 15;
    let mant = bits & 0x7f_ffff;
    let mut h = ((exp as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1) {
        h += 1;
    }
    sign | h as u16
}

pub fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = (h >> 10) & 0x1f;
    let mant = f32::from(h & 0x3ff);
    match exp {
        0 => sign * mant * 2.0f32.powi(-24),
        31 if mant == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + mant / 1024.0) * 2.0f32.powi(i32::from(e) - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fma_rounds_toward_minus_infinity() {
        // 1 + 2^-30 is not an f32: rounding down gives 1, up gives the next float.
        let tiny = 2.0f32.powi(-30);
        assert_eq!(fma32(1.0, 1.0, tiny, Round::Down), 1.0);
        assert_eq!(fma32(1.0, 1.0, tiny, Round::Up), next_up(1.0));
        assert_eq!(fma32(1.0, 1.0, -tiny, Round::Down), next_down(1.0));
        assert_eq!(fma32(1.0, 1.0, -tiny, Round::Zero), next_down(1.0));
        assert_eq!(fma32(-1.0, 1.0, tiny, Round::Zero), next_up(-1.0));
        assert!(
            fma32(1.0, 1.0, -1.0, Round::Down).is_sign_negative(),
            "exact zero is -0"
        );
        assert_eq!(
            fma32(3.0, 0.5, 0.25, Round::Down),
            1.75,
            "exact results stay"
        );
    }

    #[test]
    fn fma_to_nearest_matches_the_libm_fma_on_hard_cases() {
        // Products and addends whose exact sums sit near f32 rounding midpoints, and random
        // bit patterns over many exponents.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut cases = vec![
            (1.0 + 2.0f32.powi(-23), 1.0 - 2.0f32.powi(-24), -1.0),
            (
                1.0 + 2.0f32.powi(-12),
                1.0 + 2.0f32.powi(-12),
                2.0f32.powi(-24),
            ),
            (f32::MAX, 2.0, -f32::MAX),
            (1e-30, 1e-30, 1e-45),
            (3.0, 0.1, -0.3),
        ];
        for _ in 0..200_000 {
            let r = next();
            let f = |bits: u64| f32::from_bits((bits as u32 & 0x8fff_ffff) | 0x3000_0000);
            cases.push((
                f(r),
                f(r >> 21),
                f(r >> 42) * if r & 1 == 0 { 1.0 } else { -1e-7 },
            ));
        }
        for (a, b, c) in cases {
            let want = a.mul_add(b, c);
            let got = fma32_rn(a, b, c);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "fma({a:e}, {b:e}, {c:e}) = {got:e}, libm {want:e}"
            );
        }
    }

    #[test]
    fn narrow_formats_round_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(
            bf16_to_f32(f32_to_bf16(1.0 + 2.0f32.powi(-8))),
            1.0,
            "tie to even"
        );
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f16_to_f32(f32_to_f16(2.0f32.powi(-24))), 2.0f32.powi(-24));
        for h in [0x0001u16, 0x03ff, 0x0400, 0x3c01, 0x7bff, 0x8400, 0xc000] {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#x} round-trips");
        }
    }
}

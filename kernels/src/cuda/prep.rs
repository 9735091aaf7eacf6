//! Host-side preparation for the kernels whose launch needs more than the raw buffers: the
//! token bucketing of the embedding backward, AdamW's per-step scalars, and the size of the
//! gradient-norm scratch buffer. Pure CPU code, tested without a GPU.

/// Elements per partial sum of `gradnorm.cu` (its `GRADNORM_CHUNK`; a test checks they agree).
pub const GRADNORM_CHUNK: usize = 16384;

/// Length of the `double` scratch buffer `partials` of `global_norm_partials` for `n` gradients
/// (also the number of chunks, i.e. the natural grid size of that kernel).
pub fn gradnorm_partials(n: usize) -> usize {
    n.div_ceil(GRADNORM_CHUNK)
}

/// The positions of each distinct token of `inp [B, T]`, for `encoder_backward_wte`
/// (`encoder.cu`): upload the three arrays as `u32` buffers and launch one block per bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenBuckets {
    /// `[U]`: the distinct token ids, ascending.
    pub tokens: Vec<u32>,
    /// `[U + 1]`: bucket `u` is `positions[offsets[u]..offsets[u + 1]]`; `offsets[U] = B·T`.
    pub offsets: Vec<u32>,
    /// `[B·T]`: flat positions `bt = b·T + t`, ascending within each bucket.
    pub positions: Vec<u32>,
}

impl TokenBuckets {
    /// Buckets the token ids `inp [B·T]` of a vocabulary of `vocab`. Panics on an id `≥ vocab`,
    /// like the CPU encoder (the kernel would write outside `dwte`), and on more than `u32::MAX`
    /// positions.
    pub fn new(inp: &[u32], vocab: usize) -> TokenBuckets {
        assert!(
            u32::try_from(inp.len()).is_ok(),
            "encoder: B·T = {} positions do not fit the u32 bucket arrays",
            inp.len()
        );
        if let Some(&bad) = inp.iter().find(|&&tok| tok as usize >= vocab) {
            panic!("encoder: token id {bad} out of range for a vocabulary of {vocab}");
        }
        // (token, position) sorted by token then position: the CPU's order of accumulation.
        let mut pairs: Vec<(u32, u32)> = inp
            .iter()
            .enumerate()
            .map(|(bt, &tok)| (tok, bt as u32))
            .collect();
        pairs.sort_unstable();
        let mut buckets = TokenBuckets {
            tokens: Vec::new(),
            offsets: Vec::new(),
            positions: Vec::with_capacity(pairs.len()),
        };
        for (i, &(tok, bt)) in pairs.iter().enumerate() {
            if buckets.tokens.last() != Some(&tok) {
                buckets.tokens.push(tok);
                buckets.offsets.push(i as u32);
            }
            buckets.positions.push(bt);
        }
        buckets.offsets.push(pairs.len() as u32);
        buckets
    }

    /// `U`, the number of distinct tokens (buckets).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The scalar arguments of `adamw_update` (`optim.cu`) for one parameter group and step,
/// computed in f64 and rounded exactly as `convoy_kernels::optim::adamw_update` does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamwScalars {
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    /// `lr / (1 - β1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - β2^t)`.
    pub bc2_sqrt: f32,
    /// `1 - lr·weight_decay`.
    pub decay: f32,
}

impl AdamwScalars {
    /// For step `t` (1-based) with the group's `weight_decay`.
    pub fn new(lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, t: u64) -> Self {
        assert!(t >= 1, "adamw: the step count t is 1-based");
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        let (b1, b2) = (f64::from(beta1), f64::from(beta2));
        AdamwScalars {
            beta1,
            beta2,
            one_minus_beta1: (1.0 - b1) as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            eps,
            step_size: (f64::from(lr) / (1.0 - b1.powi(t))) as f32,
            bc2_sqrt: (1.0 - b2.powi(t)).sqrt() as f32,
            decay: (1.0 - f64::from(lr) * f64::from(weight_decay)) as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{rng, uniform};

    #[test]
    fn buckets_list_each_tokens_positions_in_order() {
        let b = TokenBuckets::new(&[3, 1, 3, 0, 3, 1], 5);
        assert_eq!(b.tokens, [0, 1, 3]);
        assert_eq!(b.offsets, [0, 1, 3, 6]);
        assert_eq!(b.positions, [3, 1, 5, 0, 2, 4]);
        assert_eq!(b.len(), 3);
        let empty = TokenBuckets::new(&[], 5);
        assert!(empty.is_empty());
        assert_eq!(empty.offsets, [0]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn buckets_reject_out_of_range_tokens() {
        TokenBuckets::new(&[0, 5], 5);
    }

    /// `encoder_backward_wte` run on the CPU from the buckets is bit-identical to the CPU
    /// encoder backward.
    #[test]
    fn kernel_order_over_buckets_reproduces_the_cpu_encoder_backward() {
        let (b, t, c, v) = (3, 7, 5, 11);
        let mut r = rng(90);
        let inp: Vec<u32> = (0..b * t)
            .map(|i| ((i * 7 + i / 3) % 6) as u32 * 2)
            .collect();
        let dout = uniform(&mut r, b * t * c);
        let dwte0 = uniform(&mut r, v * c);
        let (mut want, mut dwpe) = (dwte0.clone(), vec![0.0; t * c]);
        crate::encoder::encoder_backward(&mut want, &mut dwpe, &dout, &inp, b, t, c);
        let buckets = TokenBuckets::new(&inp, v);
        let mut got = dwte0.clone();
        for u in 0..buckets.len() {
            let tok = buckets.tokens[u] as usize;
            for ch in 0..c {
                let mut acc = got[tok * c + ch];
                for &bt in
                    &buckets.positions[buckets.offsets[u] as usize..buckets.offsets[u + 1] as usize]
                {
                    acc += dout[bt as usize * c + ch];
                }
                got[tok * c + ch] = acc;
            }
        }
        assert_eq!(got, want);
    }

    /// The kernel's formula with these scalars is bit-identical to the CPU step (barring FMA
    /// contraction on the GPU, which this emulation does not do).
    #[test]
    fn adamw_scalars_reproduce_the_cpu_step() {
        let mut r = rng(91);
        let n = 64;
        let (mut p, mut m, mut v) = (uniform(&mut r, n), vec![0.0f32; n], vec![0.0f32; n]);
        let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
        for step in 1..=4u64 {
            let g = uniform(&mut r, n);
            crate::optim::adamw_update(
                &mut p, &g, &mut m, &mut v, 3e-3, 0.9, 0.95, 1e-8, 0.1, step,
            );
            let s = AdamwScalars::new(3e-3, 0.9, 0.95, 1e-8, 0.1, step);
            for i in 0..n {
                m2[i] = s.beta1 * m2[i] + s.one_minus_beta1 * g[i];
                v2[i] = s.beta2 * v2[i] + s.one_minus_beta2 * g[i] * g[i];
                p2[i] =
                    p2[i] * s.decay - s.step_size * (m2[i] / (v2[i].sqrt() / s.bc2_sqrt + s.eps));
            }
        }
        assert_eq!((p, m, v), (p2, m2, v2));
    }

    #[test]
    fn gradnorm_chunk_matches_the_kernel_source() {
        let src = crate::cuda::source("gradnorm").expect("gradnorm.cu is registered");
        assert!(
            src.code
                .contains(&format!("#define GRADNORM_CHUNK {GRADNORM_CHUNK}\n")),
            "GRADNORM_CHUNK differs between prep.rs and gradnorm.cu"
        );
        assert_eq!(gradnorm_partials(0), 0);
        assert_eq!(gradnorm_partials(GRADNORM_CHUNK), 1);
        assert_eq!(gradnorm_partials(GRADNORM_CHUNK + 1), 2);
    }
}

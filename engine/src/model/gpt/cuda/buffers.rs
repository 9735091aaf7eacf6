//! The device buffers of one (B, T), in the activations' storage type `A`: fp32, or bf16 for
//! `precision = "bf16"`. Only what a product or a row kernel reads as an activation is stored
//! as `A`; LayerNorm's statistics, the per-position losses, the pre-softmax scores and every
//! gradient that is summed into (dresidual, dqkv, …) stay fp32.

use convoy_kernels::cuda::ops::{self, DeviceTokenBuckets, Operand};
use convoy_kernels::cuda::{CudaError, Device};
use cudarc::driver::CudaSlice;

use super::super::config::GptConfig;
use super::super::memory;

/// An activation storage type and how the model gets its weights in it.
pub(super) trait Storage: Operand {
    /// The weights as this type: the fp32 parameters themselves, or their bf16 copy.
    fn weights<'a>(
        params: &'a CudaSlice<f32>,
        params16: Option<&'a CudaSlice<u16>>,
    ) -> &'a CudaSlice<Self>;
}

impl Storage for f32 {
    fn weights<'a>(
        params: &'a CudaSlice<f32>,
        _: Option<&'a CudaSlice<u16>>,
    ) -> &'a CudaSlice<f32> {
        params
    }
}

impl Storage for u16 {
    fn weights<'a>(
        _: &'a CudaSlice<f32>,
        params16: Option<&'a CudaSlice<u16>>,
    ) -> &'a CudaSlice<u16> {
        params16.expect("a bf16 model keeps a bf16 copy of its weights")
    }
}

/// Which of [`memory::activation_floats`]' buffers are stored as `A` (the rest are fp32).
const ACTIVATIONS_AS_A: [bool; 21] = [
    true, true, false, false, true, true, false, true, true, true, false, false, true, true, true,
    true, true, false, false, true, false,
];
/// Which of [`memory::scratch_floats`]' buffers are stored as `A`: dlogits and dpreatt, which
/// are only ever product operands.
const SCRATCH_AS_A: [bool; 9] = [true, false, false, false, false, true, false, false, false];

/// Element counts of every buffer of (B, T): [`memory::activation_floats`] and
/// [`memory::scratch_floats`] as the CPU has them, except that flash attention keeps no
/// [B, NH, T, T] matrix (preatt, att, dpreatt, datt) but a log-sum-exp per query and layer
/// (`lse`) and a per-query scratch (`delta`).
struct Sizes {
    acts: [usize; 21],
    scratch: [usize; 9],
    lse: usize,
    delta: usize,
}

impl Sizes {
    fn new(cfg: &GptConfig, b: usize, t: usize, flash: bool) -> Sizes {
        let mut acts = memory::activation_floats(cfg, b, t);
        let mut scratch = memory::scratch_floats(cfg, b, t);
        let rows = b * cfg.n_head * t;
        if !flash {
            return Sizes {
                acts,
                scratch,
                lse: 0,
                delta: 0,
            };
        }
        (acts[6], acts[7], scratch[5], scratch[6]) = (0, 0, 0, 0);
        Sizes {
            acts,
            scratch,
            lse: cfg.n_layer * rows,
            delta: rows,
        }
    }
}

/// Bytes of `sizes` elements, `A`-typed where `as_a` says so (`a_bytes` each), else fp32.
fn bytes(sizes: &[usize], as_a: &[bool], a_bytes: usize) -> u64 {
    sizes
        .iter()
        .zip(as_a)
        .map(|(&n, &a)| (n * if a { a_bytes } else { 4 }) as u64)
        .sum()
}

/// Activation and backward-scratch bytes of (B, T) with `a_bytes`-byte activations, and the
/// GPU-only scratch: LayerNorm's partial sums, the token ids, targets and buckets, and the
/// slot in which bf16 models round a gradient before a product.
pub(super) fn need_bytes(
    cfg: &GptConfig,
    b: usize,
    t: usize,
    a_bytes: usize,
    flash: bool,
) -> (u64, u64) {
    let sizes = Sizes::new(cfg, b, t, flash);
    let acts = bytes(&sizes.acts, &ACTIVATIONS_AS_A, a_bytes) + 4 * sizes.lse as u64;
    let scratch = bytes(&sizes.scratch, &SCRATCH_AS_A, a_bytes) + 4 * sizes.delta as u64;
    let bt = b * t;
    let gpu_only = 4 * (2 * ops::ln_partial_rows(bt) * cfg.channels + 5 * bt + 1)
        + a_bytes * slot_len(a_bytes, bt, cfg.channels);
    (acts, scratch + gpu_only as u64)
}

/// The rounding slot for `a_bytes`-byte activations: the largest gradient that is rounded,
/// [B·T, 4C] (dfch), for bf16; unused for fp32, whose gradients are operands as they are.
fn slot_len(a_bytes: usize, bt: usize, c: usize) -> usize {
    if a_bytes < 4 { bt * 4 * c } else { 1 }
}

/// Forward activations for a (B, T), as [`super::super::Gpt`]'s (per-layer buffers stacked).
pub(super) struct Activations<A> {
    pub encoded: CudaSlice<A>,
    pub ln1: CudaSlice<A>,
    pub ln1_mean: CudaSlice<f32>,
    pub ln1_rstd: CudaSlice<f32>,
    pub qkv: CudaSlice<A>,
    pub atty: CudaSlice<A>,
    pub preatt: CudaSlice<f32>,
    pub att: CudaSlice<A>,
    pub residual2: CudaSlice<A>,
    pub ln2: CudaSlice<A>,
    pub ln2_mean: CudaSlice<f32>,
    pub ln2_rstd: CudaSlice<f32>,
    pub fch: CudaSlice<A>,
    pub fch_gelu: CudaSlice<A>,
    pub residual3: CudaSlice<A>,
    pub proj: CudaSlice<A>,
    pub lnf: CudaSlice<A>,
    pub lnf_mean: CudaSlice<f32>,
    pub lnf_rstd: CudaSlice<f32>,
    pub logits: CudaSlice<A>,
    pub losses: CudaSlice<f32>,
    /// Flash attention's log-sum-exp per layer and query [L, B, NH, T] (1 element otherwise).
    pub lse: CudaSlice<f32>,
}

/// Single-layer gradient scratch for the backward pass, and LayerNorm's partial sums.
pub(super) struct Scratch<A> {
    pub dlogits: CudaSlice<A>,
    pub dresidual: CudaSlice<f32>,
    pub dln: CudaSlice<f32>,
    pub datty: CudaSlice<f32>,
    pub dqkv: CudaSlice<f32>,
    pub dpreatt: CudaSlice<A>,
    pub datt: CudaSlice<f32>,
    pub dfch: CudaSlice<f32>,
    pub dfch_gelu: CudaSlice<f32>,
    pub ln_partial: CudaSlice<f32>,
    /// Flash attention's backward scratch [B, NH, T] (1 element otherwise).
    pub delta: CudaSlice<f32>,
}

/// The buffers of one (B, T): allocated together, so a batch either fits or fails at once.
pub(super) struct Buffers<A> {
    pub b: usize,
    pub t: usize,
    pub acts: Activations<A>,
    /// `None` for an inference-only shape (evaluation, sampling).
    pub scratch: Option<Scratch<A>>,
    pub inputs: CudaSlice<u32>,
    pub targets: CudaSlice<u32>,
    /// The token buckets of the last training forward's batch, for the embedding backward.
    pub buckets: DeviceTokenBuckets,
    /// Where a bf16 model rounds an fp32 gradient to make it a product operand.
    pub slot: CudaSlice<A>,
}

/// One fp32-or-`A` buffer per size, in order.
struct Allocs<'a, I> {
    dev: &'a Device,
    sizes: I,
    what: &'static str,
}

impl<I: Iterator<Item = usize>> Allocs<'_, I> {
    fn next<T: Operand>(&mut self) -> Result<CudaSlice<T>, CudaError> {
        let n = self.sizes.next().expect("one size per buffer");
        ops::alloc_zeros(self.dev, n, self.what)
    }
}

impl<A: Storage> Buffers<A> {
    pub fn new(
        dev: &Device,
        cfg: &GptConfig,
        b: usize,
        t: usize,
        training: bool,
        flash: bool,
    ) -> Result<Buffers<A>, CudaError> {
        let sizes = Sizes::new(cfg, b, t, flash);
        let mut x = Allocs {
            dev,
            sizes: sizes.acts.into_iter(),
            what: "activations",
        };
        let acts = Activations {
            encoded: x.next()?,
            ln1: x.next()?,
            ln1_mean: x.next()?,
            ln1_rstd: x.next()?,
            qkv: x.next()?,
            atty: x.next()?,
            preatt: x.next()?,
            att: x.next()?,
            residual2: x.next()?,
            ln2: x.next()?,
            ln2_mean: x.next()?,
            ln2_rstd: x.next()?,
            fch: x.next()?,
            fch_gelu: x.next()?,
            residual3: x.next()?,
            proj: x.next()?,
            lnf: x.next()?,
            lnf_mean: x.next()?,
            lnf_rstd: x.next()?,
            logits: x.next()?,
            losses: x.next()?,
            lse: ops::alloc_zeros(dev, sizes.lse, "attention log-sum-exps")?,
        };
        let c = cfg.channels;
        let scratch = if training {
            let mut x = Allocs {
                dev,
                sizes: sizes.scratch.into_iter(),
                what: "backward scratch",
            };
            Some(Scratch {
                dlogits: x.next()?,
                dresidual: x.next()?,
                dln: x.next()?,
                datty: x.next()?,
                dqkv: x.next()?,
                dpreatt: x.next()?,
                datt: x.next()?,
                dfch: x.next()?,
                dfch_gelu: x.next()?,
                ln_partial: ops::alloc_zeros(
                    dev,
                    2 * ops::ln_partial_rows(b * t) * c,
                    "LayerNorm scratch",
                )?,
                delta: ops::alloc_zeros(dev, sizes.delta, "attention scratch")?,
            })
        } else {
            None
        };
        Ok(Buffers {
            b,
            t,
            acts,
            scratch,
            inputs: ops::alloc_zeros(dev, b * t, "the batch's token ids")?,
            buckets: DeviceTokenBuckets::new(dev, b * t)?,
            targets: ops::alloc_zeros(dev, b * t, "the batch's targets")?,
            slot: ops::alloc_zeros(dev, slot_len(A::BYTES, b * t, c), "bf16 operand slot")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The A-typed lists must follow the order of memory.rs's lists (as the structs do).
    #[test]
    fn bf16_halves_exactly_the_buffers_stored_as_activations() {
        let cfg = GptConfig {
            max_seq_len: 64,
            vocab_size: 100,
            padded_vocab_size: 128,
            n_layer: 2,
            n_head: 2,
            channels: 32,
        };
        let (b, t) = (2, 16);
        let acts = memory::activation_floats(&cfg, b, t);
        let (a32, _) = need_bytes(&cfg, b, t, 4, false);
        let (a16, _) = need_bytes(&cfg, b, t, 2, false);
        let (l, bt) = (cfg.n_layer, b * t);
        let att = b * cfg.n_head * t * t;
        // fp32 stays: 3 pairs of LayerNorm statistics, preatt, the losses.
        let fp32 = 2 * l * bt + 2 * l * bt + 2 * bt + att + bt;
        assert_eq!(a32, 4 * acts.iter().sum::<usize>() as u64);
        assert_eq!(
            a16,
            (4 * fp32 + 2 * (acts.iter().sum::<usize>() - fp32)) as u64
        );
    }

    #[test]
    fn flash_attention_keeps_no_t_by_t_matrix() {
        let cfg = GptConfig {
            max_seq_len: 1024,
            vocab_size: 100,
            padded_vocab_size: 128,
            n_layer: 2,
            n_head: 4,
            channels: 256,
        };
        let (b, t) = (2, 1024);
        let (acts, scratch) = need_bytes(&cfg, b, t, 2, false);
        let (flash_acts, flash_scratch) = need_bytes(&cfg, b, t, 2, true);
        let (l, rows) = (cfg.n_layer, b * cfg.n_head * t);
        let att = rows * t;
        // preatt (fp32, one layer) and att (bf16, per layer) go; lse (fp32) comes.
        assert_eq!(
            acts - flash_acts,
            (4 * att + 2 * l * att - 4 * l * rows) as u64
        );
        // dpreatt (bf16) and datt (fp32) go; delta (fp32) comes.
        assert_eq!(
            scratch - flash_scratch,
            (2 * att + 4 * att - 4 * rows) as u64
        );
    }
}

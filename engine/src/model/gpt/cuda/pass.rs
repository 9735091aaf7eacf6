//! One forward or backward pass of the GPT on the GPU, generic over the activations' storage
//! type `A` ([`Storage`]): the CPU model's steps, kernel for kernel, on the buffers of one
//! (B, T).

use std::ops::Range;

use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops::{self, CublasLt};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use super::buffers::{Buffers, Storage};
use super::linear::Products;
use crate::collective::Bucket;
use crate::collective::DeviceBucketHook;
use crate::error::gpu;
use crate::error::{EngineError, Result};
use crate::model::gpt::config::{GptConfig, Tensor};

/// The model's parts a pass reads, whatever its storage type.
#[derive(Clone, Copy)]
pub(super) struct Model<'a> {
    pub dev: &'a Device,
    pub cfg: &'a GptConfig,
    pub params: &'a CudaSlice<f32>,
    /// The bf16 copy of the weights (bf16 models).
    pub params16: Option<&'a CudaSlice<u16>>,
    pub lt: Option<&'a CublasLt>,
    /// Flash attention (set for bf16 models only).
    pub flash: bool,
}

/// The model's parts a pass reads, and the buffers it writes.
pub(super) struct Pass<'a, A> {
    pub dev: &'a Device,
    pub cfg: &'a GptConfig,
    pub params: &'a CudaSlice<f32>,
    pub weights: &'a CudaSlice<A>,
    pub lt: Option<&'a CublasLt>,
    /// Flash attention (bf16 only) instead of the materialized [B, NH, T, T] path.
    pub flash: bool,
    pub bufs: &'a mut Buffers<A>,
}

impl<'a, A: Storage> Pass<'a, A> {
    pub fn new(m: Model<'a>, bufs: &'a mut Buffers<A>) -> Pass<'a, A> {
        Pass {
            dev: m.dev,
            cfg: m.cfg,
            params: m.params,
            weights: A::weights(m.params, m.params16),
            lt: m.lt,
            flash: m.flash,
            bufs,
        }
    }

    /// Everything up to and including the final LayerNorm, for `inputs` [B·T] (already
    /// checked against the context and the buffers' shape).
    pub fn hidden(&mut self, inputs: &[u32], b: usize, t: usize, training: bool) -> Result<()> {
        let (dev, cfg, p) = (self.dev, self.cfg, self.params);
        let (c, nh, bt) = (cfg.channels, cfg.n_head, b * t);
        let (btc, att_len) = (bt * c, b * nh * t * t);
        let Buffers {
            acts: a,
            inputs: inputs_d,
            buckets,
            slot,
            ..
        } = &mut *self.bufs;
        dev.stream
            .memcpy_htod(inputs, &mut inputs_d.slice_mut(..bt))
            .map_err(|e| EngineError::Gpu(format!("uploading the batch: {e}")))?;
        // Token ids are checked on the host (the bucketing panics on an id ≥ V, as the CPU);
        // the embedding backward of this batch reads the buckets.
        if training {
            buckets.fill(dev, inputs, cfg.vocab_size).map_err(gpu)?;
        }
        let w = |x: Tensor, l: usize| p.slice(cfg.layer_range(x, l));
        let mm = Products {
            dev,
            params: p,
            weights: self.weights,
            lt: self.lt,
            slot,
        };

        ops::encoder_forward(
            dev,
            &mut a.encoded.slice_mut(..btc),
            &inputs_d.slice(..bt),
            &p.slice(cfg.range(Tensor::Wte)),
            &p.slice(cfg.range(Tensor::Wpe)),
            b,
            t,
            c,
            cfg.vocab_size,
        )
        .map_err(gpu)?;
        for l in 0..cfg.n_layer {
            let lc = l * btc..(l + 1) * btc;
            let lm = l * bt..(l + 1) * bt;
            let l3 = 3 * l * btc..3 * (l + 1) * btc;
            let l4 = 4 * l * btc..4 * (l + 1) * btc;
            let la = l * att_len..(l + 1) * att_len;
            let residual = if l == 0 {
                a.encoded.slice(..btc)
            } else {
                a.residual3.slice((l - 1) * btc..l * btc)
            };
            ops::layernorm_forward(
                dev,
                &mut a.ln1.slice_mut(lc.clone()),
                &mut a.ln1_mean.slice_mut(lm.clone()),
                &mut a.ln1_rstd.slice_mut(lm.clone()),
                &residual,
                &w(Tensor::Ln1w, l),
                &w(Tensor::Ln1b, l),
                bt,
                c,
            )
            .map_err(gpu)?;
            mm.forward(
                &mut a.qkv.slice_mut(l3.clone()),
                &a.ln1.slice(lc.clone()),
                cfg.layer_range(Tensor::Qkvw, l),
                Some(cfg.layer_range(Tensor::Qkvb, l)),
                bt,
                c,
                3 * c,
            )?;
            if self.flash {
                let rows = b * nh * t;
                ops::flash_attention_forward(
                    dev,
                    &mut a.atty.slice_mut(lc.clone()),
                    &mut a.lse.slice_mut(l * rows..(l + 1) * rows),
                    &a.qkv.slice(l3),
                    b,
                    t,
                    c,
                    nh,
                )
            } else {
                ops::attention_forward(
                    dev,
                    &mut a.atty.slice_mut(lc.clone()),
                    &mut a.preatt.slice_mut(..att_len),
                    &mut a.att.slice_mut(la),
                    &a.qkv.slice(l3),
                    b,
                    t,
                    c,
                    nh,
                )
            }
            .map_err(gpu)?;
            mm.forward(
                &mut a.proj.slice_mut(..btc),
                &a.atty.slice(lc.clone()),
                cfg.layer_range(Tensor::Attprojw, l),
                Some(cfg.layer_range(Tensor::Attprojb, l)),
                bt,
                c,
                c,
            )?;
            ops::residual_forward(
                dev,
                &mut a.residual2.slice_mut(lc.clone()),
                &residual,
                &a.proj.slice(..btc),
                btc,
            )
            .map_err(gpu)?;
            ops::layernorm_forward(
                dev,
                &mut a.ln2.slice_mut(lc.clone()),
                &mut a.ln2_mean.slice_mut(lm.clone()),
                &mut a.ln2_rstd.slice_mut(lm),
                &a.residual2.slice(lc.clone()),
                &w(Tensor::Ln2w, l),
                &w(Tensor::Ln2b, l),
                bt,
                c,
            )
            .map_err(gpu)?;
            mm.forward(
                &mut a.fch.slice_mut(l4.clone()),
                &a.ln2.slice(lc.clone()),
                cfg.layer_range(Tensor::Fcw, l),
                Some(cfg.layer_range(Tensor::Fcb, l)),
                bt,
                c,
                4 * c,
            )?;
            ops::gelu_forward(
                dev,
                &mut a.fch_gelu.slice_mut(l4.clone()),
                &a.fch.slice(l4.clone()),
                4 * btc,
            )
            .map_err(gpu)?;
            mm.forward(
                &mut a.proj.slice_mut(..btc),
                &a.fch_gelu.slice(l4),
                cfg.layer_range(Tensor::Fcprojw, l),
                Some(cfg.layer_range(Tensor::Fcprojb, l)),
                bt,
                4 * c,
                c,
            )?;
            ops::residual_forward(
                dev,
                &mut a.residual3.slice_mut(lc.clone()),
                &a.residual2.slice(lc),
                &a.proj.slice(..btc),
                btc,
            )
            .map_err(gpu)?;
        }
        let last = (cfg.n_layer - 1) * btc..cfg.n_layer * btc;
        ops::layernorm_forward(
            dev,
            &mut a.lnf.slice_mut(..btc),
            &mut a.lnf_mean.slice_mut(..bt),
            &mut a.lnf_rstd.slice_mut(..bt),
            &a.residual3.slice(last),
            &p.slice(cfg.range(Tensor::Lnfw)),
            &p.slice(cfg.range(Tensor::Lnfb)),
            bt,
            c,
        )
        .map_err(gpu)
    }

    /// logits [rows, Vp] = the LM head over the positions `rows` of the last [`Pass::hidden`].
    pub fn lm_head(&mut self, rows: Range<usize>) -> Result<()> {
        let (c, vp) = (self.cfg.channels, self.cfg.padded_vocab_size);
        let n = rows.len();
        let Buffers { acts: a, slot, .. } = &mut *self.bufs;
        let mm = Products {
            dev: self.dev,
            params: self.params,
            weights: self.weights,
            lt: self.lt,
            slot,
        };
        mm.forward(
            &mut a.logits.slice_mut(..n * vp),
            &a.lnf.slice(rows.start * c..rows.end * c),
            self.cfg.range(Tensor::Wte),
            None,
            n,
            c,
            vp,
        )
    }

    /// The per-position losses [N] against `targets` (uploaded here) and, with `dloss_scale`,
    /// dlogits for the backward; returns the losses downloaded.
    pub fn loss(&mut self, targets: &[u32], dloss_scale: Option<f32>) -> Result<Vec<f32>> {
        let cfg = self.cfg;
        let (n, vp) = (targets.len(), cfg.padded_vocab_size);
        let dev = self.dev;
        let Buffers {
            acts: a,
            scratch,
            targets: targets_d,
            ..
        } = &mut *self.bufs;
        dev.stream
            .memcpy_htod(targets, &mut targets_d.slice_mut(..n))
            .map_err(|e| EngineError::Gpu(format!("uploading the targets: {e}")))?;
        let mut dlogits = match (dloss_scale, scratch) {
            (Some(_), Some(s)) => Some(s.dlogits.slice_mut(..n * vp)),
            _ => None,
        };
        ops::crossentropy_forward_backward(
            dev,
            &mut a.losses.slice_mut(..n),
            dlogits.as_mut(),
            &a.logits.slice(..n * vp),
            &targets_d.slice(..n),
            n,
            cfg.vocab_size,
            vp,
            dloss_scale.unwrap_or(0.0),
        )
        .map_err(gpu)?;
        dev.stream
            .clone_dtoh(&a.losses.slice(..n))
            .map_err(|e| EngineError::Gpu(format!("downloading the losses: {e}")))
    }

    /// The logits [V] of row 0 on the host, widened to f32.
    pub fn download_logits(&self) -> Result<Vec<f32>> {
        let logits = self
            .dev
            .stream
            .clone_dtoh(&self.bufs.acts.logits.slice(..self.cfg.vocab_size))
            .map_err(|e| EngineError::Gpu(format!("downloading the logits: {e}")))?;
        Ok(logits.into_iter().map(A::to_f32).collect())
    }

    /// Accumulates the gradients of the last training forward at (B, T) into `g`, calling
    /// `hook` as each bucket of [`super::super::grad_buckets`] becomes final on the stream.
    pub fn backward(
        &mut self,
        g: &mut CudaSlice<f32>,
        b: usize,
        t: usize,
        hook: DeviceBucketHook<'_>,
    ) -> Result<()> {
        let (dev, cfg, p) = (self.dev, self.cfg, self.params);
        let (c, nh, bt, vp) = (cfg.channels, cfg.n_head, b * t, cfg.padded_vocab_size);
        let (btc, att_len) = (bt * c, b * nh * t * t);
        let buckets = super::super::grad_buckets(cfg);
        let mut buckets = buckets.iter();
        let Buffers {
            acts: a,
            scratch,
            buckets: tokens,
            slot,
            ..
        } = &mut *self.bufs;
        let s = scratch.as_mut().expect("a training forward has scratch");
        let mut mm = Products {
            dev,
            params: p,
            weights: self.weights,
            lt: self.lt,
            slot,
        };
        let zero = |v: &mut CudaViewMut<'_, f32>| {
            dev.stream
                .memset_zeros(v)
                .map_err(|e| EngineError::Gpu(format!("zeroing a gradient buffer: {e}")))
        };
        let layer = |l: usize| Layer {
            dev,
            cfg,
            params: p,
            l,
        };

        // LM head (weight-tied to wte) and the final LayerNorm.
        zero(&mut s.dln.slice_mut(..btc))?;
        mm.backward_from(
            g,
            &mut s.dln.slice_mut(..btc),
            &s.dlogits.slice(..bt * vp),
            &a.lnf.slice(..btc),
            cfg.range(Tensor::Wte),
            bt,
            c,
            vp,
        )?;
        zero(&mut s.dresidual.slice_mut(..btc))?;
        let last = (cfg.n_layer - 1) * btc..cfg.n_layer * btc;
        pair_mut(
            g,
            cfg.range(Tensor::Lnfw),
            cfg.range(Tensor::Lnfb),
            |dw, db| {
                ops::layernorm_backward(
                    dev,
                    &mut s.dresidual.slice_mut(..btc),
                    dw,
                    db,
                    &mut s.ln_partial.as_view_mut(),
                    &s.dln.slice(..btc),
                    &a.residual3.slice(last),
                    &p.slice(cfg.range(Tensor::Lnfw)),
                    &a.lnf_mean.slice(..bt),
                    &a.lnf_rstd.slice(..bt),
                    bt,
                    c,
                )
            },
        )
        .map_err(gpu)?;
        hook(g, next_bucket(&mut buckets))?;

        for l in (0..cfg.n_layer).rev() {
            let lc = l * btc..(l + 1) * btc;
            let lm = l * bt..(l + 1) * bt;
            let l3 = 3 * l * btc..3 * (l + 1) * btc;
            let l4 = 4 * l * btc..4 * (l + 1) * btc;
            let la = l * att_len..(l + 1) * att_len;
            let residual = if l == 0 {
                a.encoded.slice(..btc)
            } else {
                a.residual3.slice((l - 1) * btc..l * btc)
            };
            let layer = layer(l);

            // MLP block: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
            layer.linear_backward(
                &mut mm,
                g,
                (Tensor::Fcprojw, Tensor::Fcprojb),
                &mut s.dfch_gelu.slice_mut(..4 * btc),
                &s.dresidual.slice(..btc),
                &a.fch_gelu.slice(l4.clone()),
                bt,
            )?;
            zero(&mut s.dfch.slice_mut(..4 * btc))?;
            ops::gelu_backward(
                dev,
                &mut s.dfch.slice_mut(..4 * btc),
                &a.fch.slice(l4),
                &s.dfch_gelu.slice(..4 * btc),
                4 * btc,
            )
            .map_err(gpu)?;
            layer.linear_backward(
                &mut mm,
                g,
                (Tensor::Fcw, Tensor::Fcb),
                &mut s.dln.slice_mut(..btc),
                &s.dfch.slice(..4 * btc),
                &a.ln2.slice(lc.clone()),
                bt,
            )?;
            layer.layernorm_backward(
                g,
                (Tensor::Ln2w, Tensor::Ln2b),
                &mut s.dresidual.slice_mut(..btc),
                &mut s.ln_partial.as_view_mut(),
                &s.dln.slice(..btc),
                &a.residual2.slice(lc.clone()),
                (&a.ln2_mean.slice(lm.clone()), &a.ln2_rstd.slice(lm.clone())),
                bt,
            )?;

            // Attention block: residual2 = residual + attproj(attention(qkv(ln1(residual)))).
            layer.linear_backward(
                &mut mm,
                g,
                (Tensor::Attprojw, Tensor::Attprojb),
                &mut s.datty.slice_mut(..btc),
                &s.dresidual.slice(..btc),
                &a.atty.slice(lc.clone()),
                bt,
            )?;
            zero(&mut s.dqkv.slice_mut(..3 * btc))?;
            if self.flash {
                let rows = b * nh * t;
                ops::flash_attention_backward(
                    dev,
                    &mut s.dqkv.slice_mut(..3 * btc),
                    &mut s.delta.slice_mut(..rows),
                    &s.datty.slice(..btc),
                    &a.qkv.slice(l3),
                    &a.atty.slice(lc.clone()),
                    &a.lse.slice(l * rows..(l + 1) * rows),
                    mm.slot,
                    b,
                    t,
                    c,
                    nh,
                )
            } else {
                ops::attention_backward(
                    dev,
                    &mut s.dqkv.slice_mut(..3 * btc),
                    &mut s.dpreatt.slice_mut(..att_len),
                    &mut s.datt.slice_mut(..att_len),
                    &s.datty.slice(..btc),
                    &a.qkv.slice(l3),
                    &a.att.slice(la),
                    mm.slot,
                    b,
                    t,
                    c,
                    nh,
                )
            }
            .map_err(gpu)?;
            layer.linear_backward(
                &mut mm,
                g,
                (Tensor::Qkvw, Tensor::Qkvb),
                &mut s.dln.slice_mut(..btc),
                &s.dqkv.slice(..3 * btc),
                &a.ln1.slice(lc),
                bt,
            )?;
            layer.layernorm_backward(
                g,
                (Tensor::Ln1w, Tensor::Ln1b),
                &mut s.dresidual.slice_mut(..btc),
                &mut s.ln_partial.as_view_mut(),
                &s.dln.slice(..btc),
                &residual,
                (&a.ln1_mean.slice(lm.clone()), &a.ln1_rstd.slice(lm)),
                bt,
            )?;
            hook(g, next_bucket(&mut buckets))?;
        }

        pair_mut(
            g,
            cfg.range(Tensor::Wte),
            cfg.range(Tensor::Wpe),
            |dwte, dwpe| {
                ops::encoder_backward(dev, dwte, dwpe, &s.dresidual.slice(..btc), tokens, b, t, c)
            },
        )
        .map_err(gpu)?;
        hook(g, next_bucket(&mut buckets))?;
        Ok(())
    }
}

/// One layer's view of the parameters, for the per-layer backward steps.
struct Layer<'a> {
    dev: &'a Device,
    cfg: &'a GptConfig,
    params: &'a CudaSlice<f32>,
    l: usize,
}

impl Layer<'_> {
    /// Backward of this layer's linear `(weight, bias)` over `n` rows: zeroes `dinp`, then
    /// accumulates dinp, dweight and dbias. The widths come from the weight's shape.
    #[allow(clippy::too_many_arguments)] // the product's contract: every buffer with its shape
    fn linear_backward<A: Storage>(
        &self,
        mm: &mut Products<'_, A>,
        grads: &mut CudaSlice<f32>,
        (w, bias): (Tensor, Tensor),
        dinp: &mut CudaViewMut<'_, f32>,
        dout: &CudaView<'_, f32>,
        inp: &CudaView<'_, A>,
        n: usize,
    ) -> Result<()> {
        let shape = self.cfg.shape(w);
        let (cout, cin) = (shape[1], shape[2]);
        self.dev
            .stream
            .memset_zeros(dinp)
            .map_err(|e| EngineError::Gpu(format!("zeroing a gradient buffer: {e}")))?;
        let ranges = (
            self.cfg.layer_range(w, self.l),
            Some(self.cfg.layer_range(bias, self.l)),
        );
        mm.backward(grads, dinp, dout, inp, ranges, n, cin, cout)
    }

    /// Backward of this layer's LayerNorm `(weight, bias)`, accumulating into `dinp` (the
    /// residual stream's gradient) and the parameter gradients; `partial` is scratch.
    #[allow(clippy::too_many_arguments)] // the kernels' contract: every buffer with its shape
    fn layernorm_backward<A: Storage>(
        &self,
        grads: &mut CudaSlice<f32>,
        (w, bias): (Tensor, Tensor),
        dinp: &mut CudaViewMut<'_, f32>,
        partial: &mut CudaViewMut<'_, f32>,
        dout: &CudaView<'_, f32>,
        inp: &CudaView<'_, A>,
        (mean, rstd): (&CudaView<'_, f32>, &CudaView<'_, f32>),
        n: usize,
    ) -> Result<()> {
        let weight = self.params.slice(self.cfg.layer_range(w, self.l));
        pair_mut(
            grads,
            self.cfg.layer_range(w, self.l),
            self.cfg.layer_range(bias, self.l),
            |dw, db| {
                ops::layernorm_backward(
                    self.dev,
                    dinp,
                    dw,
                    db,
                    partial,
                    dout,
                    inp,
                    &weight,
                    mean,
                    rstd,
                    n,
                    self.cfg.channels,
                )
            },
        )
        .map_err(gpu)
    }
}

fn next_bucket<'a>(it: &mut std::slice::Iter<'a, Bucket>) -> &'a Bucket {
    it.next()
        .expect("the backward pass and grad_buckets agree on the bucket count")
}

/// Runs `f` on two disjoint mutable ranges of one device buffer (a weight's and a bias's
/// gradient). cudarc's views borrow the buffer they split, so they cannot be returned.
fn pair_mut<R>(
    buf: &mut CudaSlice<f32>,
    a: Range<usize>,
    b: Range<usize>,
    f: impl FnOnce(&mut CudaViewMut<'_, f32>, &mut CudaViewMut<'_, f32>) -> R,
) -> R {
    assert!(a.end <= b.start || b.end <= a.start, "ranges overlap");
    if a.start < b.start {
        let (mut lo, mut hi) = buf.split_at_mut(b.start);
        f(&mut lo.slice_mut(a), &mut hi.slice_mut(..b.len()))
    } else {
        let (mut lo, mut hi) = buf.split_at_mut(a.start);
        f(&mut hi.slice_mut(..a.len()), &mut lo.slice_mut(b))
    }
}

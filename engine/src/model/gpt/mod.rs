//! The GPT-2 family decoder, as llm.c's train_gpt2.c: the same tensors in the same order, the
//! same forward and backward, built from the op set in `convoy-kernels`.
//!
//! Activations are kept for every layer (the backward pass needs them) except the scaled
//! attention scores before the softmax, which the backward never reads (one layer's buffer);
//! activation *gradients* use single-layer scratch buffers that each layer's backward reuses,
//! so the backward pass costs one layer's worth of memory rather than a mirror of every
//! activation.

mod config;
pub mod cuda;
pub mod memory;

use config::PER_LAYER;
pub use config::{GptConfig, TENSORS, Tensor};

use std::ops::Range;

use convoy_kernels::{
    IGNORE_INDEX, activation, attention, encoder, layernorm, loss, matmul, residual,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{BucketHook, Model, TensorInfo};
use crate::collective::Bucket;
use crate::optim::ParamGroup;

/// Forward activations for a (B, T); per-layer buffers are stacked over layers.
#[derive(Default)]
struct Activations {
    encoded: Vec<f32>,   // [B,T,C]
    ln1: Vec<f32>,       // [L,B,T,C]
    ln1_mean: Vec<f32>,  // [L,B,T]
    ln1_rstd: Vec<f32>,  // [L,B,T]
    qkv: Vec<f32>,       // [L,B,T,3C]
    atty: Vec<f32>,      // [L,B,T,C]
    preatt: Vec<f32>,    // [B,NH,T,T] one layer's scaled scores (backward needs only att)
    att: Vec<f32>,       // [L,B,NH,T,T]
    residual2: Vec<f32>, // [L,B,T,C]
    ln2: Vec<f32>,       // [L,B,T,C]
    ln2_mean: Vec<f32>,  // [L,B,T]
    ln2_rstd: Vec<f32>,  // [L,B,T]
    fch: Vec<f32>,       // [L,B,T,4C]
    fch_gelu: Vec<f32>,  // [L,B,T,4C]
    residual3: Vec<f32>, // [L,B,T,C]
    proj: Vec<f32>,      // [B,T,C] attention/MLP projection output, consumed by the residual add
    lnf: Vec<f32>,       // [B,T,C]
    lnf_mean: Vec<f32>,  // [B,T]
    lnf_rstd: Vec<f32>,  // [B,T]
    logits: Vec<f32>,    // [B,T,Vp]
    losses: Vec<f32>,    // [B,T]
}

/// Single-layer gradient scratch for the backward pass.
#[derive(Default)]
struct Scratch {
    dlogits: Vec<f32>,   // [B,T,Vp]
    dresidual: Vec<f32>, // [B,T,C] the running gradient of the residual stream
    dln: Vec<f32>,       // [B,T,C]
    datty: Vec<f32>,     // [B,T,C]
    dqkv: Vec<f32>,      // [B,T,3C]
    dpreatt: Vec<f32>,   // [B,NH,T,T]
    datt: Vec<f32>,      // [B,NH,T,T]
    dfch: Vec<f32>,      // [B,T,4C]
    dfch_gelu: Vec<f32>, // [B,T,4C]
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

pub struct Gpt {
    cfg: GptConfig,
    params: Vec<f32>,
    /// Allocated by the first training forward: a model that only describes a GPU run (or
    /// only evaluates) never holds host gradients.
    grads: Vec<f32>,
    acts: Activations,
    scratch: Scratch,
    /// The (B, T) of the last forward pass, which backward must match.
    shape: Option<(usize, usize)>,
    /// Whether the last forward also produced dlogits (a training forward).
    has_dlogits: bool,
}

impl Gpt {
    /// A model with GPT-2's initialisation: N(0, 0.02) weights, residual projections scaled by
    /// 1/sqrt(2·layers), zero biases, unit LayerNorm weights, zero vocabulary padding rows.
    pub fn new(cfg: GptConfig, seed: u64) -> Gpt {
        let mut params = vec![0.0f32; cfg.num_params()];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let std = 0.02f32;
        let proj_std = std / (2.0 * cfg.n_layer as f32).sqrt();
        for t in TENSORS {
            let r = cfg.range(t);
            let dst = &mut params[r];
            match t {
                Tensor::Ln1w | Tensor::Ln2w | Tensor::Lnfw => dst.fill(1.0),
                Tensor::Attprojw | Tensor::Fcprojw => fill_normal(dst, proj_std, &mut rng),
                Tensor::Wte => {
                    let real = cfg.vocab_size * cfg.channels;
                    fill_normal(&mut dst[..real], std, &mut rng);
                }
                t if t.is_matrix() => fill_normal(dst, std, &mut rng),
                _ => {} // biases start at zero
            }
        }
        Gpt::from_params(cfg, params)
    }

    /// A model with the given flat parameters (llm.c order). The length must match `cfg`.
    pub fn from_params(cfg: GptConfig, params: Vec<f32>) -> Gpt {
        assert_eq!(
            params.len(),
            cfg.num_params(),
            "parameter buffer does not match the config"
        );
        Gpt {
            cfg,
            params,
            grads: Vec::new(),
            acts: Activations::default(),
            scratch: Scratch::default(),
            shape: None,
            has_dlogits: false,
        }
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    pub fn tensor(&self, t: Tensor) -> &[f32] {
        &self.params[self.cfg.range(t)]
    }

    pub fn grad(&self, t: Tensor) -> &[f32] {
        &self.grads[self.cfg.range(t)]
    }

    fn ensure_buffers(&mut self, b: usize, t: usize, training: bool) {
        let sizes = memory::activation_floats(&self.cfg, b, t);
        let a = &mut self.acts;
        let buffers = [
            &mut a.encoded,
            &mut a.ln1,
            &mut a.ln1_mean,
            &mut a.ln1_rstd,
            &mut a.qkv,
            &mut a.atty,
            &mut a.preatt,
            &mut a.att,
            &mut a.residual2,
            &mut a.ln2,
            &mut a.ln2_mean,
            &mut a.ln2_rstd,
            &mut a.fch,
            &mut a.fch_gelu,
            &mut a.residual3,
            &mut a.proj,
            &mut a.lnf,
            &mut a.lnf_mean,
            &mut a.lnf_rstd,
            &mut a.logits,
            &mut a.losses,
        ];
        for (v, len) in buffers.into_iter().zip(sizes) {
            grow(v, len);
        }
        if training {
            grow(&mut self.grads, self.params.len());
            let sizes = memory::scratch_floats(&self.cfg, b, t);
            let s = &mut self.scratch;
            let buffers = [
                &mut s.dlogits,
                &mut s.dresidual,
                &mut s.dln,
                &mut s.datty,
                &mut s.dqkv,
                &mut s.dpreatt,
                &mut s.datt,
                &mut s.dfch,
                &mut s.dfch_gelu,
            ];
            for (v, len) in buffers.into_iter().zip(sizes) {
                grow(v, len);
            }
        }
    }

    /// Runs the model on `inputs` [B,T] (token ids < vocab_size, T ≤ max_seq_len).
    ///
    /// With `targets` [B,T] the cross-entropy loss is computed (positions whose target is
    /// `IGNORE_INDEX` are left out) and the function returns (sum of losses, counted positions).
    /// With `grad_scale` as well, dlogits are produced in the same pass for `backward`, scaled
    /// so that the gradient is that of `grad_scale ×` the mean loss.
    pub fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        grad_scale: Option<f32>,
        b: usize,
        t: usize,
    ) -> (f64, usize) {
        self.forward_hidden(inputs, b, t, grad_scale.is_some());
        let cfg = self.cfg;
        let (c, bt, vp) = (cfg.channels, b * t, cfg.padded_vocab_size);
        let a = &mut self.acts;
        matmul::matmul_forward(
            &mut a.logits[..bt * vp],
            &a.lnf[..bt * c],
            &self.params[cfg.range(Tensor::Wte)],
            None,
            bt,
            c,
            vp,
        );
        self.has_dlogits = false;
        let Some(targets) = targets else {
            return (0.0, 0);
        };
        assert_eq!(targets.len(), bt);
        let counted = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
        let dlogits = match grad_scale {
            Some(_) => Some(&mut self.scratch.dlogits[..bt * vp]),
            None => None,
        };
        let scale = grad_scale.unwrap_or(0.0) / counted.max(1) as f32;
        self.has_dlogits = dlogits.is_some();
        loss::crossentropy_forward_backward(
            &mut a.losses[..bt],
            dlogits,
            &a.logits[..bt * vp],
            targets,
            bt,
            cfg.vocab_size,
            vp,
            scale,
        )
    }

    /// The logits [V] of the last position of a single sequence `inputs` [T], for sampling:
    /// the LM head runs for that one position only.
    pub fn next_token_logits(&mut self, inputs: &[u32]) -> &[f32] {
        let t = inputs.len();
        self.forward_hidden(inputs, 1, t, false);
        let cfg = self.cfg;
        let (c, vp) = (cfg.channels, cfg.padded_vocab_size);
        let a = &mut self.acts;
        let last = &a.lnf[(t - 1) * c..t * c];
        matmul::matmul_forward(
            &mut a.logits[..vp],
            last,
            &self.params[cfg.range(Tensor::Wte)],
            None,
            1,
            c,
            vp,
        );
        self.has_dlogits = false;
        &a.logits[..cfg.vocab_size]
    }

    /// Everything up to and including the final LayerNorm.
    fn forward_hidden(&mut self, inputs: &[u32], b: usize, t: usize, training: bool) {
        let cfg = self.cfg;
        assert!(
            t <= cfg.max_seq_len,
            "sequence length {t} exceeds the context {}",
            cfg.max_seq_len
        );
        assert_eq!(inputs.len(), b * t);
        self.ensure_buffers(b, t, training);
        let (c, nh, bt) = (cfg.channels, cfg.n_head, b * t);
        let (btc, att_len) = (bt * c, b * nh * t * t);
        let p = &self.params;
        let w = |x: Tensor, l: usize| &p[cfg.layer_range(x, l)];
        let a = &mut self.acts;

        encoder::encoder_forward(
            &mut a.encoded[..btc],
            inputs,
            &p[cfg.range(Tensor::Wte)],
            &p[cfg.range(Tensor::Wpe)],
            b,
            t,
            c,
        );
        for l in 0..cfg.n_layer {
            let lc = l * btc..(l + 1) * btc;
            let lm = l * bt..(l + 1) * bt;
            let residual = if l == 0 {
                &a.encoded[..btc]
            } else {
                &a.residual3[(l - 1) * btc..l * btc]
            };
            layernorm::layernorm_forward(
                &mut a.ln1[lc.clone()],
                &mut a.ln1_mean[lm.clone()],
                &mut a.ln1_rstd[lm.clone()],
                residual,
                w(Tensor::Ln1w, l),
                w(Tensor::Ln1b, l),
                bt,
                c,
            );
            let qkv = &mut a.qkv[3 * l * btc..3 * (l + 1) * btc];
            matmul::matmul_forward(
                qkv,
                &a.ln1[lc.clone()],
                w(Tensor::Qkvw, l),
                Some(w(Tensor::Qkvb, l)),
                bt,
                c,
                3 * c,
            );
            let la = l * att_len..(l + 1) * att_len;
            attention::attention_forward(
                &mut a.atty[lc.clone()],
                &mut a.preatt[..att_len],
                &mut a.att[la],
                &a.qkv[3 * l * btc..3 * (l + 1) * btc],
                b,
                t,
                c,
                nh,
            );
            matmul::matmul_forward(
                &mut a.proj[..btc],
                &a.atty[lc.clone()],
                w(Tensor::Attprojw, l),
                Some(w(Tensor::Attprojb, l)),
                bt,
                c,
                c,
            );
            let residual = if l == 0 {
                &a.encoded[..btc]
            } else {
                &a.residual3[(l - 1) * btc..l * btc]
            };
            residual::residual_forward(&mut a.residual2[lc.clone()], residual, &a.proj[..btc]);
            layernorm::layernorm_forward(
                &mut a.ln2[lc.clone()],
                &mut a.ln2_mean[lm.clone()],
                &mut a.ln2_rstd[lm],
                &a.residual2[lc.clone()],
                w(Tensor::Ln2w, l),
                w(Tensor::Ln2b, l),
                bt,
                c,
            );
            let l4 = 4 * l * btc..4 * (l + 1) * btc;
            matmul::matmul_forward(
                &mut a.fch[l4.clone()],
                &a.ln2[lc.clone()],
                w(Tensor::Fcw, l),
                Some(w(Tensor::Fcb, l)),
                bt,
                c,
                4 * c,
            );
            activation::gelu_forward(&mut a.fch_gelu[l4.clone()], &a.fch[l4.clone()]);
            matmul::matmul_forward(
                &mut a.proj[..btc],
                &a.fch_gelu[l4],
                w(Tensor::Fcprojw, l),
                Some(w(Tensor::Fcprojb, l)),
                bt,
                4 * c,
                c,
            );
            residual::residual_forward(
                &mut a.residual3[lc.clone()],
                &a.residual2[lc],
                &a.proj[..btc],
            );
        }
        let last = (cfg.n_layer - 1) * btc..cfg.n_layer * btc;
        layernorm::layernorm_forward(
            &mut a.lnf[..btc],
            &mut a.lnf_mean[..bt],
            &mut a.lnf_rstd[..bt],
            &a.residual3[last],
            &p[cfg.range(Tensor::Lnfw)],
            &p[cfg.range(Tensor::Lnfb)],
            bt,
            c,
        );
        self.shape = Some((b, t));
    }

    /// Accumulates the gradients of the last training forward into the gradient buffer,
    /// calling `hook` as each bucket of [`Model::grad_buckets`] becomes final.
    pub fn backward(&mut self, inputs: &[u32], hook: BucketHook<'_>) -> crate::Result<()> {
        let (b, t) = self.shape.expect("forward must run before backward");
        assert!(
            self.has_dlogits,
            "backward needs a forward with targets and grad_scale"
        );
        let cfg = self.cfg;
        let (c, nh, bt, vp) = (cfg.channels, cfg.n_head, b * t, cfg.padded_vocab_size);
        let (btc, att_len) = (bt * c, b * nh * t * t);
        let buckets = grad_buckets(&cfg);
        let mut buckets = buckets.iter();
        let p = &self.params;
        let a = &self.acts;
        let s = &mut self.scratch;
        let g = &mut self.grads;

        // LM head (weight-tied to wte) and the final LayerNorm.
        let dln = &mut s.dln[..btc];
        dln.fill(0.0);
        {
            let dwte = &mut g[cfg.range(Tensor::Wte)];
            matmul::matmul_backward(
                dln,
                dwte,
                None,
                &s.dlogits[..bt * vp],
                &a.lnf[..btc],
                &p[cfg.range(Tensor::Wte)],
                bt,
                c,
                vp,
            );
        }
        let dres = &mut s.dresidual[..btc];
        dres.fill(0.0);
        let last = (cfg.n_layer - 1) * btc..cfg.n_layer * btc;
        {
            let (dlnfw, dlnfb) = split_pair(g, cfg.range(Tensor::Lnfw), cfg.range(Tensor::Lnfb));
            layernorm::layernorm_backward(
                dres,
                dlnfw,
                dlnfb,
                &s.dln[..btc],
                &a.residual3[last],
                &p[cfg.range(Tensor::Lnfw)],
                &a.lnf_mean[..bt],
                &a.lnf_rstd[..bt],
                bt,
                c,
            );
        }
        hook(g, next_bucket(&mut buckets))?;

        for l in (0..cfg.n_layer).rev() {
            let lc = l * btc..(l + 1) * btc;
            let lm = l * bt..(l + 1) * bt;
            let l4 = 4 * l * btc..4 * (l + 1) * btc;
            let la = l * att_len..(l + 1) * att_len;
            let residual = if l == 0 {
                &a.encoded[..btc]
            } else {
                &a.residual3[(l - 1) * btc..l * btc]
            };
            let layer = Layer {
                cfg: &cfg,
                params: p,
                l,
            };

            // MLP block: residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
            // The residual add passes dresidual through unchanged, to both branches.
            let (fcproj, fc) = (
                (Tensor::Fcprojw, Tensor::Fcprojb),
                (Tensor::Fcw, Tensor::Fcb),
            );
            layer.linear_backward(
                g,
                fcproj,
                &mut s.dfch_gelu[..4 * btc],
                &s.dresidual[..btc],
                &a.fch_gelu[l4.clone()],
                bt,
            );
            s.dfch[..4 * btc].fill(0.0);
            activation::gelu_backward(&mut s.dfch[..4 * btc], &a.fch[l4], &s.dfch_gelu[..4 * btc]);
            layer.linear_backward(
                g,
                fc,
                &mut s.dln[..btc],
                &s.dfch[..4 * btc],
                &a.ln2[lc.clone()],
                bt,
            );
            let stats = (&a.ln2_mean[lm.clone()], &a.ln2_rstd[lm.clone()]);
            layer.layernorm_backward(
                g,
                (Tensor::Ln2w, Tensor::Ln2b),
                &mut s.dresidual[..btc],
                &s.dln[..btc],
                &a.residual2[lc.clone()],
                stats,
                bt,
            );

            // Attention block: residual2 = residual + attproj(attention(qkv(ln1(residual)))).
            let (attproj, qkv) = (
                (Tensor::Attprojw, Tensor::Attprojb),
                (Tensor::Qkvw, Tensor::Qkvb),
            );
            layer.linear_backward(
                g,
                attproj,
                &mut s.datty[..btc],
                &s.dresidual[..btc],
                &a.atty[lc.clone()],
                bt,
            );
            s.dqkv[..3 * btc].fill(0.0);
            attention::attention_backward(
                &mut s.dqkv[..3 * btc],
                &mut s.dpreatt[..att_len],
                &mut s.datt[..att_len],
                &s.datty[..btc],
                &a.qkv[3 * l * btc..3 * (l + 1) * btc],
                &a.att[la],
                b,
                t,
                c,
                nh,
            );
            layer.linear_backward(
                g,
                qkv,
                &mut s.dln[..btc],
                &s.dqkv[..3 * btc],
                &a.ln1[lc],
                bt,
            );
            let stats = (&a.ln1_mean[lm.clone()], &a.ln1_rstd[lm]);
            layer.layernorm_backward(
                g,
                (Tensor::Ln1w, Tensor::Ln1b),
                &mut s.dresidual[..btc],
                &s.dln[..btc],
                residual,
                stats,
                bt,
            );
            hook(g, next_bucket(&mut buckets))?;
        }

        {
            let (dwte, dwpe) = split_pair(g, cfg.range(Tensor::Wte), cfg.range(Tensor::Wpe));
            encoder::encoder_backward(dwte, dwpe, &s.dresidual[..btc], inputs, b, t, c);
        }
        hook(g, next_bucket(&mut buckets))?;
        Ok(())
    }
}

/// Gradient buckets in the order the backward pass (CPU or GPU) finishes them: the final
/// LayerNorm, each layer from the last, then the embeddings (wte also gets the LM head's
/// gradient first, so it is final only at the end).
pub(crate) fn grad_buckets(cfg: &GptConfig) -> Vec<Bucket> {
    let mut buckets = vec![vec![cfg.range(Tensor::Lnfw), cfg.range(Tensor::Lnfb)]];
    for l in (0..cfg.n_layer).rev() {
        buckets.push(PER_LAYER.iter().map(|&t| cfg.layer_range(t, l)).collect());
    }
    buckets.push(vec![cfg.range(Tensor::Wte), cfg.range(Tensor::Wpe)]);
    buckets
}

/// One layer's view of the parameters, for the per-layer backward steps.
struct Layer<'a> {
    cfg: &'a GptConfig,
    params: &'a [f32],
    l: usize,
}

impl Layer<'_> {
    /// Backward of this layer's linear `(weight, bias)` over `n` rows: zeroes `dinp`, then
    /// accumulates dinp, dweight and dbias. The layer's widths come from the weight's shape.
    fn linear_backward(
        &self,
        grads: &mut [f32],
        (w, bias): (Tensor, Tensor),
        dinp: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        n: usize,
    ) {
        let shape = self.cfg.shape(w);
        let (cout, cin) = (shape[1], shape[2]);
        dinp.fill(0.0);
        let (dw, db) = split_pair(
            grads,
            self.cfg.layer_range(w, self.l),
            self.cfg.layer_range(bias, self.l),
        );
        let weight = &self.params[self.cfg.layer_range(w, self.l)];
        matmul::matmul_backward(dinp, dw, Some(db), dout, inp, weight, n, cin, cout);
    }

    /// Backward of this layer's LayerNorm `(weight, bias)`, accumulating into `dinp` (the
    /// residual stream's gradient) and the parameter gradients.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        grads: &mut [f32],
        (w, bias): (Tensor, Tensor),
        dinp: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        (mean, rstd): (&[f32], &[f32]),
        n: usize,
    ) {
        let (dw, db) = split_pair(
            grads,
            self.cfg.layer_range(w, self.l),
            self.cfg.layer_range(bias, self.l),
        );
        let weight = &self.params[self.cfg.layer_range(w, self.l)];
        layernorm::layernorm_backward(
            dinp,
            dw,
            db,
            dout,
            inp,
            weight,
            mean,
            rstd,
            n,
            self.cfg.channels,
        );
    }
}

fn next_bucket<'a>(it: &mut std::slice::Iter<'a, Bucket>) -> &'a Bucket {
    it.next()
        .expect("the backward pass and grad_buckets agree on the bucket count")
}

/// Two disjoint mutable ranges of one buffer, for kernels that write a weight and a bias grad.
fn split_pair(buf: &mut [f32], a: Range<usize>, b: Range<usize>) -> (&mut [f32], &mut [f32]) {
    assert!(a.end <= b.start || b.end <= a.start, "ranges overlap");
    if a.start < b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&mut lo[a], &mut hi[..b.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        let bl = b.clone();
        (&mut hi[..a.len()], &mut lo[bl])
    }
}

fn fill_normal(dst: &mut [f32], std: f32, rng: &mut ChaCha8Rng) {
    let dist = Normal::new(0.0f32, std).expect("a positive standard deviation");
    for x in dst {
        *x = dist.sample(rng);
    }
}

impl Model for Gpt {
    fn params(&self) -> &[f32] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }
    fn grads(&self) -> &[f32] {
        &self.grads
    }
    fn grads_mut(&mut self) -> &mut [f32] {
        &mut self.grads
    }
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        (&mut self.params, &self.grads)
    }
    fn param_groups(&self) -> Vec<ParamGroup> {
        TENSORS
            .iter()
            .map(|&t| ParamGroup {
                name: t.name(),
                range: self.cfg.range(t),
                is_matrix: t.is_matrix(),
            })
            .collect()
    }
    fn tensors(&self) -> Vec<TensorInfo> {
        self.cfg.tensors()
    }
    fn grad_buckets(&self) -> Vec<Bucket> {
        grad_buckets(&self.cfg)
    }
    fn fingerprint(&self) -> String {
        let c = &self.cfg;
        format!(
            "gpt(n_layer={}, n_head={}, n_embd={}, context={}, vocab={}, padded_vocab={})",
            c.n_layer, c.n_head, c.channels, c.max_seq_len, c.vocab_size, c.padded_vocab_size
        )
    }
}

//! The GPT on the CUDA backend: the same forward and backward as [`super::Gpt`], step for
//! step, with every buffer on the GPU and every op a kernel of `convoy-kernels/cuda`.
//!
//! Parameters and gradients are one flat device buffer each, in llm.c's order, so the
//! optimizer, the all-reduce and checkpoints see the same layout as on the CPU. The host only
//! uploads the batch's token ids (and their buckets for the embedding backward) and downloads
//! the per-position losses; nothing else crosses the bus during a step.

use std::ops::Range;
use std::sync::Arc;

use convoy_kernels::IGNORE_INDEX;
use convoy_kernels::cuda::ops::{self, AttentionScratch, CublasLt, DeviceTokenBuckets};
use convoy_kernels::cuda::{CudaError, Device};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

mod linear;

use linear::{Bf16Operands, Products, bf16_scratch};

use super::config::{GptConfig, Tensor};
use super::memory::{self, MemoryNeed};
use crate::collective::Bucket;
use crate::error::{EngineError, Result};
use crate::spec::Precision;

/// Called by the backward pass each time a bucket of device gradients is final (on the stream).
pub type DeviceBucketHook<'a> = &'a mut dyn FnMut(&CudaSlice<f32>, &Bucket) -> Result<()>;

/// A GPU failure as the engine's error, with what was being done.
pub(crate) fn gpu(e: CudaError) -> EngineError {
    EngineError::Gpu(e.to_string())
}

/// Forward activations for a (B, T), as [`super::Gpt`]'s (per-layer buffers stacked).
struct Activations {
    encoded: CudaSlice<f32>,
    ln1: CudaSlice<f32>,
    ln1_mean: CudaSlice<f32>,
    ln1_rstd: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    atty: CudaSlice<f32>,
    preatt: CudaSlice<f32>,
    att: CudaSlice<f32>,
    residual2: CudaSlice<f32>,
    ln2: CudaSlice<f32>,
    ln2_mean: CudaSlice<f32>,
    ln2_rstd: CudaSlice<f32>,
    fch: CudaSlice<f32>,
    fch_gelu: CudaSlice<f32>,
    residual3: CudaSlice<f32>,
    proj: CudaSlice<f32>,
    lnf: CudaSlice<f32>,
    lnf_mean: CudaSlice<f32>,
    lnf_rstd: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    losses: CudaSlice<f32>,
}

/// Single-layer gradient scratch for the backward pass, plus the GPU-only scratch (attention's
/// head-major buffers, LayerNorm's partial sums).
struct Scratch {
    dlogits: CudaSlice<f32>,
    dresidual: CudaSlice<f32>,
    dln: CudaSlice<f32>,
    datty: CudaSlice<f32>,
    dqkv: CudaSlice<f32>,
    dpreatt: CudaSlice<f32>,
    datt: CudaSlice<f32>,
    dfch: CudaSlice<f32>,
    dfch_gelu: CudaSlice<f32>,
    ln_partial: CudaSlice<f32>,
}

/// The buffers of one (B, T): allocated together, so a batch either fits or fails at once.
struct Buffers {
    b: usize,
    t: usize,
    acts: Activations,
    /// `None` for an inference-only shape (evaluation, sampling).
    scratch: Option<Scratch>,
    attention: AttentionScratch,
    inputs: CudaSlice<u32>,
    targets: CudaSlice<u32>,
    /// The token buckets of the last training forward's batch, for the embedding backward.
    buckets: DeviceTokenBuckets,
    /// bf16 operand scratch (see [`linear`]); one element each in fp32.
    op16_dout: CudaSlice<u16>,
    op16_inp: CudaSlice<u16>,
}

pub struct GptCuda {
    dev: Arc<Device>,
    cfg: GptConfig,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    precision: Precision,
    /// The parameters rounded to bf16, refreshed at each forward (bf16 precision only).
    params16: Option<CudaSlice<u16>>,
    /// cuBLASLt for the linear products instead of convoy's kernels (`CONVOY_GEMM=cublaslt`).
    lt: Option<CublasLt>,
    bufs: Option<Buffers>,
    /// The (B, T) of the last forward and whether it produced dlogits.
    last: Option<(usize, usize, bool)>,
    /// Optimizer moments the caller will allocate (2 AdamW, 1 SGD + momentum), counted in
    /// the memory check so that it fails before training rather than at the first update.
    moments: u64,
}

impl GptCuda {
    /// Uploads `params` (llm.c order, the length `cfg` gives) to `dev`; `moments` is what the
    /// optimizer will keep per parameter, for the memory check.
    pub fn new(
        dev: Arc<Device>,
        cfg: GptConfig,
        params: &[f32],
        moments: u64,
        precision: Precision,
    ) -> Result<GptCuda> {
        assert_eq!(
            params.len(),
            cfg.num_params(),
            "parameter buffer does not match the config"
        );
        let mut p = ops::alloc_zeros::<f32>(&dev, params.len(), "parameters").map_err(gpu)?;
        dev.stream
            .memcpy_htod(params, &mut p)
            .map_err(|e| EngineError::Gpu(format!("uploading the parameters: {e}")))?;
        let grads = ops::alloc_zeros::<f32>(&dev, params.len(), "gradients").map_err(gpu)?;
        let params16 = match precision {
            Precision::Fp32 => None,
            Precision::Bf16 => {
                Some(ops::alloc_zeros::<u16>(&dev, params.len(), "bf16 parameters").map_err(gpu)?)
            }
        };
        let lt = match std::env::var("CONVOY_GEMM").as_deref() {
            Err(_) | Ok("") | Ok("convoy") => None,
            Ok("cublaslt") => Some(CublasLt::new(&dev).map_err(gpu)?),
            Ok(other) => {
                return Err(EngineError::Gpu(format!(
                    "CONVOY_GEMM = {other:?}: expected \"convoy\" (the default) or \"cublaslt\""
                )));
            }
        };
        Ok(GptCuda {
            dev,
            cfg,
            params: p,
            grads,
            precision,
            params16,
            lt,
            bufs: None,
            last: None,
            moments,
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    pub fn params(&self) -> &CudaSlice<f32> {
        &self.params
    }

    pub fn grads(&self) -> &CudaSlice<f32> {
        &self.grads
    }

    /// Parameters and gradients at once, for the optimizer and the all-reduce.
    pub fn params_and_grads(&mut self) -> (&mut CudaSlice<f32>, &mut CudaSlice<f32>) {
        (&mut self.params, &mut self.grads)
    }

    /// A host copy of the parameters (waits for the queued work).
    pub fn download_params(&self) -> Result<Vec<f32>> {
        self.dev
            .stream
            .clone_dtoh(&self.params)
            .map_err(|e| EngineError::Gpu(format!("downloading the parameters: {e}")))
    }

    /// Replaces the parameters with `params` (same length).
    pub fn upload_params(&mut self, params: &[f32]) -> Result<()> {
        assert_eq!(params.len(), self.params.len(), "parameter count");
        self.dev
            .stream
            .memcpy_htod(params, &mut self.params)
            .map_err(|e| EngineError::Gpu(format!("uploading the parameters: {e}")))
    }

    pub fn zero_grads(&mut self) -> Result<()> {
        self.dev
            .stream
            .memset_zeros(&mut self.grads)
            .map_err(|e| EngineError::Gpu(format!("zeroing the gradients: {e}")))
    }

    /// What training at (B, T) needs on this GPU, by part: the CPU model's list plus the
    /// GPU-only scratch.
    pub fn need(&self, b: usize, t: usize) -> MemoryNeed {
        let mut need = memory::training_need(&self.cfg, b, t, self.moments);
        let (c, bt, bf16) = (self.cfg.channels, b * t, self.precision == Precision::Bf16);
        need.scratch += AttentionScratch::bytes((b, t, c, self.cfg.n_head), bf16)
            // LayerNorm partial sums; token ids, targets and the 3 token-bucket arrays (u32).
            + 4 * (2 * ops::ln_partial_rows(bt) * c + 5 * bt + 1) as u64;
        if bf16 {
            let (dout, inp) = bf16_scratch(bt, c, self.cfg.padded_vocab_size);
            need.params += 2 * self.cfg.num_params() as u64;
            need.scratch += 2 * (dout + inp) as u64;
        }
        need
    }

    /// Makes sure the buffers for (B, T) exist: allocated once for the largest shape asked,
    /// after checking that it fits, so an out-of-memory failure names what it needed.
    pub fn reserve(&mut self, b: usize, t: usize, training: bool) -> Result<()> {
        if let Some(bufs) = &self.bufs
            && b * t <= bufs.b * bufs.t
            && b <= bufs.b
            && t <= bufs.t
            && (!training || bufs.scratch.is_some())
        {
            return Ok(());
        }
        let (b, t) = match &self.bufs {
            Some(old) => (b.max(old.b), t.max(old.t)),
            None => (b, t),
        };
        let training = training || self.bufs.as_ref().is_some_and(|o| o.scratch.is_some());
        self.bufs = None; // free the old shape first
        let need = self.need(b, t);
        let gib = |x: u64| x as f64 / (1u64 << 30) as f64;
        let memory = self.dev.ctx.mem_get_info().ok();
        let oom = |why: String| {
            let free = memory.map_or(String::new(), |(free, total)| {
                format!(
                    " ({:.2} GiB of {:.2} GiB free)",
                    gib(free as u64),
                    gib(total as u64)
                )
            });
            EngineError::Gpu(format!(
                "out of GPU memory{free}: training B = {b}, T = {t} needs an estimated {need}; \
                 lower batch_size or seq_len{why}"
            ))
        };
        // Parameters and gradients are already on the device; what comes next is this and
        // the optimizer's moments.
        let coming = need.activations + need.scratch + need.optimizer;
        if let Some((free, _)) = memory
            && coming > free as u64
        {
            return Err(oom(String::new()));
        }
        let bufs = Buffers::new(&self.dev, &self.cfg, b, t, training, self.precision)
            .map_err(|e| oom(format!(" ({e})")))?;
        self.bufs = Some(bufs);
        Ok(())
    }

    /// Runs the model on `inputs` [B·T]; as [`super::Gpt::forward`]: with `targets` the loss
    /// (sum over counted positions, count), with `grad_scale` also dlogits for `backward`.
    pub fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        grad_scale: Option<f32>,
        b: usize,
        t: usize,
    ) -> Result<(f64, usize)> {
        let training = grad_scale.is_some();
        self.forward_hidden(inputs, b, t, training)?;
        let cfg = self.cfg;
        let (c, bt, vp) = (cfg.channels, b * t, cfg.padded_vocab_size);
        let dev = &*self.dev;
        let bufs = self.bufs.as_mut().expect("reserved by forward_hidden");
        let mut mm = products(
            dev,
            &self.params,
            self.params16.as_ref(),
            self.lt.as_ref(),
            &mut bufs.op16_dout,
            &mut bufs.op16_inp,
        );
        let a = &mut bufs.acts;
        mm.forward(
            &mut a.logits.slice_mut(..bt * vp),
            &a.lnf.slice(..bt * c),
            cfg.range(Tensor::Wte),
            None,
            bt,
            c,
            vp,
        )?;
        self.last = Some((b, t, false));
        let Some(targets) = targets else {
            return Ok((0.0, 0));
        };
        assert_eq!(targets.len(), bt);
        if let Some(&bad) = targets
            .iter()
            .find(|&&x| x != IGNORE_INDEX && x as usize >= cfg.vocab_size)
        {
            panic!(
                "crossentropy: target {bad} out of range for a vocabulary of {}",
                cfg.vocab_size
            );
        }
        dev.stream
            .memcpy_htod(targets, &mut bufs.targets.slice_mut(..bt))
            .map_err(|e| EngineError::Gpu(format!("uploading the targets: {e}")))?;
        let counted = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
        let scale = grad_scale.unwrap_or(0.0) / counted.max(1) as f32;
        let mut dlogits = match (grad_scale, &mut bufs.scratch) {
            (Some(_), Some(s)) => Some(s.dlogits.slice_mut(..bt * vp)),
            _ => None,
        };
        ops::crossentropy_forward_backward(
            dev,
            &mut a.losses.slice_mut(..bt),
            dlogits.as_mut(),
            &a.logits.slice(..bt * vp),
            &bufs.targets.slice(..bt),
            bt,
            cfg.vocab_size,
            vp,
            scale,
        )
        .map_err(gpu)?;
        self.last = Some((b, t, dlogits.is_some()));
        // The same sum as the CPU's: f64, in position order, over the counted positions.
        let losses = dev
            .stream
            .clone_dtoh(&a.losses.slice(..bt))
            .map_err(|e| EngineError::Gpu(format!("downloading the losses: {e}")))?;
        Ok(targets
            .iter()
            .zip(&losses)
            .filter(|(t, _)| **t != IGNORE_INDEX)
            .fold((0.0, 0), |(s, k), (_, &l)| (s + f64::from(l), k + 1)))
    }

    /// The logits [V] of the last position of one sequence `inputs` [T], for sampling.
    pub fn next_token_logits(&mut self, inputs: &[u32]) -> Result<Vec<f32>> {
        let t = inputs.len();
        self.forward_hidden(inputs, 1, t, false)?;
        let cfg = self.cfg;
        let (c, vp) = (cfg.channels, cfg.padded_vocab_size);
        let dev = &*self.dev;
        let bufs = self.bufs.as_mut().expect("reserved by forward_hidden");
        let mut mm = products(
            dev,
            &self.params,
            self.params16.as_ref(),
            self.lt.as_ref(),
            &mut bufs.op16_dout,
            &mut bufs.op16_inp,
        );
        let a = &mut bufs.acts;
        mm.forward(
            &mut a.logits.slice_mut(..vp),
            &a.lnf.slice((t - 1) * c..t * c),
            cfg.range(Tensor::Wte),
            None,
            1,
            c,
            vp,
        )?;
        self.last = None;
        dev.stream
            .clone_dtoh(&a.logits.slice(..cfg.vocab_size))
            .map_err(|e| EngineError::Gpu(format!("downloading the logits: {e}")))
    }

    /// Everything up to and including the final LayerNorm.
    fn forward_hidden(&mut self, inputs: &[u32], b: usize, t: usize, training: bool) -> Result<()> {
        let cfg = self.cfg;
        assert!(
            t <= cfg.max_seq_len,
            "sequence length {t} exceeds the context {}",
            cfg.max_seq_len
        );
        assert_eq!(inputs.len(), b * t);
        self.reserve(b, t, training)?;
        let (c, nh, bt) = (cfg.channels, cfg.n_head, b * t);
        let (btc, att_len) = (bt * c, b * nh * t * t);
        let dev = &*self.dev;
        let bufs = self.bufs.as_mut().expect("reserved above");
        dev.stream
            .memcpy_htod(inputs, &mut bufs.inputs.slice_mut(..bt))
            .map_err(|e| EngineError::Gpu(format!("uploading the batch: {e}")))?;
        // Token ids are checked on the host (the bucketing panics on an id ≥ V, as the CPU);
        // the embedding backward of this batch reads the buckets.
        if training {
            bufs.buckets
                .fill(dev, inputs, cfg.vocab_size)
                .map_err(gpu)?;
        }
        if let Some(p16) = &mut self.params16 {
            let n = self.params.len();
            ops::to_bf16(dev, &mut p16.as_view_mut(), &self.params.as_view(), n).map_err(gpu)?;
        }
        let p = &self.params;
        let w = |x: Tensor, l: usize| p.slice(cfg.layer_range(x, l));
        let mut mm = products(
            dev,
            p,
            self.params16.as_ref(),
            self.lt.as_ref(),
            &mut bufs.op16_dout,
            &mut bufs.op16_inp,
        );
        let a = &mut bufs.acts;
        let attention = &mut bufs.attention;

        ops::encoder_forward(
            dev,
            &mut a.encoded.slice_mut(..btc),
            &bufs.inputs.slice(..bt),
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
            ops::attention_forward(
                dev,
                &mut a.atty.slice_mut(lc.clone()),
                &mut a.preatt.slice_mut(..att_len),
                &mut a.att.slice_mut(la),
                &a.qkv.slice(l3),
                attention,
                b,
                t,
                c,
                nh,
            )
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

    /// Accumulates the gradients of the last training forward into the gradient buffer,
    /// calling `hook` as each bucket of [`super::grad_buckets`] becomes final on the stream.
    pub fn backward(&mut self, hook: DeviceBucketHook<'_>) -> Result<()> {
        let Some((b, t, true)) = self.last else {
            panic!("backward needs a forward with targets and grad_scale");
        };
        let cfg = self.cfg;
        let (c, nh, bt, vp) = (cfg.channels, cfg.n_head, b * t, cfg.padded_vocab_size);
        let (btc, att_len) = (bt * c, b * nh * t * t);
        let buckets = super::grad_buckets(&cfg);
        let mut buckets = buckets.iter();
        let dev = &*self.dev;
        let bufs = self
            .bufs
            .as_mut()
            .expect("a training forward reserved the buffers");
        let s = bufs
            .scratch
            .as_mut()
            .expect("a training forward has scratch");
        let a = &bufs.acts;
        let attention = &mut bufs.attention;
        let p = &self.params;
        let g = &mut self.grads;
        let mut mm = products(
            dev,
            p,
            self.params16.as_ref(),
            self.lt.as_ref(),
            &mut bufs.op16_dout,
            &mut bufs.op16_inp,
        );
        let zero = |v: &mut CudaViewMut<'_, f32>| {
            dev.stream
                .memset_zeros(v)
                .map_err(|e| EngineError::Gpu(format!("zeroing a gradient buffer: {e}")))
        };
        let layer = |l: usize| Layer {
            dev,
            cfg: &cfg,
            params: p,
            l,
        };

        // LM head (weight-tied to wte) and the final LayerNorm.
        zero(&mut s.dln.slice_mut(..btc))?;
        mm.backward(
            g,
            &mut s.dln.slice_mut(..btc),
            &s.dlogits.slice(..bt * vp),
            &a.lnf.slice(..btc),
            (cfg.range(Tensor::Wte), None),
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
            ops::attention_backward(
                dev,
                &mut s.dqkv.slice_mut(..3 * btc),
                &mut s.dpreatt.slice_mut(..att_len),
                &mut s.datt.slice_mut(..att_len),
                &s.datty.slice(..btc),
                &a.qkv.slice(l3),
                &a.att.slice(la),
                attention,
                b,
                t,
                c,
                nh,
            )
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

        let tokens = &bufs.buckets;
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

impl Buffers {
    fn new(
        dev: &Device,
        cfg: &GptConfig,
        b: usize,
        t: usize,
        training: bool,
        precision: Precision,
    ) -> std::result::Result<Buffers, CudaError> {
        let sizes = memory::activation_floats(cfg, b, t);
        let mut acts = sizes
            .iter()
            .map(|&n| ops::alloc_zeros::<f32>(dev, n, "activations"));
        let mut next = || acts.next().expect("21 activation sizes");
        let acts = Activations {
            encoded: next()?,
            ln1: next()?,
            ln1_mean: next()?,
            ln1_rstd: next()?,
            qkv: next()?,
            atty: next()?,
            preatt: next()?,
            att: next()?,
            residual2: next()?,
            ln2: next()?,
            ln2_mean: next()?,
            ln2_rstd: next()?,
            fch: next()?,
            fch_gelu: next()?,
            residual3: next()?,
            proj: next()?,
            lnf: next()?,
            lnf_mean: next()?,
            lnf_rstd: next()?,
            logits: next()?,
            losses: next()?,
        };
        let c = cfg.channels;
        let op16 = match precision {
            Precision::Fp32 => (1, 1),
            Precision::Bf16 => bf16_scratch(b * t, c, cfg.padded_vocab_size),
        };
        let scratch = if training {
            let sizes = memory::scratch_floats(cfg, b, t);
            let mut parts = sizes
                .iter()
                .map(|&n| ops::alloc_zeros::<f32>(dev, n, "backward scratch"));
            let mut next = || parts.next().expect("9 scratch sizes");
            Some(Scratch {
                dlogits: next()?,
                dresidual: next()?,
                dln: next()?,
                datty: next()?,
                dqkv: next()?,
                dpreatt: next()?,
                datt: next()?,
                dfch: next()?,
                dfch_gelu: next()?,
                ln_partial: ops::alloc_zeros(
                    dev,
                    2 * ops::ln_partial_rows(b * t) * c,
                    "LayerNorm scratch",
                )?,
            })
        } else {
            None
        };
        Ok(Buffers {
            b,
            t,
            acts,
            scratch,
            attention: AttentionScratch::new(
                dev,
                (b, t, c, cfg.n_head),
                precision == Precision::Bf16,
            )?,
            inputs: ops::alloc_zeros(dev, b * t, "the batch's token ids")?,
            buckets: DeviceTokenBuckets::new(dev, b * t)?,
            targets: ops::alloc_zeros(dev, b * t, "the batch's targets")?,
            op16_dout: ops::alloc_zeros(dev, op16.0, "bf16 gradient operands")?,
            op16_inp: ops::alloc_zeros(dev, op16.1, "bf16 input operands")?,
        })
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
    fn linear_backward(
        &self,
        mm: &mut Products<'_>,
        grads: &mut CudaSlice<f32>,
        (w, bias): (Tensor, Tensor),
        dinp: &mut CudaViewMut<'_, f32>,
        dout: &CudaView<'_, f32>,
        inp: &CudaView<'_, f32>,
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
    fn layernorm_backward(
        &self,
        grads: &mut CudaSlice<f32>,
        (w, bias): (Tensor, Tensor),
        dinp: &mut CudaViewMut<'_, f32>,
        partial: &mut CudaViewMut<'_, f32>,
        dout: &CudaView<'_, f32>,
        inp: &CudaView<'_, f32>,
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

/// The products of a forward or backward pass, in the model's precision.
fn products<'a>(
    dev: &'a Device,
    params: &'a CudaSlice<f32>,
    params16: Option<&'a CudaSlice<u16>>,
    lt: Option<&'a CublasLt>,
    dout: &'a mut CudaSlice<u16>,
    inp: &'a mut CudaSlice<u16>,
) -> Products<'a> {
    Products {
        dev,
        params,
        bf16: params16.map(|params| Bf16Operands { params, dout, inp }),
        lt,
    }
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

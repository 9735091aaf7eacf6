//! The GPT on the CUDA backend: the same forward and backward as [`super::Gpt`], step for
//! step, with every buffer on the GPU and every op a kernel of `convoy-kernels/cuda`.
//!
//! Parameters and gradients are one flat device buffer each, in llm.c's order, so the
//! optimizer, the all-reduce and checkpoints see the same layout as on the CPU. The host only
//! uploads the batch's token ids (and their buckets for the embedding backward) and downloads
//! the per-position losses; nothing else crosses the bus during a step.
//!
//! With `precision = "bf16"` the activations are stored as bf16 ([`buffers`]), every product
//! takes bf16 operands (weights rounded once per forward from the fp32 master copy), and the
//! gradients, master weights and optimizer state stay fp32. The pass itself ([`pass`]) is one
//! generic code path for both storage types.

use std::sync::Arc;

use convoy_kernels::IGNORE_INDEX;
use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::ops::{self, CublasLt};
use cudarc::driver::CudaSlice;

mod buffers;
mod linear;
mod pass;

use buffers::Buffers;
use pass::{Model, Pass};

use super::config::GptConfig;
use super::memory::{self, MemoryNeed};
use crate::collective::DeviceBucketHook;
use crate::error::{EngineError, Result, gpu};
use crate::spec::{AttentionKernels, GemmKernels, KernelSpec, Precision};

/// The buffers in the model's storage type.
enum AnyBuffers {
    Fp32(Buffers<f32>),
    Bf16(Buffers<u16>),
}

impl AnyBuffers {
    /// The (B, T) they were made for, and whether they hold backward scratch.
    fn shape(&self) -> (usize, usize, bool) {
        match self {
            AnyBuffers::Fp32(x) => (x.b, x.t, x.scratch.is_some()),
            AnyBuffers::Bf16(x) => (x.b, x.t, x.scratch.is_some()),
        }
    }
}

/// Runs `$body` with `$pass` bound to a [`Pass`] over the model's buffers, whichever their
/// storage type (the one place the two precisions meet), and `$grads` to the gradients.
macro_rules! with_pass {
    ($model:expr, |$pass:ident, $grads:pat_param| $body:expr) => {{
        let GptCuda {
            dev,
            cfg,
            params,
            params16,
            lt,
            flash,
            bufs,
            grads,
            ..
        } = &mut *$model;
        let $grads = grads;
        let model = Model {
            dev,
            cfg,
            params,
            params16: params16.as_ref(),
            lt: lt.as_ref(),
            flash: *flash,
        };
        match bufs.as_mut().expect("reserved before a pass") {
            AnyBuffers::Fp32(bufs) => {
                #[allow(unused_mut)]
                let mut $pass = Pass::new(model, bufs);
                $body
            }
            AnyBuffers::Bf16(bufs) => {
                #[allow(unused_mut)]
                let mut $pass = Pass::new(model, bufs);
                $body
            }
        }
    }};
}

pub struct GptCuda {
    dev: Arc<Device>,
    cfg: GptConfig,
    params: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    precision: Precision,
    /// The weights rounded to bf16, refreshed at each forward (bf16 precision only).
    params16: Option<CudaSlice<u16>>,
    /// cuBLASLt for the linear products instead of convoy's kernels (`kernels.gemm`).
    lt: Option<CublasLt>,
    /// Flash attention instead of the materialized path (`kernels.attention`, bf16).
    flash: bool,
    bufs: Option<AnyBuffers>,
    /// The (B, T) of the last forward and whether it produced dlogits.
    last: Option<(usize, usize, bool)>,
    /// Optimizer moments the caller will allocate (2 AdamW, 1 SGD + momentum), counted in
    /// the memory check so that it fails before training rather than at the first update.
    moments: u64,
}

impl GptCuda {
    /// Uploads `params` (llm.c order, the length `cfg` gives) to `dev`; `moments` is what the
    /// optimizer will keep per parameter, for the memory check; `kernels` chooses the GEMM
    /// and attention implementations.
    pub fn new(
        dev: Arc<Device>,
        cfg: GptConfig,
        params: &[f32],
        moments: u64,
        precision: Precision,
        kernels: KernelSpec,
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
        let lt = match kernels.gemm {
            GemmKernels::Convoy => None,
            GemmKernels::Cublaslt => Some(CublasLt::new(&dev).map_err(gpu)?),
        };
        // Validated with the spec; checked again here for models built without one.
        let flash = match kernels.attention {
            AttentionKernels::Materialized => false,
            AttentionKernels::Flash if precision == Precision::Fp32 => {
                return Err(EngineError::Gpu(
                    "flash attention needs precision = \"bf16\"".into(),
                ));
            }
            AttentionKernels::Flash
                if !ops::flash_attention_supported(cfg.channels, cfg.n_head) =>
            {
                return Err(EngineError::Gpu(format!(
                    "flash attention needs heads of 16, 32 or 64 channels; this model's have {}",
                    cfg.channels / cfg.n_head.max(1)
                )));
            }
            AttentionKernels::Flash => true,
        };
        Ok(GptCuda {
            dev,
            cfg,
            params: p,
            grads,
            precision,
            flash,
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

    /// What training at (B, T) needs on this GPU, by part: the CPU model's parameters,
    /// gradients and optimizer, activations and scratch in the model's storage type, and the
    /// GPU-only scratch.
    pub fn need(&self, b: usize, t: usize) -> MemoryNeed {
        let mut need = memory::training_need(&self.cfg, b, t, self.moments);
        let bf16 = self.precision == Precision::Bf16;
        (need.activations, need.scratch) =
            buffers::need_bytes(&self.cfg, b, t, if bf16 { 2 } else { 4 }, self.flash);
        if bf16 {
            need.params += 2 * self.cfg.num_params() as u64;
        }
        need
    }

    /// Makes sure the buffers for (B, T) exist: allocated once for the largest shape asked,
    /// after checking that it fits, so an out-of-memory failure names what it needed.
    pub fn reserve(&mut self, b: usize, t: usize, training: bool) -> Result<()> {
        let old = self.bufs.as_ref().map(AnyBuffers::shape);
        if let Some((ob, ot, scratch)) = old
            && b * t <= ob * ot
            && b <= ob
            && t <= ot
            && (!training || scratch)
        {
            return Ok(());
        }
        let (b, t, training) = match old {
            Some((ob, ot, scratch)) => (b.max(ob), t.max(ot), training || scratch),
            None => (b, t, training),
        };
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
        let (dev, cfg) = (&*self.dev, &self.cfg);
        let bufs = match self.precision {
            Precision::Fp32 => Buffers::new(dev, cfg, b, t, training, false).map(AnyBuffers::Fp32),
            Precision::Bf16 => {
                Buffers::new(dev, cfg, b, t, training, self.flash).map(AnyBuffers::Bf16)
            }
        };
        self.bufs = Some(bufs.map_err(|e| oom(format!(" ({e})")))?);
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
        let bt = b * t;
        with_pass!(self, |pass, _| pass.lm_head(0..bt))?;
        self.last = Some((b, t, false));
        let Some(targets) = targets else {
            return Ok((0.0, 0));
        };
        assert_eq!(targets.len(), bt);
        let vocab = self.cfg.vocab_size;
        if let Some(&bad) = targets
            .iter()
            .find(|&&x| x != IGNORE_INDEX && x as usize >= vocab)
        {
            panic!("crossentropy: target {bad} out of range for a vocabulary of {vocab}");
        }
        let counted = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
        let scale = grad_scale.map(|g| g / counted.max(1) as f32);
        let losses = with_pass!(self, |pass, _| pass.loss(targets, scale))?;
        self.last = Some((b, t, training));
        // The same sum as the CPU's: f64, in position order, over the counted positions.
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
        self.last = None;
        with_pass!(self, |pass, _| {
            pass.lm_head(t - 1..t)?;
            pass.download_logits()
        })
    }

    /// Everything up to and including the final LayerNorm.
    fn forward_hidden(&mut self, inputs: &[u32], b: usize, t: usize, training: bool) -> Result<()> {
        assert!(
            t <= self.cfg.max_seq_len,
            "sequence length {t} exceeds the context {}",
            self.cfg.max_seq_len
        );
        assert_eq!(inputs.len(), b * t);
        self.reserve(b, t, training)?;
        if let Some(p16) = &mut self.params16 {
            let n = self.params.len();
            ops::to_bf16(&self.dev, &mut p16.as_view_mut(), &self.params.as_view(), n)
                .map_err(gpu)?;
        }
        with_pass!(self, |pass, _| pass.hidden(inputs, b, t, training))
    }

    /// Accumulates the gradients of the last training forward into the gradient buffer,
    /// calling `hook` as each bucket of [`super::grad_buckets`] becomes final on the stream.
    pub fn backward(&mut self, hook: DeviceBucketHook<'_>) -> Result<()> {
        let Some((b, t, true)) = self.last else {
            panic!("backward needs a forward with targets and grad_scale");
        };
        with_pass!(self, |pass, grads| pass.backward(grads, b, t, hook))
    }
}

//! The parts of a step that the CUDA backend runs on the GPU besides the model: the optimizer
//! (its moments live on the device), the global norm and clipping, and the copies between a
//! device state and a [`TrainState`]'s host buffers.

use std::sync::Arc;

use convoy_kernels::cuda::ops;
use convoy_kernels::cuda::prep::{AdamwScalars, gradnorm_partials};
use convoy_kernels::cuda::{CudaError, Device};
use cudarc::driver::CudaSlice;

use crate::collective::DeviceGradReducer;
use crate::error::gpu;
use crate::error::{EngineError, Result};
use crate::model::gpt::cuda::GptCuda;
use crate::optim::{Optimizer, OptimizerState, ParamGroup, second_moments};
use crate::spec::{JobSpec, ModelSpec, OptimizerKind, OptimizerSpec};

/// Opens GPU `ordinal` for a `backend = "cuda"` job, or says in one line why it cannot.
pub fn open_gpu(ordinal: usize) -> Result<Device> {
    let none = |why: &str| {
        EngineError::Gpu(format!(
            "backend = \"cuda\" but {why}; run the job on a GPU worker or set backend = \"cpu\""
        ))
    };
    if !convoy_kernels::cuda::driver_available() {
        return Err(none(
            "no CUDA driver (libcuda.so.1) was found on this machine",
        ));
    }
    match Device::open(ordinal) {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(none(&format!(
            "GPU {ordinal} is not visible to this process ({} GPU(s) visible, \
             CUDA_VISIBLE_DEVICES = {:?})",
            convoy_kernels::cuda::device_count(),
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
        ))),
        Err(e) => Err(EngineError::Gpu(e.to_string())),
    }
}

/// The CUDA backend trains the GPT family; the MLP runs on the CPU.
pub(crate) fn check_gpu_model(spec: &JobSpec) -> Result<()> {
    // Earlier releases read the kernel choices from these variables; a script that still sets
    // one would otherwise measure the default kernels without a word.
    for (var, key) in [("CONVOY_GEMM", "gemm"), ("CONVOY_ATTENTION", "attention")] {
        if std::env::var_os(var).is_some() {
            return Err(EngineError::Spec(format!(
                "{var} is set, but the kernels are chosen in the spec now: use [kernels] \
                 {key} = ... and unset {var}"
            )));
        }
    }
    if matches!(spec.model, ModelSpec::Gpt(_)) {
        return Ok(());
    }
    Err(EngineError::Spec(
        "backend = \"cuda\" trains GPT models (model.kind = \"gpt\"); train this model with \
         backend = \"cpu\""
            .into(),
    ))
}

/// Everything of a GPU step that is not the model: the optimizer's state on the device, the
/// norm's scratch, and the all-reduce.
pub(crate) struct GpuStep {
    pub dev: Arc<Device>,
    pub reducer: Box<dyn DeviceGradReducer>,
    /// The host optimizer, for its settings, parameter groups and decay rules; its moment
    /// buffers are left empty-sized (the device ones below are the live state).
    host: Optimizer,
    /// Updates applied so far (AdamW's bias correction; SGD's first step).
    step: u64,
    m: CudaSlice<f32>,
    /// Second moments: AdamW only (a one-element placeholder for SGD).
    v: CudaSlice<f32>,
    norm: CudaSlice<f32>,
    partials: CudaSlice<f64>,
}

impl GpuStep {
    pub fn new(
        dev: Arc<Device>,
        reducer: Box<dyn DeviceGradReducer>,
        spec: &OptimizerSpec,
        groups: Vec<ParamGroup>,
        num_params: usize,
    ) -> Result<GpuStep> {
        let v_len = second_moments(spec.kind, num_params);
        Ok(GpuStep {
            m: ops::alloc_zeros(&dev, num_params, "first moments").map_err(gpu)?,
            v: ops::alloc_zeros(&dev, v_len, "second moments").map_err(gpu)?,
            norm: ops::alloc_zeros(&dev, 1, "the gradient norm").map_err(gpu)?,
            partials: ops::alloc_zeros(&dev, gradnorm_partials(num_params), "norm partial sums")
                .map_err(gpu)?,
            host: Optimizer::new(spec, groups, 0),
            step: 0,
            reducer,
            dev,
        })
    }

    /// Moments per parameter the optimizer keeps on the device, for the memory estimate.
    pub fn moments(spec: &OptimizerSpec) -> u64 {
        match spec.kind {
            OptimizerKind::Adamw => 2,
            OptimizerKind::Sgd => 1,
        }
    }

    /// The global gradient norm (on the device, then read back: the step's metrics report
    /// it) and clipping to `max_norm` when that is positive, all without leaving the device.
    pub fn norm_and_clip(&mut self, model: &mut GptCuda, max_norm: f32) -> Result<f32> {
        let dev = &*self.dev;
        let n = model.grads().len();
        let (_, grads) = model.params_and_grads();
        ops::global_norm(
            dev,
            &mut self.norm.as_view_mut(),
            &mut self.partials.as_view_mut(),
            &grads.as_view(),
            n,
        )
        .map_err(gpu)?;
        if max_norm > 0.0 {
            ops::clip_grads(
                dev,
                &mut grads.as_view_mut(),
                &self.norm.as_view(),
                max_norm,
            )
            .map_err(gpu)?;
        }
        let norm = dev
            .stream
            .clone_dtoh(&self.norm)
            .map_err(|e| EngineError::Gpu(format!("downloading the gradient norm: {e}")))?;
        Ok(norm[0])
    }

    /// One update of every parameter group with learning rate `lr`, as
    /// [`Optimizer::step`] does on the host (same scalars, same per-group decay).
    pub fn update(&mut self, model: &mut GptCuda, lr: f32) -> Result<()> {
        self.step += 1;
        let t = self.step;
        let s = self.host.spec();
        let dev = &*self.dev;
        let (params, grads) = model.params_and_grads();
        for g in self.host.groups() {
            let wd = self.host.decay_for(g);
            let r = g.range.clone();
            let launched: std::result::Result<(), CudaError> = match s.kind {
                OptimizerKind::Adamw => ops::adamw_update(
                    dev,
                    &mut params.slice_mut(r.clone()),
                    &grads.slice(r.clone()),
                    &mut self.m.slice_mut(r.clone()),
                    &mut self.v.slice_mut(r),
                    &AdamwScalars::new(lr, s.beta1(), s.beta2(), s.eps(), wd, t),
                ),
                OptimizerKind::Sgd => ops::sgd_update(
                    dev,
                    &mut params.slice_mut(r.clone()),
                    &grads.slice(r.clone()),
                    &mut self.m.slice_mut(r),
                    lr,
                    s.momentum(),
                    wd,
                    s.nesterov(),
                    t == 1,
                ),
            };
            launched.map_err(gpu)?;
        }
        Ok(())
    }

    /// The optimizer's state as the host keeps it in a checkpoint.
    pub fn state(&self, num_params: usize) -> Result<OptimizerState> {
        let down = |x: &CudaSlice<f32>, len: usize| {
            if len == 0 {
                return Ok(Vec::new());
            }
            self.dev
                .stream
                .clone_dtoh(&x.slice(..len))
                .map_err(|e| EngineError::Gpu(format!("downloading the optimizer state: {e}")))
        };
        let v_len = second_moments(self.host.spec().kind, num_params);
        Ok(OptimizerState {
            step: self.step,
            m: down(&self.m, num_params)?,
            v: down(&self.v, v_len)?,
        })
    }

    /// Replaces the state with a saved one; the sizes must match this model.
    pub fn restore(&mut self, state: &OptimizerState, num_params: usize) -> Result<(), String> {
        let v_len = second_moments(self.host.spec().kind, num_params);
        if state.m.len() != num_params || state.v.len() != v_len {
            return Err(format!(
                "optimizer state holds {} + {} values, this model needs {num_params} + {v_len}",
                state.m.len(),
                state.v.len(),
            ));
        }
        let up = |src: &[f32], dst: &mut CudaSlice<f32>| {
            if src.is_empty() {
                return Ok(());
            }
            self.dev
                .stream
                .memcpy_htod(src, &mut dst.slice_mut(..src.len()))
                .map_err(|e| format!("uploading the optimizer state: {e}"))
        };
        up(&state.m, &mut self.m)?;
        up(&state.v, &mut self.v)?;
        self.step = state.step;
        Ok(())
    }

    /// A fresh optimizer (fine-tuning starts its moments at zero).
    pub fn reset(&mut self) -> Result<()> {
        let s = &self.dev.stream;
        let zero = |x: &mut CudaSlice<f32>| {
            s.memset_zeros(x)
                .map_err(|e| EngineError::Gpu(format!("zeroing the optimizer state: {e}")))
        };
        zero(&mut self.m)?;
        zero(&mut self.v)?;
        self.step = 0;
        Ok(())
    }
}

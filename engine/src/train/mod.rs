//! The step loop: what `convoy train` runs in one process and what each worker rank runs.
//!
//! The trainer does no I/O of its own: it reports steps, evaluations, checkpoints and samples
//! as [`Event`]s to its caller, which prints them (CLI) or streams them (worker).

mod gpu;
mod stop;
mod task;

use std::sync::Arc;
use std::time::Instant;

use convoy_kernels::gradnorm;
use serde::{Deserialize, Serialize};

use crate::collective::{DeviceGradReducer, GradReducer, SingleDevice};
use crate::data::loader::LoaderPosition;
use crate::error::{EngineError, Result};
use crate::metrics::ClassMetrics;
use crate::model::gpt::GptConfig;
use crate::model::{Model, TensorInfo};
use crate::optim::{Optimizer, OptimizerState};
use crate::schedule::learning_rate;
use crate::spec::{Backend, JobSpec, NanPolicy};
use convoy_kernels::cuda::Device;
pub use gpu::open_gpu;
use gpu::{GpuStep, check_gpu_model};
pub use stop::StopToken;
use task::Task;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps completed, counting this one.
    pub step: u64,
    pub loss: f64,
    pub lr: f32,
    /// Global gradient L2 norm before clipping.
    pub grad_norm: f32,
    pub step_time_s: f64,
    /// Tokens (or samples) per second over all ranks.
    pub throughput: f64,
    /// The step's update was skipped because its loss was not finite (`on_nan = "skip"`).
    pub skipped: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub step: u64,
    pub val_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<ClassMetrics>,
}

/// Everything needed to continue a job bit-exactly: parameters, optimizer state, step and
/// data position. (Sampling and evaluation derive their randomness from the seed and the
/// step, so they carry no state.)
///
/// A state is also self-describing: with `tensors` (and `gpt` for llm.c) it exports to other
/// formats ([`crate::export`]) without the spec or the data that built the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The model's architecture; a state only loads into the same one.
    pub model: String,
    pub step: u64,
    pub params: Vec<f32>,
    pub optimizer: OptimizerState,
    pub data: LoaderPosition,
    /// Names and shapes of the tensors in `params`, tiling it in order.
    pub tensors: Vec<TensorInfo>,
    /// The GPT's configuration (what an llm.c checkpoint header holds); `None` for other
    /// models.
    pub gpt: Option<GptConfig>,
    /// [`JobSpec::resume_hash`] of the spec that wrote the state: a resume under a spec
    /// that trains differently is refused.
    pub spec_hash: u64,
    /// The metrics of the last step before the state was taken, if any step ran, without its
    /// timings (which differ between ranks, while a state is the same on every rank).
    pub metrics: Option<StepMetrics>,
}

#[allow(
    clippy::large_enum_variant,
    reason = "events are handed to the observer one at a time; observers take the state by value"
)]
pub enum Event<'a> {
    Step(&'a StepMetrics),
    Eval(&'a EvalMetrics),
    /// A checkpoint is due: the state has been copied out of the training buffers.
    Checkpoint(TrainState),
    Sample(&'a str),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub steps: u64,
    pub final_loss: Option<f64>,
    pub eval: Option<EvalMetrics>,
    pub sample: Option<String>,
    pub elapsed_s: f64,
    /// Median throughput over the run's steps, in `unit`s per second.
    pub throughput: f64,
    pub unit: String,
}

pub struct Trainer {
    spec: JobSpec,
    task: Task,
    compute: Compute,
    step: u64,
    /// `spec.resume_hash()`, computed once.
    spec_hash: u64,
    /// What the last `train_step` reported (or the restored state carried).
    last_metrics: Option<StepMetrics>,
}

/// Where the step's arithmetic runs: the host (the model's buffers, the host optimizer, a
/// host all-reduce) or a GPU (the model, the optimizer state and the all-reduce on the device).
enum Compute {
    Host {
        optimizer: Optimizer,
        reducer: Box<dyn GradReducer>,
    },
    Gpu(Box<GpuStep>),
}

impl Compute {
    fn rank(&self) -> usize {
        match self {
            Compute::Host { reducer, .. } => reducer.rank(),
            Compute::Gpu(g) => g.reducer.rank(),
        }
    }
    fn world_size(&self) -> usize {
        match self {
            Compute::Host { reducer, .. } => reducer.world_size(),
            Compute::Gpu(g) => g.reducer.world_size(),
        }
    }
    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<()> {
        match self {
            Compute::Host { reducer, .. } => reducer.sum_scalars(values),
            Compute::Gpu(g) => g.reducer.sum_scalars(values),
        }
    }
}

impl Trainer {
    /// Builds the model and data of `spec` for the reducer's rank. Paths in the spec must be
    /// absolute or relative to the working directory (see [`JobSpec::load`]).
    ///
    /// A `backend = "cuda"` spec trains on GPU 0 when this is a single process (`convoy
    /// train`); ranks of a cluster job build their trainer with [`Trainer::on_gpu`] instead,
    /// with an NCCL all-reduce.
    pub fn new(spec: &JobSpec, reducer: Box<dyn GradReducer>) -> Result<Trainer> {
        if spec.backend == Backend::Cuda {
            check_gpu_model(spec)?;
            if reducer.world_size() != 1 {
                return Err(EngineError::Spec(format!(
                    "backend = \"cuda\" with {} ranks needs the GPU all-reduce (NCCL): submit \
                     the job to a cluster",
                    reducer.world_size()
                )));
            }
            return Trainer::on_gpu(spec, Arc::new(open_gpu(0)?), Box::new(SingleDevice));
        }
        Trainer::build(spec, reducer.rank(), reducer.world_size(), |task| {
            let model = task.model();
            Ok(Compute::Host {
                optimizer: Optimizer::new(
                    &spec.optimizer,
                    model.param_groups(),
                    model.params().len(),
                ),
                reducer,
            })
        })
    }

    /// Builds the model and data of `spec` (`backend = "cuda"`) on `device`, reducing
    /// gradients over the ranks with `reducer`.
    pub fn on_gpu(
        spec: &JobSpec,
        device: Arc<Device>,
        reducer: Box<dyn DeviceGradReducer>,
    ) -> Result<Trainer> {
        check_gpu_model(spec)?;
        Trainer::build(spec, reducer.rank(), reducer.world_size(), |task| {
            task.attach_gpu(
                device.clone(),
                GpuStep::moments(&spec.optimizer),
                spec.precision,
                spec.kernels,
            )?;
            let model = task.model();
            let step = GpuStep::new(
                device,
                reducer,
                &spec.optimizer,
                model.param_groups(),
                model.params().len(),
            )?;
            Ok(Compute::Gpu(Box::new(step)))
        })
    }

    /// What both constructors share: the spec checks, the task, then the compute side.
    fn build(
        spec: &JobSpec,
        rank: usize,
        world: usize,
        compute: impl FnOnce(&mut Task) -> Result<Compute>,
    ) -> Result<Trainer> {
        if let Some(init) = spec
            .init_from
            .as_deref()
            .filter(|_| spec.init_from_job().is_some())
        {
            return Err(EngineError::Spec(format!(
                "init_from = {init:?} names a job's checkpoint on a cluster: submit this spec to \
                 the coordinator, or export the checkpoint and point init_from at the file"
            )));
        }
        if spec.world_size != world {
            return Err(EngineError::Spec(format!(
                "world_size = {} but this process is one of {world} rank(s); `convoy train` runs a single rank: \
                 set world_size = 1 or submit the job to a cluster",
                spec.world_size,
            )));
        }
        let mut task = Task::new(spec, rank, world)?;
        let compute = compute(&mut task)?;
        Ok(Trainer {
            spec: spec.clone(),
            task,
            compute,
            step: 0,
            spec_hash: spec.resume_hash(),
            last_metrics: None,
        })
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model's structure (tensors, groups, fingerprint). On the CUDA backend its host
    /// buffers are not the live parameters: [`Trainer::state`] downloads those.
    pub fn model(&self) -> &dyn Model {
        self.task.model()
    }

    /// "tokens" or "samples": what throughput counts.
    pub fn unit(&self) -> &'static str {
        self.task.unit()
    }

    /// One optimizer step: `grad_accum` micro-steps, the gradient all-reduce, clipping and the
    /// update.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let started = Instant::now();
        let accum = self.spec.grad_accum;
        let (sum, count) = match &mut self.compute {
            Compute::Host { reducer, .. } => self.task.host_micro_steps(accum, reducer.as_mut())?,
            Compute::Gpu(g) => self.task.gpu_micro_steps(accum, g.reducer.as_mut())?,
        };
        let mut totals = [sum, count as f64];
        self.compute.sum_scalars(&mut totals)?;
        let loss = totals[0] / totals[1].max(1.0);
        self.step += 1;

        let lr = learning_rate(
            &self.spec.schedule,
            self.spec.optimizer.lr,
            self.step - 1,
            self.spec.steps,
        );
        let (mut grad_norm, mut skipped) = (f32::NAN, false);
        let clip = self.spec.optimizer.grad_clip;
        if loss.is_finite() {
            match &mut self.compute {
                Compute::Host { optimizer, .. } => {
                    let model = self.task.model_mut();
                    grad_norm = gradnorm::global_norm(model.grads());
                    if clip > 0.0 {
                        gradnorm::clip_grads(model.grads_mut(), grad_norm, clip);
                    }
                    let (params, grads) = model.params_and_grads();
                    optimizer.step(params, grads, lr);
                }
                Compute::Gpu(g) => {
                    let model = self
                        .task
                        .gpu_model()
                        .expect("a GPU trainer has a GPU model");
                    grad_norm = g.norm_and_clip(model, clip)?;
                    g.update(model, lr)?;
                }
            }
        } else {
            match self.spec.on_nan {
                NanPolicy::Fail => {
                    return Err(EngineError::NonFiniteLoss {
                        step: self.step,
                        value: loss as f32,
                    });
                }
                NanPolicy::Skip => skipped = true,
            }
        }
        let step_time_s = started.elapsed().as_secs_f64();
        let examples =
            (self.task.examples_per_micro_step() * accum * self.compute.world_size()) as f64;
        let metrics = StepMetrics {
            step: self.step,
            loss,
            lr,
            grad_norm,
            step_time_s,
            throughput: examples / step_time_s,
            skipped,
        };
        self.last_metrics = Some(metrics.clone());
        Ok(metrics)
    }

    /// The metrics of the last step, if one has run (or was restored).
    pub fn last_metrics(&self) -> Option<&StepMetrics> {
        self.last_metrics.as_ref()
    }

    /// Validation loss (and classification metrics), or `None` without validation data.
    pub fn evaluate(&mut self) -> Result<Option<EvalMetrics>> {
        let Some((sum, count, classification)) = self.task.evaluate(self.spec.eval.batches)? else {
            return Ok(None);
        };
        // Language-model ranks evaluate disjoint slices; classifiers all see the whole set.
        let mut totals = [sum, count as f64];
        if classification.is_none() {
            self.compute.sum_scalars(&mut totals)?;
        }
        Ok(Some(EvalMetrics {
            step: self.step,
            val_loss: totals[0] / totals[1].max(1.0),
            classification,
        }))
    }

    /// Text generated by a language model per the spec's `[sample]`, seeded by the job's seed
    /// and the step, or `None` when the spec asks for none.
    pub fn sample(&mut self) -> Result<Option<String>> {
        let Some(s) = self.spec.sample.clone() else {
            return Ok(None);
        };
        match &mut self.task {
            Task::Lm(t) => t
                .sample(&s, s.seed.unwrap_or(self.spec.seed.wrapping_add(self.step)))
                .map(Some),
            Task::Classify(_) => Ok(None),
        }
    }

    /// The live parameters: the model's buffer, or a download from the GPU.
    fn params(&self) -> Result<std::borrow::Cow<'_, [f32]>> {
        match self.task.gpu_model_ref() {
            Some(g) => g.download_params().map(std::borrow::Cow::Owned),
            None => Ok(std::borrow::Cow::Borrowed(self.model().params())),
        }
    }

    /// Replaces the live parameters (host model, and the GPU's copy when there is one).
    fn set_params(&mut self, params: &[f32]) -> Result<()> {
        self.task.model_mut().params_mut().copy_from_slice(params);
        match self.task.gpu_model() {
            Some(g) => g.upload_params(params),
            None => Ok(()),
        }
    }

    /// Writes a GPT's weights as an llm.c checkpoint file (fp32).
    pub fn export_llmc(&self, path: &std::path::Path) -> Result<()> {
        match &self.task {
            Task::Lm(t) => crate::model::llmc::write(path, t.model.config(), &self.params()?),
            Task::Classify(_) => Err(EngineError::Spec(
                "export to llm.c format needs a GPT model".into(),
            )),
        }
    }

    /// A copy of the complete training state (from the GPU: a download, which waits for the
    /// queued work).
    pub fn state(&self) -> Result<TrainState> {
        let model = self.model();
        let optimizer = match &self.compute {
            Compute::Host { optimizer, .. } => optimizer.state().clone(),
            Compute::Gpu(g) => g.state(model.params().len())?,
        };
        Ok(TrainState {
            model: model.fingerprint(),
            step: self.step,
            params: self.params()?.into_owned(),
            optimizer,
            data: self.task.data_position(),
            tensors: model.tensors(),
            gpt: self.task.gpt_config(),
            spec_hash: self.spec_hash,
            // Every rank's state must encode to the same bytes (each uploads one byte range of
            // it): the step's timings are this rank's own, so they stay out.
            metrics: self.last_metrics.clone().map(|m| StepMetrics {
                step_time_s: 0.0,
                throughput: 0.0,
                ..m
            }),
        })
    }

    /// Continues from a saved state; it must come from the same model architecture and a
    /// spec with the same [`JobSpec::resume_hash`] (only `steps`, `[checkpoint]` and `[eval]`
    /// may differ).
    pub fn restore(&mut self, state: TrainState) -> Result<()> {
        let mine = self.model().fingerprint();
        let bad = EngineError::Resume;
        if state.model != mine {
            return Err(bad(format!(
                "the saved state is for {} but the spec builds {mine}",
                state.model
            )));
        }
        if state.spec_hash != self.spec_hash {
            return Err(bad(format!(
                "the checkpoint was written by a different spec (model, data or optimizer \
                 settings changed): its spec hash is {:016x}, this spec's is {:016x}; only \
                 steps, [checkpoint] and [eval] may change on resume",
                state.spec_hash, self.spec_hash
            )));
        }
        self.check_param_count(&state).map_err(bad)?;
        if state.step > self.spec.steps {
            return Err(bad(format!(
                "the saved state is at step {} but the spec has steps = {}",
                state.step, self.spec.steps
            )));
        }
        let n = state.params.len();
        match &mut self.compute {
            Compute::Host { optimizer, .. } => optimizer.restore(state.optimizer).map_err(bad)?,
            Compute::Gpu(g) => g.restore(&state.optimizer, n).map_err(bad)?,
        }
        self.task.set_data_position(state.data)?;
        self.set_params(&state.params)?;
        self.step = state.step;
        self.last_metrics = state.metrics;
        Ok(())
    }

    /// Starts from another job's parameters (fine-tuning): copies only the parameters of
    /// `state`, which must come from the same model architecture, whatever spec wrote it.
    /// The step stays 0 and the optimizer starts fresh, so this is for a trainer that has not
    /// stepped yet.
    pub fn init_params_from(&mut self, state: &TrainState) -> Result<()> {
        let bad = EngineError::InitFrom;
        let mine = self.model().fingerprint();
        if state.model != mine {
            return Err(bad(format!(
                "the checkpoint holds {} but the spec builds {mine}",
                state.model
            )));
        }
        if self.step != 0 {
            return Err(bad(format!(
                "this trainer is at step {}; parameters can only be replaced before the first step",
                self.step
            )));
        }
        self.check_param_count(state).map_err(bad)?;
        self.set_params(&state.params)?;
        let model = self.task.model();
        match &mut self.compute {
            Compute::Host { optimizer, .. } => {
                *optimizer = Optimizer::new(
                    &self.spec.optimizer,
                    model.param_groups(),
                    model.params().len(),
                )
            }
            Compute::Gpu(g) => g.reset()?,
        }
        self.last_metrics = None;
        Ok(())
    }

    /// A decoded state with the right fingerprint can still hold the wrong number of values
    /// (a damaged or hand-made file); refuse it rather than panic on the copy.
    fn check_param_count(&self, state: &TrainState) -> Result<(), String> {
        let n = self.model().params().len();
        if state.params.len() != n {
            return Err(format!(
                "the checkpoint holds {} parameters but the model has {n}",
                state.params.len()
            ));
        }
        Ok(())
    }

    /// Trains to the spec's step count, evaluating, checkpointing and sampling as it asks,
    /// and reports every event to `observe`. Before each step it checks `stop`, and returns
    /// [`EngineError::Stopped`] once another thread has stopped it.
    pub fn run(&mut self, observe: &mut dyn FnMut(Event<'_>), stop: &StopToken) -> Result<Summary> {
        let started = Instant::now();
        let (steps, eval_every, ckpt_every) = (
            self.spec.steps,
            self.spec.eval.interval,
            self.spec.checkpoint.interval,
        );
        let mut throughputs = Vec::new();
        let mut final_loss = None;
        while self.step < steps {
            if let Some(reason) = stop.reason() {
                return Err(EngineError::Stopped {
                    step: self.step,
                    reason,
                });
            }
            let m = self.train_step()?;
            final_loss = Some(m.loss);
            throughputs.push(m.throughput);
            observe(Event::Step(&m));
            if eval_every > 0
                && self.step.is_multiple_of(eval_every)
                && self.step < steps
                && let Some(e) = self.evaluate()?
            {
                observe(Event::Eval(&e));
            }
            if ckpt_every > 0 && (self.step.is_multiple_of(ckpt_every) || self.step == steps) {
                observe(Event::Checkpoint(self.state()?));
            }
        }
        let eval = self.evaluate()?;
        if let Some(e) = &eval {
            observe(Event::Eval(e));
        }
        let sample = if self.compute.rank() == 0 {
            self.sample()?
        } else {
            None
        };
        if let Some(s) = &sample {
            observe(Event::Sample(s));
        }
        throughputs.sort_by(f64::total_cmp);
        Ok(Summary {
            steps: self.step,
            final_loss,
            eval,
            sample,
            elapsed_s: started.elapsed().as_secs_f64(),
            throughput: throughputs
                .get(throughputs.len() / 2)
                .copied()
                .unwrap_or(0.0),
            unit: self.unit().to_string(),
        })
    }
}

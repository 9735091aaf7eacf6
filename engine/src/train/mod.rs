//! The step loop: what `convoy train` runs in one process and what each worker rank runs.
//!
//! The trainer does no I/O of its own: it reports steps, evaluations, checkpoints and samples
//! as [`Event`]s to its caller, which prints them (CLI) or streams them (worker).

mod task;

use std::time::Instant;

use convoy_kernels::gradnorm;
use serde::{Deserialize, Serialize};

use crate::collective::GradReducer;
use crate::data::loader::LoaderPosition;
use crate::error::{EngineError, Result};
use crate::metrics::ClassMetrics;
use crate::model::Model;
use crate::optim::{Optimizer, OptimizerState};
use crate::schedule::learning_rate;
use crate::spec::{Backend, JobSpec, NanPolicy};
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The model's architecture; a state only loads into the same one.
    pub model: String,
    pub step: u64,
    pub params: Vec<f32>,
    pub optimizer: OptimizerState,
    pub data: LoaderPosition,
}

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
    optimizer: Optimizer,
    reducer: Box<dyn GradReducer>,
    step: u64,
}

impl Trainer {
    /// Builds the model and data of `spec` for the reducer's rank. Paths in the spec must be
    /// absolute or relative to the working directory (see [`JobSpec::load`]).
    pub fn new(spec: &JobSpec, reducer: Box<dyn GradReducer>) -> Result<Trainer> {
        if spec.backend == Backend::Cuda {
            return Err(EngineError::Spec(
                "backend = \"cuda\": this build of convoy trains on the CPU backend only".into(),
            ));
        }
        if spec.world_size != reducer.world_size() {
            return Err(EngineError::Spec(format!(
                "world_size = {} but this process is one of {} rank(s); `convoy train` runs a single rank: \
                 set world_size = 1 or submit the job to a cluster",
                spec.world_size,
                reducer.world_size()
            )));
        }
        let task = Task::new(spec, reducer.rank(), reducer.world_size())?;
        let model = task.model();
        let optimizer = Optimizer::new(&spec.optimizer, model.param_groups(), model.params().len());
        Ok(Trainer {
            spec: spec.clone(),
            task,
            optimizer,
            reducer,
            step: 0,
        })
    }

    pub fn step(&self) -> u64 {
        self.step
    }

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
        self.task.model_mut().grads_mut().fill(0.0);
        let (mut sum, mut count) = (0.0, 0usize);
        for micro in 0..accum {
            let reducer = &mut self.reducer;
            let last = micro + 1 == accum;
            let mut hook = |g: &[f32], bucket: &crate::collective::Bucket| {
                if last {
                    reducer.bucket_ready(g, bucket)
                } else {
                    Ok(())
                }
            };
            let (s, n) = self.task.forward_backward(1.0 / accum as f32, &mut hook)?;
            sum += s;
            count += n;
        }
        self.reducer.finish(self.task.model_mut().grads_mut())?;
        let mut totals = [sum, count as f64];
        self.reducer.sum_scalars(&mut totals)?;
        let loss = totals[0] / totals[1].max(1.0);
        self.step += 1;

        let lr = learning_rate(
            &self.spec.schedule,
            self.spec.optimizer.lr,
            self.step - 1,
            self.spec.steps,
        );
        let (mut grad_norm, mut skipped) = (f32::NAN, false);
        if loss.is_finite() {
            let model = self.task.model_mut();
            grad_norm = gradnorm::global_norm(model.grads());
            if self.spec.optimizer.grad_clip > 0.0 {
                gradnorm::clip_grads(model.grads_mut(), grad_norm, self.spec.optimizer.grad_clip);
            }
            let (params, grads) = model.params_and_grads();
            self.optimizer.step(params, grads, lr);
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
            (self.task.examples_per_micro_step() * accum * self.reducer.world_size()) as f64;
        Ok(StepMetrics {
            step: self.step,
            loss,
            lr,
            grad_norm,
            step_time_s,
            throughput: examples / step_time_s,
            skipped,
        })
    }

    /// Validation loss (and classification metrics), or `None` without validation data.
    pub fn evaluate(&mut self) -> Result<Option<EvalMetrics>> {
        let Some((sum, count, classification)) = self.task.evaluate(self.spec.eval.batches)? else {
            return Ok(None);
        };
        // Language-model ranks evaluate disjoint slices; classifiers all see the whole set.
        let mut totals = [sum, count as f64];
        if classification.is_none() {
            self.reducer.sum_scalars(&mut totals)?;
        }
        Ok(Some(EvalMetrics {
            step: self.step,
            val_loss: totals[0] / totals[1].max(1.0),
            classification,
        }))
    }

    /// Text generated by a language model per the spec's `[sample]`, seeded by the job's seed
    /// and the step, or `None` when the spec asks for none.
    pub fn sample(&mut self) -> Option<String> {
        let s = self.spec.sample.clone()?;
        match &mut self.task {
            Task::Lm(t) => {
                Some(t.sample(&s, s.seed.unwrap_or(self.spec.seed.wrapping_add(self.step))))
            }
            Task::Classify(_) => None,
        }
    }

    /// Writes a GPT's weights as an llm.c checkpoint file (fp32).
    pub fn export_llmc(&self, path: &std::path::Path) -> Result<()> {
        match &self.task {
            Task::Lm(t) => crate::model::llmc::write(path, t.model.config(), t.model.params()),
            Task::Classify(_) => Err(EngineError::Spec(
                "export to llm.c format needs a GPT model".into(),
            )),
        }
    }

    /// A copy of the complete training state.
    pub fn state(&self) -> TrainState {
        TrainState {
            model: self.model().fingerprint(),
            step: self.step,
            params: self.model().params().to_vec(),
            optimizer: self.optimizer.state().clone(),
            data: self.task.data_position(),
        }
    }

    /// Continues from a saved state; it must come from the same model architecture.
    pub fn restore(&mut self, state: TrainState) -> Result<()> {
        let mine = self.model().fingerprint();
        let bad = EngineError::Resume;
        if state.model != mine {
            return Err(bad(format!(
                "the saved state is for {} but the spec builds {mine}",
                state.model
            )));
        }
        if state.step > self.spec.steps {
            return Err(bad(format!(
                "the saved state is at step {} but the spec has steps = {}",
                state.step, self.spec.steps
            )));
        }
        self.optimizer.restore(state.optimizer).map_err(bad)?;
        self.task.set_data_position(state.data)?;
        self.task
            .model_mut()
            .params_mut()
            .copy_from_slice(&state.params);
        self.step = state.step;
        Ok(())
    }

    /// Trains to the spec's step count, evaluating, checkpointing and sampling as it asks,
    /// and reports every event to `observe`.
    pub fn run(&mut self, observe: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
        let started = Instant::now();
        let (steps, eval_every, ckpt_every) = (
            self.spec.steps,
            self.spec.eval.interval,
            self.spec.checkpoint.interval,
        );
        let mut throughputs = Vec::new();
        let mut final_loss = None;
        while self.step < steps {
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
                observe(Event::Checkpoint(self.state()));
            }
        }
        let eval = self.evaluate()?;
        if let Some(e) = &eval {
            observe(Event::Eval(e));
        }
        let sample = if self.reducer.rank() == 0 {
            self.sample()
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

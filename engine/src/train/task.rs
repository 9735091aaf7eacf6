//! The two kinds of work a rank does: language modelling (GPT over tokens) and
//! classification (MLP over tabular rows). Each owns its model, its data and its batch
//! buffers; the trainer drives both through the same few calls.

use std::path::PathBuf;
use std::sync::Arc;

use convoy_kernels::cuda::Device;
use cudarc::driver::CudaSlice;

use crate::collective::{Bucket, DeviceGradReducer, GradReducer};
use crate::data::loader::{LoaderConfig, LoaderPosition, TokenLoader, TokenSource, expand_paths};
use crate::data::prepare::{DATASET_INFO_FILE, DatasetInfo, tokenize_text};
use crate::data::tabular::{Standardizer, Tabular, TabularLoader};
use crate::data::tokenizer::{Tokenizer, TokenizerKind};
use crate::error::{EngineError, Result};
use crate::metrics::{self, ClassMetrics};
use crate::model::gpt::cuda::GptCuda;
use crate::model::gpt::{Gpt, GptConfig};
use crate::model::mlp::{Mlp, MlpConfig};
use crate::model::{BucketHook, Model, llmc};
use crate::sample;
use crate::spec::{DataSpec, GptSpec, JobSpec, KernelSpec, ModelSpec, Precision, SampleSpec};

#[allow(
    clippy::large_enum_variant,
    reason = "a trainer holds exactly one task"
)]
pub(crate) enum Task {
    Lm(LmTask),
    Classify(ClsTask),
}

pub(crate) struct LmTask {
    /// The model on the host: the live one on the CPU backend; on the CUDA backend the
    /// structure and the initial parameters, the live ones being `gpu`'s.
    pub model: Gpt,
    pub gpu: Option<GptCuda>,
    train: TokenLoader,
    val: Option<TokenLoader>,
    pub tokenizer: Tokenizer,
    b: usize,
    t: usize,
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

pub(crate) struct ClsTask {
    pub model: Mlp,
    train: TabularLoader,
    val: Option<Tabular>,
    b: usize,
    x: Vec<f32>,
    y: Vec<u32>,
}

impl Task {
    pub fn new(spec: &JobSpec, rank: usize, world: usize) -> Result<Task> {
        match &spec.model {
            ModelSpec::Gpt(g) => LmTask::new(spec, g, rank, world).map(Task::Lm),
            ModelSpec::Mlp(_) => ClsTask::new(spec, rank, world).map(Task::Classify),
        }
    }

    pub fn model(&self) -> &dyn Model {
        match self {
            Task::Lm(t) => &t.model,
            Task::Classify(t) => &t.model,
        }
    }

    pub fn model_mut(&mut self) -> &mut dyn Model {
        match self {
            Task::Lm(t) => &mut t.model,
            Task::Classify(t) => &mut t.model,
        }
    }

    /// The GPT's configuration, for a language model.
    pub fn gpt_config(&self) -> Option<GptConfig> {
        match self {
            Task::Lm(t) => Some(*t.model.config()),
            Task::Classify(_) => None,
        }
    }

    /// Tokens (language models) or rows (classifiers) in one rank's micro-batch.
    pub fn examples_per_micro_step(&self) -> usize {
        match self {
            Task::Lm(t) => t.b * t.t,
            Task::Classify(t) => t.b,
        }
    }

    pub fn unit(&self) -> &'static str {
        match self {
            Task::Lm(_) => "tokens",
            Task::Classify(_) => "samples",
        }
    }

    /// Moves a language model onto `dev` for training: uploads its parameters and allocates
    /// every buffer of its batch shape now, so a batch too big for the GPU fails before the
    /// first step with the estimated need.
    pub fn attach_gpu(
        &mut self,
        dev: Arc<Device>,
        moments: u64,
        precision: Precision,
        kernels: KernelSpec,
    ) -> Result<()> {
        let Task::Lm(t) = self else {
            return Err(EngineError::Spec(
                "backend = \"cuda\" trains GPT models only".into(),
            ));
        };
        let mut gpu = GptCuda::new(
            dev,
            *t.model.config(),
            t.model.params(),
            moments,
            precision,
            kernels,
        )?;
        gpu.reserve(t.b, t.t, true)?;
        t.gpu = Some(gpu);
        Ok(())
    }

    pub fn gpu_model(&mut self) -> Option<&mut GptCuda> {
        match self {
            Task::Lm(t) => t.gpu.as_mut(),
            Task::Classify(_) => None,
        }
    }

    pub fn gpu_model_ref(&self) -> Option<&GptCuda> {
        match self {
            Task::Lm(t) => t.gpu.as_ref(),
            Task::Classify(_) => None,
        }
    }

    /// The gradients of one optimizer step on the host: `accum` micro-steps, the last one
    /// announcing its buckets to `reducer`, then the all-reduce. Returns (loss sum, count).
    pub fn host_micro_steps(
        &mut self,
        accum: usize,
        reducer: &mut dyn GradReducer,
    ) -> Result<(f64, usize)> {
        self.model_mut().grads_mut().fill(0.0);
        let (mut sum, mut count) = (0.0, 0usize);
        for micro in 0..accum {
            let last = micro + 1 == accum;
            let mut hook = |g: &[f32], bucket: &Bucket| {
                if last {
                    reducer.bucket_ready(g, bucket)
                } else {
                    Ok(())
                }
            };
            let (s, n) = self.forward_backward(1.0 / accum as f32, &mut hook)?;
            sum += s;
            count += n;
        }
        reducer.finish(self.model_mut().grads_mut())?;
        Ok((sum, count))
    }

    /// The same on the GPU: the buckets go to the device all-reduce as the backward pass
    /// queues them, and `finish` orders the update after the reduction.
    pub fn gpu_micro_steps(
        &mut self,
        accum: usize,
        reducer: &mut dyn DeviceGradReducer,
    ) -> Result<(f64, usize)> {
        let Task::Lm(t) = self else {
            unreachable!("GPU trainers build language models only")
        };
        let gpu = t
            .gpu
            .as_mut()
            .expect("attach_gpu ran when the trainer was built");
        gpu.zero_grads()?;
        let stream = gpu.device().stream.clone();
        let (mut sum, mut count) = (0.0, 0usize);
        for micro in 0..accum {
            t.train.next_batch(&mut t.inputs, &mut t.targets)?;
            let (s, n) = gpu.forward(
                &t.inputs,
                Some(&t.targets),
                Some(1.0 / accum as f32),
                t.b,
                t.t,
            )?;
            let last = micro + 1 == accum;
            let mut hook = |g: &CudaSlice<f32>, bucket: &Bucket| {
                if last {
                    reducer.bucket_ready(g, bucket, &stream)
                } else {
                    Ok(())
                }
            };
            gpu.backward(&mut hook)?;
            sum += s;
            count += n;
        }
        let (_, grads) = gpu.params_and_grads();
        reducer.finish(grads, &stream)?;
        Ok((sum, count))
    }

    /// Forward and backward on the next micro-batch; gradients accumulate into the model's
    /// buffer scaled by `grad_scale`. Returns (loss sum, loss count).
    pub fn forward_backward(
        &mut self,
        grad_scale: f32,
        hook: BucketHook<'_>,
    ) -> Result<(f64, usize)> {
        match self {
            Task::Lm(t) => {
                t.train.next_batch(&mut t.inputs, &mut t.targets)?;
                let r = t
                    .model
                    .forward(&t.inputs, Some(&t.targets), Some(grad_scale), t.b, t.t);
                t.model.backward(&t.inputs, hook)?;
                Ok(r)
            }
            Task::Classify(t) => {
                t.train.next_batch(&mut t.x, &mut t.y);
                t.model.forward(&t.x, t.b);
                let r = t.model.loss(&t.y, Some(grad_scale));
                t.model.backward(&t.x, hook)?;
                Ok(r)
            }
        }
    }

    /// Loss sums and counts (to be summed over ranks) plus classification metrics.
    pub fn evaluate(
        &mut self,
        batches: usize,
    ) -> Result<Option<(f64, usize, Option<ClassMetrics>)>> {
        match self {
            Task::Lm(t) => {
                let Some(val) = &mut t.val else {
                    return Ok(None);
                };
                val.reset();
                let (mut sum, mut count) = (0.0, 0);
                for _ in 0..batches.min(val.batches_per_epoch()) {
                    val.next_batch(&mut t.inputs, &mut t.targets)?;
                    let (s, n) = match &mut t.gpu {
                        Some(g) => g.forward(&t.inputs, Some(&t.targets), None, t.b, t.t)?,
                        None => t.model.forward(&t.inputs, Some(&t.targets), None, t.b, t.t),
                    };
                    sum += s;
                    count += n;
                }
                Ok(Some((sum, count, None)))
            }
            Task::Classify(t) => {
                let Some(val) = &t.val else { return Ok(None) };
                let k = t.model.config().classes;
                let d = val.n_features;
                let mut confusion = vec![0u64; k * k];
                let (mut sum, mut count) = (0.0, 0);
                for start in (0..val.len()).step_by(t.b) {
                    let end = (start + t.b).min(val.len());
                    let n = end - start;
                    let logits = t.model.forward(&val.features[start * d..end * d], n);
                    for (row, &label) in val.labels[start..end].iter().enumerate() {
                        let predicted = sample::argmax(&logits[row * k..(row + 1) * k]);
                        confusion[label as usize * k + predicted] += 1;
                    }
                    let (s, c) = t.model.loss(&val.labels[start..end], None);
                    sum += s;
                    count += c;
                }
                Ok(Some((
                    sum,
                    count,
                    Some(metrics::from_confusion(&confusion, k)),
                )))
            }
        }
    }

    pub fn data_position(&self) -> LoaderPosition {
        match self {
            Task::Lm(t) => t.train.position(),
            Task::Classify(t) => t.train.position(),
        }
    }

    pub fn set_data_position(&mut self, pos: LoaderPosition) -> Result<()> {
        match self {
            Task::Lm(t) => t.train.set_position(pos),
            Task::Classify(t) => t.train.set_position(pos),
        }
    }
}

impl LmTask {
    fn new(spec: &JobSpec, g: &GptSpec, rank: usize, world: usize) -> Result<LmTask> {
        let tokenizer_kind = spec
            .tokenizer()
            .expect("validation pairs GPT models with token data");
        let tokenizer = Tokenizer::new(tokenizer_kind)?;
        let vocab_size = spec.gpt_vocab_size().expect("a GPT spec has a vocabulary");
        let cfg = GptConfig {
            max_seq_len: g.context,
            vocab_size,
            padded_vocab_size: g
                .padded_vocab_size
                .unwrap_or(vocab_size.div_ceil(128) * 128),
            n_layer: g.n_layer,
            n_head: g.n_head,
            channels: g.n_embd,
        };
        let model = match &spec.init_from {
            Some(path) => {
                let path = PathBuf::from(path);
                let (found, params) = llmc::read(&path)?;
                llmc::check_matches(&path, &found, &cfg)?;
                Gpt::from_params(cfg, params)
            }
            None => Gpt::new(cfg, spec.seed),
        };
        let (b, t) = (
            spec.batch_size,
            spec.seq_len.expect("validation requires seq_len for GPT"),
        );
        let loader_cfg = |shuffle| LoaderConfig {
            batch: b,
            seq_len: t,
            rank,
            world,
            shuffle,
            seed: spec.seed,
            vocab_size,
        };
        let (train, val) = match &spec.data {
            DataSpec::Tokens(d) => {
                let paths = expand_paths(&d.train)?;
                check_dataset_tokenizer(&paths, tokenizer_kind)?;
                let train = TokenLoader::open(&paths, loader_cfg(d.shuffle))?;
                let val = match &d.val {
                    Some(v) => Some(TokenLoader::open(&expand_paths(v)?, loader_cfg(false))?),
                    None => None,
                };
                (train, val)
            }
            DataSpec::Text(d) => {
                let (mut train_src, mut val_src) = (Vec::new(), Vec::new());
                for path in &d.files {
                    let text =
                        std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
                    let (tr, va) = tokenize_text(&text, &tokenizer, d.val_fraction);
                    let name = path.display().to_string();
                    train_src.push(TokenSource::Memory {
                        name: name.clone(),
                        tokens: tr,
                    });
                    if !va.is_empty() {
                        val_src.push(TokenSource::Memory { name, tokens: va });
                    }
                }
                let train = TokenLoader::new(train_src, loader_cfg(d.shuffle))?;
                let val = if val_src.is_empty() {
                    None
                } else {
                    Some(TokenLoader::new(val_src, loader_cfg(false))?)
                };
                (train, val)
            }
            DataSpec::Csv(_) => unreachable!("validation pairs GPT models with token data"),
        };
        Ok(LmTask {
            model,
            gpu: None,
            train,
            val,
            tokenizer,
            b,
            t,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
        })
    }

    /// Generates text after `prompt` (or after end-of-text / a newline when it is empty).
    pub fn sample(&mut self, s: &SampleSpec, seed: u64) -> Result<String> {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut tokens = self.tokenizer.encode(&s.prompt);
        let prompt_len = tokens.len();
        if tokens.is_empty() {
            tokens.push(self.tokenizer.eot().unwrap_or(u32::from(b'\n')));
        }
        let context = self.model.config().max_seq_len;
        for _ in 0..s.tokens {
            let window = &tokens[tokens.len().saturating_sub(context)..];
            let next = match &mut self.gpu {
                Some(g) => {
                    let logits = g.next_token_logits(window)?;
                    sample::pick(&logits, s.temperature, s.top_k, &mut rng)
                }
                None => {
                    let logits = self.model.next_token_logits(window);
                    sample::pick(logits, s.temperature, s.top_k, &mut rng)
                }
            };
            tokens.push(next);
        }
        let start = if prompt_len == 0 { 1 } else { 0 };
        Ok(self.tokenizer.decode(&tokens[start..]))
    }
}

/// Shards written by `convoy data prepare` sit beside a `dataset.json` naming their tokenizer;
/// training them with another tokenizer would silently learn garbage, so refuse.
fn check_dataset_tokenizer(paths: &[PathBuf], kind: TokenizerKind) -> Result<()> {
    let Some(info_path) = paths
        .first()
        .and_then(|p| p.parent())
        .map(|d| d.join(DATASET_INFO_FILE))
    else {
        return Ok(());
    };
    if !info_path.exists() {
        return Ok(());
    }
    let info = DatasetInfo::load(&info_path)?;
    if info.tokenizer != kind {
        return Err(EngineError::data(
            &info_path,
            format!(
                "the shards were written with the {:?} tokenizer but the spec says {kind:?}",
                info.tokenizer
            ),
        ));
    }
    Ok(())
}

impl ClsTask {
    fn new(spec: &JobSpec, rank: usize, world: usize) -> Result<ClsTask> {
        let (ModelSpec::Mlp(m), DataSpec::Csv(d)) = (&spec.model, &spec.data) else {
            unreachable!("validation pairs MLP models with CSV data")
        };
        let all = Tabular::load_csv(&d.path)?;
        let (mut train, mut val) = if d.val_fraction > 0.0 {
            all.split(d.val_fraction, spec.seed)
        } else {
            let n_features = all.n_features;
            (
                all,
                Tabular {
                    features: Vec::new(),
                    labels: Vec::new(),
                    n_features,
                },
            )
        };
        if d.standardize {
            let s = Standardizer::fit(&train);
            s.apply(&mut train);
            s.apply(&mut val);
        }
        let cfg = MlpConfig {
            inputs: train.n_features,
            hidden: m.hidden.clone(),
            classes: train.num_classes().max(val.num_classes()),
            activation: m.activation,
            loss: m.loss,
        };
        if cfg.classes < 2 {
            return Err(EngineError::data(
                &d.path,
                "needs at least two classes (labels 0 and 1)",
            ));
        }
        let model = Mlp::new(cfg, spec.seed);
        let b = spec.batch_size;
        let nf = train.n_features;
        let train = TabularLoader::new(train, b, rank, world, d.shuffle, spec.seed)?;
        let val = if !val.is_empty() { Some(val) } else { None };
        Ok(ClsTask {
            model,
            train,
            val,
            b,
            x: vec![0.0; b * nf],
            y: vec![0; b],
        })
    }
}

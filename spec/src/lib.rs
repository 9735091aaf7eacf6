//! The job spec: one TOML file that says everything about a training job.
//!
//! The same types are parsed by `convoy train`, `convoy submit`, the coordinator and each
//! rank, so a spec is validated the same way everywhere, before any work starts. Unknown keys
//! are rejected so a typo (`setps = 100`) is an error rather than a silently ignored setting.
//!
//! A crate of its own, with nothing heavier than serde and toml: the coordinator validates
//! every submitted spec without linking the training engine (its kernels, the CUDA bindings,
//! the tokenizer tables).

mod error;
mod hash;
mod validate;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::SpecError;
pub use hash::write_canonical;
pub use validate::FLASH_HEAD_SIZES;

type Result<T, E = SpecError> = std::result::Result<T, E>;

/// The tokenizers a language-model spec can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// One token per byte (256).
    Byte,
    /// GPT-2's byte-pair encoding (50257).
    Gpt2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A human-readable name; shown in listings and logs.
    pub name: String,
    /// Seeds parameter initialisation, data shuffling and sampling.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Optimizer steps to run.
    pub steps: u64,
    /// Examples (sequences or rows) per rank per micro-step.
    pub batch_size: usize,
    /// Tokens per sequence (language models only); at most `model.context`.
    #[serde(default)]
    pub seq_len: Option<usize>,
    /// Micro-steps whose gradients are summed before each optimizer step.
    #[serde(default = "defaults::one")]
    pub grad_accum: usize,
    /// Ranks that train data-parallel; each sees `batch_size` examples per micro-step.
    #[serde(default = "defaults::one")]
    pub world_size: usize,
    #[serde(default)]
    pub backend: Backend,
    /// The arithmetic of the GEMMs on the CUDA backend (left out of the canonical form when
    /// fp32, so existing specs keep their resume hash).
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    /// Which kernels the CUDA backend runs for the GPT's products and attention (left out of
    /// the canonical form when default, so existing specs keep their resume hash).
    #[serde(default, skip_serializing_if = "KernelSpec::is_default")]
    pub kernels: KernelSpec,
    /// CPU threads per rank (default: all cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Start from existing weights: a path to an llm.c GPT-2 checkpoint file, or on a cluster
    /// another job's checkpoint, `"job:ID"` (its latest) or `"job:ID@STEP"` (fine-tuning).
    #[serde(default)]
    pub init_from: Option<String>,
    /// What a non-finite loss does: stop the job (default) or skip that step's update.
    #[serde(default)]
    pub on_nan: NanPolicy,
    pub model: ModelSpec,
    pub data: DataSpec,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    #[serde(default)]
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub eval: EvalSpec,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Text generation at the end of training (language models only).
    #[serde(default)]
    pub sample: Option<SampleSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Cpu,
    Cuda,
}

/// `fp32`: every op in fp32. `bf16` (CUDA only): mixed precision as llm.c and PyTorch's
/// autocast do it: activations are stored as bf16 and every matrix product of the GPT (linear
/// layers, LM head, attention's batched products) takes bf16 operands on the tensor cores
/// and accumulates in fp32; the master weights (rounded to bf16 once per forward), gradients
/// and optimizer state stay fp32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

/// `[kernels]`: which implementation of the same arithmetic the CUDA backend runs. They are
/// part of the spec, not of the machine's environment, because each choice rounds
/// differently: a job's parameters are bit-reproducible, and its checkpoints resume
/// bit-exactly, only under the one choice (so they are in the resume hash).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// The GPT's matrix products.
    #[serde(default)]
    pub gemm: GemmKernels,
    /// Attention of bf16 GPT models.
    #[serde(default)]
    pub attention: AttentionKernels,
}

impl KernelSpec {
    pub fn is_default(&self) -> bool {
        *self == KernelSpec::default()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmKernels {
    /// convoy's own GEMMs (`kernels/cuda/matmul.cu`).
    #[default]
    Convoy,
    /// NVIDIA's cuBLASLt, with the same operand and output types, for comparison.
    Cublaslt,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernels {
    /// Scores and probabilities materialised as [B, NH, T, T] matrices.
    #[default]
    Materialized,
    /// Tile by tile with an online softmax, keeping a log-sum-exp per query (bf16 only;
    /// heads of 16, 32 or 64 channels).
    Flash,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    #[default]
    Fail,
    Skip,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelSpec {
    Gpt(GptSpec),
    Mlp(MlpSpec),
}

/// A GPT-2 family decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptSpec {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Maximum sequence length (the position-embedding table's size).
    pub context: usize,
    /// Vocabulary size; defaults to the tokenizer's.
    #[serde(default)]
    pub vocab_size: Option<usize>,
    /// The embedding table is padded to this many rows so the LM-head GEMM gets friendly
    /// shapes; defaults to the vocabulary rounded up to a multiple of 128 (as llm.c).
    #[serde(default)]
    pub padded_vocab_size: Option<usize>,
}

/// A multi-layer perceptron classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    /// Hidden layer widths, input side first; empty means logistic regression.
    #[serde(default)]
    pub hidden: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub loss: LossKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Relu,
    Tanh,
    Sigmoid,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    #[default]
    #[serde(rename = "cross-entropy", alias = "cross_entropy")]
    CrossEntropy,
    Mse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSpec {
    /// llm.c token shards written by `convoy data prepare`.
    Tokens(TokensSpec),
    /// Plain text files, tokenized in memory when the job starts.
    Text(TextSpec),
    /// CSV rows of numeric features followed by an integer class label.
    Csv(CsvSpec),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSpec {
    /// A shard file, a directory of shards, or a pattern such as `data/train_*.bin`.
    pub train: PathBuf,
    #[serde(default)]
    pub val: Option<PathBuf>,
    /// The tokenizer the shards were written with (for vocabulary size and samples).
    pub tokenizer: TokenizerKind,
    #[serde(default)]
    pub shuffle: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    pub files: Vec<PathBuf>,
    pub tokenizer: TokenizerKind,
    /// Share of each file's tokens held out for validation.
    #[serde(default = "defaults::text_val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub shuffle: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSpec {
    /// A `.csv` or `.csv.gz` file.
    pub path: PathBuf,
    /// Share of rows held out for validation (a seeded split).
    #[serde(default = "defaults::csv_val_fraction")]
    pub val_fraction: f64,
    /// Scale each feature to zero mean and unit variance (statistics from the training rows).
    #[serde(default = "defaults::yes")]
    pub standardize: bool,
    #[serde(default = "defaults::yes")]
    pub shuffle: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adamw,
    Sgd,
}

/// Which parameters weight decay applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecayOn {
    /// 2-D weight matrices and embeddings, not biases or LayerNorm parameters (as GPT-2/nanoGPT).
    #[default]
    Matrices,
    All,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(default)]
    pub kind: OptimizerKind,
    #[serde(default = "defaults::lr")]
    pub lr: f32,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f32,
    #[serde(default)]
    pub decay_on: DecayOn,
    /// Clip the global gradient L2 norm to this value; 0 disables clipping.
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f32,
    /// AdamW only.
    #[serde(default)]
    pub beta1: Option<f32>,
    /// AdamW only.
    #[serde(default)]
    pub beta2: Option<f32>,
    /// AdamW only.
    #[serde(default)]
    pub eps: Option<f32>,
    /// SGD only.
    #[serde(default)]
    pub momentum: Option<f32>,
    /// SGD only.
    #[serde(default)]
    pub nesterov: Option<bool>,
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        OptimizerSpec {
            kind: OptimizerKind::Adamw,
            lr: defaults::lr(),
            weight_decay: defaults::weight_decay(),
            decay_on: DecayOn::Matrices,
            grad_clip: defaults::grad_clip(),
            beta1: None,
            beta2: None,
            eps: None,
            momentum: None,
            nesterov: None,
        }
    }
}

impl OptimizerSpec {
    pub fn beta1(&self) -> f32 {
        self.beta1.unwrap_or(0.9)
    }
    pub fn beta2(&self) -> f32 {
        self.beta2.unwrap_or(0.95)
    }
    pub fn eps(&self) -> f32 {
        self.eps.unwrap_or(1e-8)
    }
    pub fn momentum(&self) -> f32 {
        self.momentum.unwrap_or(0.9)
    }
    pub fn nesterov(&self) -> bool {
        self.nesterov.unwrap_or(false)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    /// Cosine decay from the peak rate to `min_lr_ratio` of it over the steps after warm-up.
    Cosine,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    #[serde(default)]
    pub kind: ScheduleKind,
    /// Steps of linear warm-up from lr/warmup to lr.
    #[serde(default)]
    pub warmup_steps: u64,
    /// The floor of the cosine decay, as a fraction of the peak rate.
    #[serde(default)]
    pub min_lr_ratio: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Evaluate every this many steps (and always after the last); 0 = only after the last.
    #[serde(default)]
    pub interval: u64,
    /// Validation batches per evaluation for language models (classifiers use the whole
    /// validation set).
    #[serde(default = "defaults::eval_batches")]
    pub batches: usize,
}

impl Default for EvalSpec {
    fn default() -> Self {
        EvalSpec {
            interval: 0,
            batches: defaults::eval_batches(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Save the complete training state every this many steps; 0 disables checkpoints.
    #[serde(default)]
    pub interval: u64,
    /// On a cluster, the newest checkpoints kept (at least 1: a restart resumes from it).
    #[serde(default = "defaults::keep_last")]
    pub keep_last: u32,
    /// Also keep this many of the best checkpoints by `best_metric` (lower is better).
    #[serde(default)]
    pub keep_best: u32,
    /// `loss` or `val_loss` (the evaluation at the checkpoint's step).
    #[serde(default = "defaults::best_metric")]
    pub best_metric: String,
}

/// Marks an `init_from` that names a job's checkpoint rather than a file.
pub const JOB_PREFIX: &str = "job:";

/// `ID` or `ID@STEP`.
pub fn parse_job_ref(text: &str) -> std::result::Result<(String, Option<u64>), String> {
    let (id, step) = match text.split_once('@') {
        None => (text, None),
        Some((id, step)) => {
            let step = step
                .parse()
                .map_err(|_| format!("{text:?}: expected ID or ID@STEP with a numeric step"))?;
            (id, Some(step))
        }
    };
    if id.trim().is_empty() {
        return Err(format!("{text:?}: a job id is missing"));
    }
    Ok((id.trim().to_string(), step))
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            interval: 0,
            keep_last: defaults::keep_last(),
            keep_best: 0,
            best_metric: defaults::best_metric(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    /// Tokens to generate.
    #[serde(default = "defaults::sample_tokens")]
    pub tokens: usize,
    #[serde(default = "defaults::temperature")]
    pub temperature: f32,
    /// Sample among the k most likely tokens; 0 = the whole vocabulary.
    #[serde(default)]
    pub top_k: usize,
    /// Text the sample continues; empty starts from the end-of-text token (or a newline).
    #[serde(default)]
    pub prompt: String,
    /// Seeds the draws; defaults to the job's seed plus the step at which the sample is taken.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// The vocabulary a tokenizer produces; kept here so validation needs no tokenizer tables.
pub fn tokenizer_vocab(kind: TokenizerKind) -> usize {
    match kind {
        TokenizerKind::Byte => 256,
        TokenizerKind::Gpt2 => 50257,
    }
}

mod defaults {
    pub fn seed() -> u64 {
        1337
    }
    pub fn keep_last() -> u32 {
        3
    }
    pub fn best_metric() -> String {
        "val_loss".into()
    }
    pub fn one() -> usize {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn text_val_fraction() -> f64 {
        0.1
    }
    pub fn csv_val_fraction() -> f64 {
        0.2
    }
    pub fn lr() -> f32 {
        1e-3
    }
    pub fn weight_decay() -> f32 {
        0.0
    }
    pub fn grad_clip() -> f32 {
        1.0
    }
    pub fn eval_batches() -> usize {
        20
    }
    pub fn sample_tokens() -> usize {
        200
    }
    pub fn temperature() -> f32 {
        1.0
    }
}

impl JobSpec {
    /// Parses and validates a spec. `origin` names the text's source in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<JobSpec> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| {
            // toml's own rendering spans several lines; keep one, quoting the offending line
            // so a type error ("expected usize") still shows which key it is about.
            let at = e
                .span()
                .map(|s| {
                    let start = s.start.min(text.len());
                    let line_no = text[..start].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    format!(" (line {line_no}: `{line}`)")
                })
                .unwrap_or_default();
            SpecError::Invalid(format!("{origin}{at}: {}", e.message().trim()))
        })?;
        spec.validate()
            .map_err(|msg| SpecError::Invalid(format!("{origin}: {msg}")))?;
        Ok(spec)
    }

    /// Reads, parses and validates a spec file, and makes its data and checkpoint paths
    /// absolute, relative to the file's directory, so the job does not depend on the caller's
    /// working directory.
    pub fn load(path: &Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::io(path, e))?;
        let mut spec = JobSpec::parse(&text, &path.display().to_string())?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(base).map_err(|e| SpecError::io(base, e))?;
        spec.resolve_paths(&base);
        Ok(spec)
    }

    /// Whether a checkpoint of the model `fingerprint` (a training state's `model`) can
    /// initialise this spec's model, as far as the spec alone decides: the same kind, and for
    /// a GPT the same layers, heads, width and context (the vocabulary and an MLP's input
    /// and class counts come from the data, which the rank checks). `Err` says how they
    /// differ. Relies on the engine's fingerprint format, which its tests tie to this.
    pub fn loads_checkpoint_of(&self, fingerprint: &str) -> std::result::Result<(), String> {
        let (want, fits) = match &self.model {
            ModelSpec::Gpt(g) => {
                let prefix = format!(
                    "gpt(n_layer={}, n_head={}, n_embd={}, context={},",
                    g.n_layer, g.n_head, g.n_embd, g.context
                );
                let fits = fingerprint.starts_with(&prefix);
                (prefix.trim_end_matches(',').to_string() + ", …)", fits)
            }
            ModelSpec::Mlp(m) => {
                let hidden = format!("hidden={:?},", m.hidden);
                let fits = fingerprint.starts_with("mlp(") && fingerprint.contains(&hidden);
                (format!("mlp(…, {} …)", hidden), fits)
            }
        };
        if fits {
            Ok(())
        } else {
            Err(format!(
                "its checkpoint holds a {fingerprint} and this spec builds a {want}"
            ))
        }
    }

    /// Every file (or shard pattern) the job reads: its data and an `init_from` file.
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = match &self.data {
            DataSpec::Tokens(t) => std::iter::once(t.train.clone())
                .chain(t.val.clone())
                .collect(),
            DataSpec::Text(t) => t.files.clone(),
            DataSpec::Csv(c) => vec![c.path.clone()],
        };
        if let Some(init) = self
            .init_from
            .as_ref()
            .filter(|i| !i.starts_with(JOB_PREFIX))
        {
            paths.push(PathBuf::from(init));
        }
        paths
    }

    /// Makes every relative path in the spec relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match &mut self.data {
            DataSpec::Tokens(t) => {
                fix(&mut t.train);
                if let Some(v) = &mut t.val {
                    fix(v);
                }
            }
            DataSpec::Text(t) => t.files.iter_mut().for_each(fix),
            DataSpec::Csv(c) => fix(&mut c.path),
        }
        if let Some(init) = self
            .init_from
            .as_mut()
            .filter(|i| !i.starts_with(JOB_PREFIX))
        {
            let mut p = PathBuf::from(&*init);
            if p.is_relative() {
                fix(&mut p);
                *init = p.display().to_string();
            }
        }
    }

    /// `init_from = "job:ID[@STEP]"` as (job, step); `None` for a file or no `init_from`.
    pub fn init_from_job(&self) -> Option<(String, Option<u64>)> {
        parse_job_ref(self.init_from.as_deref()?.strip_prefix(JOB_PREFIX)?).ok()
    }

    /// The tokenizer of a language-model job.
    pub fn tokenizer(&self) -> Option<TokenizerKind> {
        match &self.data {
            DataSpec::Tokens(t) => Some(t.tokenizer),
            DataSpec::Text(t) => Some(t.tokenizer),
            DataSpec::Csv(_) => None,
        }
    }
}

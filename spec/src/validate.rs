//! Semantic checks of a parsed spec. Each message names the field, the value and what is
//! allowed, so a user can fix the spec from the one line alone.

use crate::{AttentionKernels, Backend, DataSpec, JobSpec, ModelSpec, OptimizerKind, Precision};

/// The head sizes convoy's flash attention kernels are instantiated for (`attention.cu`'s
/// `_hs16`, `_hs32`, `_hs64`; the engine's tests check this list against the kernels').
pub const FLASH_HEAD_SIZES: [usize; 3] = [16, 32, 64];

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(msg()) }
}

fn fraction(field: &str, v: f64) -> Result<(), String> {
    check((0.0..1.0).contains(&v), || {
        format!("{field} = {v}: must be in [0, 1)")
    })
}

impl JobSpec {
    /// Checks every value against what the engine supports; the `Err` is a one-line message.
    pub fn validate(&self) -> Result<(), String> {
        check(!self.name.trim().is_empty(), || {
            "name = \"\": must not be empty".into()
        })?;
        check(self.name.len() <= 128, || {
            format!(
                "name is {} characters long: at most 128 allowed",
                self.name.len()
            )
        })?;
        // A name is shown in every listing, on other users' terminals too.
        check(!self.name.chars().any(char::is_control), || {
            format!("name = {:?}: control characters are not allowed", self.name)
        })?;
        check(self.steps >= 1, || "steps = 0: must be at least 1".into())?;
        check(
            self.precision.is_fp32() || self.backend == Backend::Cuda,
            || "precision = \"bf16\" needs backend = \"cuda\" (the CPU backend is fp32)".into(),
        )?;
        self.validate_kernels()?;
        check(self.batch_size >= 1, || {
            "batch_size = 0: must be at least 1".into()
        })?;
        check(self.grad_accum >= 1, || {
            "grad_accum = 0: must be at least 1".into()
        })?;
        check((1..=4096).contains(&self.world_size), || {
            format!(
                "world_size = {}: must be between 1 and 4096",
                self.world_size
            )
        })?;
        if let Some(t) = self.threads {
            check(t >= 1, || {
                "threads = 0: must be at least 1 (or left out to use every core)".into()
            })?;
        }
        let c = &self.checkpoint;
        check(c.keep_last >= 1, || {
            "checkpoint.keep_last = 0: must be at least 1 (a restart resumes from the newest)"
                .into()
        })?;
        check(
            c.keep_best == 0 || ["loss", "val_loss"].contains(&c.best_metric.as_str()),
            || {
                format!(
                    "checkpoint.best_metric = {:?}: expected \"loss\" or \"val_loss\"",
                    c.best_metric
                )
            },
        )?;
        if let Some(init) = self.init_from.as_deref()
            && let Some(job) = init.strip_prefix(crate::JOB_PREFIX)
        {
            crate::parse_job_ref(job).map_err(|e| format!("init_from = {init:?}: {e}"))?;
        }
        self.validate_model()?;
        self.validate_data()?;
        self.validate_optimizer()?;
        let s = &self.schedule;
        check(s.warmup_steps <= self.steps, || {
            format!(
                "schedule.warmup_steps = {}: must not exceed steps = {}",
                s.warmup_steps, self.steps
            )
        })?;
        check((0.0..=1.0).contains(&s.min_lr_ratio), || {
            format!(
                "schedule.min_lr_ratio = {}: must be in [0, 1]",
                s.min_lr_ratio
            )
        })?;
        check(self.eval.batches >= 1, || {
            "eval.batches = 0: must be at least 1".into()
        })?;
        if let Some(sample) = &self.sample {
            check(matches!(self.model, ModelSpec::Gpt(_)), || {
                "[sample] applies to language models (model.kind = \"gpt\") only".into()
            })?;
            check(sample.tokens >= 1, || {
                "sample.tokens = 0: must be at least 1".into()
            })?;
            check(
                sample.temperature.is_finite() && sample.temperature > 0.0,
                || {
                    format!(
                        "sample.temperature = {}: must be a positive number",
                        sample.temperature
                    )
                },
            )?;
        }
        Ok(())
    }

    fn validate_kernels(&self) -> Result<(), String> {
        if self.kernels.is_default() {
            return Ok(());
        }
        let gpt = match &self.model {
            ModelSpec::Gpt(g) => Some(g),
            ModelSpec::Mlp(_) => None,
        };
        check(self.backend == Backend::Cuda && gpt.is_some(), || {
            "[kernels] choose the CUDA backend's GPT kernels: it needs backend = \"cuda\" and \
             model.kind = \"gpt\""
                .into()
        })?;
        if self.kernels.attention == AttentionKernels::Flash {
            check(self.precision == Precision::Bf16, || {
                "kernels.attention = \"flash\" needs precision = \"bf16\" (flash attention \
                 keeps bf16 activations)"
                    .into()
            })?;
            if let Some(g) = gpt {
                check(
                    g.n_head > 0 && FLASH_HEAD_SIZES.contains(&(g.n_embd / g.n_head)),
                    || {
                        format!(
                            "kernels.attention = \"flash\" needs heads of 16, 32 or 64 channels; \
                             model.n_embd / model.n_head = {}",
                            g.n_embd / g.n_head.max(1)
                        )
                    },
                )?;
            }
        }
        Ok(())
    }

    fn validate_model(&self) -> Result<(), String> {
        match &self.model {
            ModelSpec::Gpt(g) => {
                check(g.n_layer >= 1, || {
                    "model.n_layer = 0: must be at least 1".into()
                })?;
                check(g.n_head >= 1, || {
                    "model.n_head = 0: must be at least 1".into()
                })?;
                check(g.n_embd >= 1 && g.n_embd % g.n_head == 0, || {
                    format!(
                        "model.n_embd = {}: must be a positive multiple of model.n_head = {}",
                        g.n_embd, g.n_head
                    )
                })?;
                check(g.context >= 1, || {
                    "model.context = 0: must be at least 1".into()
                })?;
                let seq_len = self.seq_len.ok_or_else(|| {
                    "seq_len is missing: a GPT job needs the tokens per sequence (at most model.context)".to_string()
                })?;
                check((1..=g.context).contains(&seq_len), || {
                    format!(
                        "seq_len = {seq_len}: must be between 1 and model.context = {}",
                        g.context
                    )
                })?;
                if let Some(tok) = self.tokenizer() {
                    let need = crate::tokenizer_vocab(tok);
                    if let Some(v) = g.vocab_size {
                        check(v >= need, || {
                            format!(
                                "model.vocab_size = {v}: the {tok:?} tokenizer needs at least {need}"
                            )
                        })?;
                    }
                }
                if let (Some(p), Some(v)) = (g.padded_vocab_size, self.gpt_vocab_size()) {
                    check(p >= v, || {
                        format!(
                            "model.padded_vocab_size = {p}: must be at least the vocabulary size {v}"
                        )
                    })?;
                }
            }
            ModelSpec::Mlp(m) => {
                if let Some(i) = m.hidden.iter().position(|&h| h == 0) {
                    return Err(format!(
                        "model.hidden[{i}] = 0: every hidden layer needs at least 1 unit"
                    ));
                }
                check(self.seq_len.is_none(), || {
                    "seq_len applies to GPT models only; remove it".into()
                })?;
                check(
                    self.init_from.is_none() || self.init_from_job().is_some(),
                    || {
                        "init_from = <file> supports GPT models (llm.c checkpoint files) only; \
                         an MLP can start from a job's checkpoint (\"job:ID\")"
                            .into()
                    },
                )?;
            }
        }
        Ok(())
    }

    fn validate_data(&self) -> Result<(), String> {
        let is_gpt = matches!(self.model, ModelSpec::Gpt(_));
        match &self.data {
            DataSpec::Tokens(_) => check(is_gpt, || {
                "data.kind = \"tokens\" needs model.kind = \"gpt\" (an MLP reads data.kind = \"csv\")".into()
            }),
            DataSpec::Text(t) => {
                check(is_gpt, || {
                    "data.kind = \"text\" needs model.kind = \"gpt\" (an MLP reads data.kind = \"csv\")".into()
                })?;
                check(!t.files.is_empty(), || {
                    "data.files = []: name at least one text file".into()
                })?;
                fraction("data.val_fraction", t.val_fraction)
            }
            DataSpec::Csv(c) => {
                check(!is_gpt, || {
                    "data.kind = \"csv\" needs model.kind = \"mlp\" (a GPT reads data.kind = \"tokens\" or \"text\")"
                        .into()
                })?;
                fraction("data.val_fraction", c.val_fraction)
            }
        }
    }

    fn validate_optimizer(&self) -> Result<(), String> {
        let o = &self.optimizer;
        check(o.lr.is_finite() && o.lr > 0.0, || {
            format!("optimizer.lr = {}: must be a positive number", o.lr)
        })?;
        check(o.weight_decay.is_finite() && o.weight_decay >= 0.0, || {
            format!(
                "optimizer.weight_decay = {}: must be zero or positive",
                o.weight_decay
            )
        })?;
        check(o.grad_clip.is_finite() && o.grad_clip >= 0.0, || {
            format!(
                "optimizer.grad_clip = {}: must be zero (off) or positive",
                o.grad_clip
            )
        })?;
        let (kind, foreign): (&str, &[(&str, bool)]) = match o.kind {
            OptimizerKind::Adamw => (
                "adamw",
                &[
                    ("momentum", o.momentum.is_some()),
                    ("nesterov", o.nesterov.is_some()),
                ],
            ),
            OptimizerKind::Sgd => (
                "sgd",
                &[
                    ("beta1", o.beta1.is_some()),
                    ("beta2", o.beta2.is_some()),
                    ("eps", o.eps.is_some()),
                ],
            ),
        };
        if let Some((field, _)) = foreign.iter().find(|(_, set)| *set) {
            return Err(format!(
                "optimizer.{field} does not apply to optimizer.kind = \"{kind}\""
            ));
        }
        for (field, v) in [
            ("beta1", o.beta1()),
            ("beta2", o.beta2()),
            ("momentum", o.momentum()),
        ] {
            check((0.0..1.0).contains(&v), || {
                format!("optimizer.{field} = {v}: must be in [0, 1)")
            })?;
        }
        check(o.eps() > 0.0 && o.eps().is_finite(), || {
            format!("optimizer.eps = {}: must be positive", o.eps())
        })?;
        if o.nesterov() {
            check(o.momentum() > 0.0, || {
                "optimizer.nesterov = true needs optimizer.momentum > 0".into()
            })?;
        }
        Ok(())
    }

    /// The model's vocabulary: the spec's `model.vocab_size`, else the tokenizer's.
    pub fn gpt_vocab_size(&self) -> Option<usize> {
        match &self.model {
            ModelSpec::Gpt(g) => g
                .vocab_size
                .or_else(|| self.tokenizer().map(crate::tokenizer_vocab)),
            ModelSpec::Mlp(_) => None,
        }
    }
}

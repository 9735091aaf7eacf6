//! How much memory a GPT needs to train at a given (B, T): the one list of activation and
//! scratch buffer sizes, used by the CPU model to allocate them and by a GPU to check before
//! allocating that they fit (an out-of-memory error then says how much was needed, by part).

use super::config::GptConfig;

/// Floats of each forward activation kept for backward, in [`Activations`] field order.
///
/// [`Activations`]: super::Gpt
pub fn activation_floats(cfg: &GptConfig, b: usize, t: usize) -> [usize; 21] {
    let (l, c, vp) = (cfg.n_layer, cfg.channels, cfg.padded_vocab_size);
    let (btc, bt, att) = (b * t * c, b * t, b * cfg.n_head * t * t);
    [
        btc,         // encoded
        l * btc,     // ln1
        l * bt,      // ln1_mean
        l * bt,      // ln1_rstd
        l * 3 * btc, // qkv
        l * btc,     // atty
        att,         // preatt (one layer: the softmax's input, not needed by backward)
        l * att,     // att
        l * btc,     // residual2
        l * btc,     // ln2
        l * bt,      // ln2_mean
        l * bt,      // ln2_rstd
        l * 4 * btc, // fch
        l * 4 * btc, // fch_gelu
        l * btc,     // residual3
        btc,         // proj
        btc,         // lnf
        bt,          // lnf_mean
        bt,          // lnf_rstd
        bt * vp,     // logits
        bt,          // losses
    ]
}

/// Floats of each backward scratch buffer (one layer's gradients at a time).
pub fn scratch_floats(cfg: &GptConfig, b: usize, t: usize) -> [usize; 9] {
    let (c, vp) = (cfg.channels, cfg.padded_vocab_size);
    let (btc, bt, att) = (b * t * c, b * t, b * cfg.n_head * t * t);
    [
        bt * vp, // dlogits
        btc,     // dresidual
        btc,     // dln
        btc,     // datty
        3 * btc, // dqkv
        att,     // dpreatt
        att,     // datt
        4 * btc, // dfch
        4 * btc, // dfch_gelu
    ]
}

/// Bytes a training step needs, by part (fp32 throughout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeed {
    pub params: u64,
    pub grads: u64,
    /// AdamW's two moments (or SGD's one momentum buffer).
    pub optimizer: u64,
    pub activations: u64,
    pub scratch: u64,
}

impl MemoryNeed {
    pub fn total(&self) -> u64 {
        self.params + self.grads + self.optimizer + self.activations + self.scratch
    }
}

impl std::fmt::Display for MemoryNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{:.2} GiB (parameters {:.2}, gradients {:.2}, optimizer {:.2}, activations {:.2}, \
             backward scratch {:.2})",
            gib(self.total()),
            gib(self.params),
            gib(self.grads),
            gib(self.optimizer),
            gib(self.activations),
            gib(self.scratch)
        )
    }
}

/// What training `cfg` at batch `b` × sequence `t` needs; `moments` is 2 for AdamW, 1 for SGD
/// with momentum, 0 without.
pub fn training_need(cfg: &GptConfig, b: usize, t: usize, moments: u64) -> MemoryNeed {
    let f = |n: usize| n as u64 * 4;
    let p = f(cfg.num_params());
    MemoryNeed {
        params: p,
        grads: p,
        optimizer: moments * p,
        activations: f(activation_floats(cfg, b, t).iter().sum()),
        scratch: f(scratch_floats(cfg, b, t).iter().sum()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_124m_needs_what_llmc_reports() {
        // GPT-2 small with llm.c's padded vocabulary: 124,475,904 parameters.
        let cfg = GptConfig {
            max_seq_len: 1024,
            vocab_size: 50257,
            padded_vocab_size: 50304,
            n_layer: 12,
            n_head: 12,
            channels: 768,
        };
        assert_eq!(cfg.num_params(), 124_475_904);
        let need = training_need(&cfg, 4, 64, 2);
        assert_eq!(need.params, 124_475_904 * 4);
        assert_eq!(need.optimizer, 2 * need.params);
        // llm.c's train_gpt2.c reports 73,347,840 activation floats at B=4, T=64. convoy keeps
        // the same tensors except three: llm.c's per-layer attproj and fcproj [L,B,T,C] are one
        // shared `proj` [B,T,C] here (consumed by the residual add at once), and there is no
        // separate probs [B,T,Vp] (the fused classifier writes dlogits in place), and preatt
        // [L,B,NH,T,T] is one layer's [B,NH,T,T] (the backward reads only att).
        let (l, btc, btvp, att) = (12, 4 * 64 * 768, 4 * 64 * 50304, 4 * 12 * 64 * 64);
        assert_eq!(
            need.activations / 4,
            73_347_840 - 2 * l * btc - btvp + btc - (l - 1) * att
        );
        assert!(need.to_string().starts_with(&format!(
            "{:.2} GiB",
            need.total() as f64 / (1u64 << 30) as f64
        )));
    }
}

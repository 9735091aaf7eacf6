//! The GPT-2 configuration and the layout of its flat parameter buffer: the 16 tensors of
//! llm.c, in llm.c's order, with per-layer tensors stacked over layers.
//!
//! How this layout differs from HuggingFace's `GPT2Model` (whose tensor names
//! [`GptConfig::tensors`] uses), so an exporter slices the buffer and describes what it has
//! rather than reordering data:
//! - per-layer tensors are grouped by kind across layers (every layer's `ln_1.weight`, then
//!   every layer's `ln_1.bias`, …), not layer by layer; each layer's slice is still contiguous,
//!   so `h.{i}.*` are plain slices, listed in buffer order;
//! - linear weights are `[out, in]` (`nn.Linear`'s orientation, what the matmul kernels use):
//!   `c_attn.weight` is `[3C, C]`, `attn.c_proj.weight` `[C, C]`, `c_fc.weight` `[4C, C]`,
//!   `mlp.c_proj.weight` `[C, 4C]`, the transposes of HF's `Conv1D` `[in, out]` weights;
//! - `wte.weight` has `padded_vocab_size` rows (the rows past `vocab_size` are zero padding),
//!   where HF has `vocab_size`; the LM head is tied to it, as in HF, so there is no
//!   `lm_head.weight`.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::model::TensorInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub max_seq_len: usize,
    pub vocab_size: usize,
    /// Rows of the embedding table; rows past `vocab_size` are padding that keeps GEMM shapes
    /// friendly and never receives a gradient.
    pub padded_vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub channels: usize,
}

/// The 16 parameter tensors, in llm.c's order (which is also the checkpoint file's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tensor {
    Wte,
    Wpe,
    Ln1w,
    Ln1b,
    Qkvw,
    Qkvb,
    Attprojw,
    Attprojb,
    Ln2w,
    Ln2b,
    Fcw,
    Fcb,
    Fcprojw,
    Fcprojb,
    Lnfw,
    Lnfb,
}

pub const TENSORS: [Tensor; 16] = [
    Tensor::Wte,
    Tensor::Wpe,
    Tensor::Ln1w,
    Tensor::Ln1b,
    Tensor::Qkvw,
    Tensor::Qkvb,
    Tensor::Attprojw,
    Tensor::Attprojb,
    Tensor::Ln2w,
    Tensor::Ln2b,
    Tensor::Fcw,
    Tensor::Fcb,
    Tensor::Fcprojw,
    Tensor::Fcprojb,
    Tensor::Lnfw,
    Tensor::Lnfb,
];

/// The tensors that exist once per layer (stacked over layers in the flat buffer): in llm.c's
/// order they sit between the two embeddings and the final LayerNorm.
pub(super) const PER_LAYER: &[Tensor] = TENSORS.split_at(2).1.split_at(12).0;

impl Tensor {
    pub fn name(self) -> &'static str {
        match self {
            Tensor::Wte => "wte",
            Tensor::Wpe => "wpe",
            Tensor::Ln1w => "ln1w",
            Tensor::Ln1b => "ln1b",
            Tensor::Qkvw => "qkvw",
            Tensor::Qkvb => "qkvb",
            Tensor::Attprojw => "attprojw",
            Tensor::Attprojb => "attprojb",
            Tensor::Ln2w => "ln2w",
            Tensor::Ln2b => "ln2b",
            Tensor::Fcw => "fcw",
            Tensor::Fcb => "fcb",
            Tensor::Fcprojw => "fcprojw",
            Tensor::Fcprojb => "fcprojb",
            Tensor::Lnfw => "lnfw",
            Tensor::Lnfb => "lnfb",
        }
    }

    /// HuggingFace GPT-2's name for the tensor; per-layer ones are relative to `h.{i}.`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Tensor::Wte => "wte.weight",
            Tensor::Wpe => "wpe.weight",
            Tensor::Ln1w => "ln_1.weight",
            Tensor::Ln1b => "ln_1.bias",
            Tensor::Qkvw => "attn.c_attn.weight",
            Tensor::Qkvb => "attn.c_attn.bias",
            Tensor::Attprojw => "attn.c_proj.weight",
            Tensor::Attprojb => "attn.c_proj.bias",
            Tensor::Ln2w => "ln_2.weight",
            Tensor::Ln2b => "ln_2.bias",
            Tensor::Fcw => "mlp.c_fc.weight",
            Tensor::Fcb => "mlp.c_fc.bias",
            Tensor::Fcprojw => "mlp.c_proj.weight",
            Tensor::Fcprojb => "mlp.c_proj.bias",
            Tensor::Lnfw => "ln_f.weight",
            Tensor::Lnfb => "ln_f.bias",
        }
    }

    fn per_layer(self) -> bool {
        PER_LAYER.contains(&self)
    }

    /// Weight matrices and embeddings: the tensors weight decay applies to.
    pub(super) fn is_matrix(self) -> bool {
        matches!(
            self,
            Tensor::Wte
                | Tensor::Wpe
                | Tensor::Qkvw
                | Tensor::Attprojw
                | Tensor::Fcw
                | Tensor::Fcprojw
        )
    }
}

impl GptConfig {
    /// The shape of a tensor (per-layer tensors with the layer dimension first).
    pub fn shape(&self, t: Tensor) -> Vec<usize> {
        let (v, c, l, p) = (
            self.padded_vocab_size,
            self.channels,
            self.n_layer,
            self.max_seq_len,
        );
        match t {
            Tensor::Wte => vec![v, c],
            Tensor::Wpe => vec![p, c],
            Tensor::Ln1w
            | Tensor::Ln1b
            | Tensor::Attprojb
            | Tensor::Ln2w
            | Tensor::Ln2b
            | Tensor::Fcprojb => {
                vec![l, c]
            }
            Tensor::Qkvw => vec![l, 3 * c, c],
            Tensor::Qkvb => vec![l, 3 * c],
            Tensor::Attprojw => vec![l, c, c],
            Tensor::Fcw => vec![l, 4 * c, c],
            Tensor::Fcb => vec![l, 4 * c],
            Tensor::Fcprojw => vec![l, c, 4 * c],
            Tensor::Lnfw | Tensor::Lnfb => vec![c],
        }
    }

    pub fn tensor_len(&self, t: Tensor) -> usize {
        self.shape(t).iter().product()
    }

    pub fn num_params(&self) -> usize {
        TENSORS.iter().map(|&t| self.tensor_len(t)).sum()
    }

    /// [`Self::num_params`] for dimensions read from a file: `None` when they overflow, as a
    /// damaged or foreign header's can.
    pub fn checked_num_params(&self) -> Option<usize> {
        TENSORS.iter().try_fold(0usize, |total, &t| {
            let len = self
                .shape(t)
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))?;
            total.checked_add(len)
        })
    }

    /// Where a tensor lives in the flat parameter buffer.
    pub fn range(&self, t: Tensor) -> Range<usize> {
        let start: usize = TENSORS
            .iter()
            .take_while(|&&x| x != t)
            .map(|&x| self.tensor_len(x))
            .sum();
        start..start + self.tensor_len(t)
    }

    /// Every tensor under its HuggingFace name, per-layer ones split into `h.{i}.*` slices, in
    /// buffer order (see the module doc for how the layout differs from HF's).
    pub fn tensors(&self) -> Vec<TensorInfo> {
        let mut out = Vec::new();
        for t in TENSORS {
            let shape = self.shape(t);
            if t.per_layer() {
                for l in 0..self.n_layer {
                    out.push(TensorInfo {
                        name: format!("h.{l}.{}", t.hf_name()),
                        shape: shape[1..].to_vec(),
                        offset: self.layer_range(t, l).start,
                    });
                }
            } else {
                out.push(TensorInfo {
                    name: t.hf_name().to_string(),
                    shape,
                    offset: self.range(t).start,
                });
            }
        }
        out
    }

    /// Layer `l`'s slice of a per-layer tensor.
    pub(super) fn layer_range(&self, t: Tensor, l: usize) -> Range<usize> {
        let r = self.range(t);
        let per = r.len() / self.n_layer;
        r.start + l * per..r.start + (l + 1) * per
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_tile_the_buffer_with_hf_names() {
        let cfg = GptConfig {
            max_seq_len: 8,
            vocab_size: 10,
            padded_vocab_size: 16,
            n_layer: 3,
            n_head: 2,
            channels: 4,
        };
        let tensors = cfg.tensors();
        crate::model::assert_tiles(&tensors, cfg.num_params());
        assert_eq!(tensors.len(), 2 + 12 * 3 + 2);
        let find = |name: &str| {
            tensors
                .iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert_eq!(find("wte.weight").shape, [16, 4]);
        assert_eq!(find("h.2.attn.c_attn.weight").shape, [12, 4]);
        assert_eq!(find("h.0.mlp.c_proj.weight").shape, [4, 16]);
        assert_eq!(find("ln_f.bias").shape, [4]);
        // Layer slices sit inside the grouped tensor, layer by layer.
        assert_eq!(
            find("h.1.ln_1.bias").range(),
            cfg.layer_range(Tensor::Ln1b, 1)
        );
    }
}

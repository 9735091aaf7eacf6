//! The GPT-2 configuration and the layout of its flat parameter buffer: the 16 tensors of
//! llm.c, in llm.c's order, with per-layer tensors stacked over layers.

use std::ops::Range;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    /// Where a tensor lives in the flat parameter buffer.
    pub fn range(&self, t: Tensor) -> Range<usize> {
        let start: usize = TENSORS
            .iter()
            .take_while(|&&x| x != t)
            .map(|&x| self.tensor_len(x))
            .sum();
        start..start + self.tensor_len(t)
    }

    /// Layer `l`'s slice of a per-layer tensor.
    pub(super) fn layer_range(&self, t: Tensor, l: usize) -> Range<usize> {
        let r = self.range(t);
        let per = r.len() / self.n_layer;
        r.start + l * per..r.start + (l + 1) * per
    }
}

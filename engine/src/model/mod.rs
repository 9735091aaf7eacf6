//! Models: each keeps its parameters and gradients in one contiguous buffer, so the optimizer,
//! the all-reduce and checkpoints all see a single flat slice.

pub mod gpt;
pub mod llmc;
pub mod mlp;

use serde::{Deserialize, Serialize};

use crate::collective::Bucket;
use crate::optim::ParamGroup;

/// One named tensor of a model's flat parameter buffer: what an exporter needs to slice the
/// buffer into framework tensors without rebuilding the model. A model's tensors tile its
/// buffer exactly, in buffer order, and each shape is the one the kernels use, so the product
/// of `shape` is the tensor's length and the row-major bytes at `offset` are its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// Where the tensor starts in the flat buffer, in elements (not bytes).
    pub offset: usize,
}

impl TensorInfo {
    /// Elements in the tensor: the product of its shape.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tensor's elements in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// What the training loop needs from any model, beyond its own forward and backward.
pub trait Model {
    fn params(&self) -> &[f32];
    fn params_mut(&mut self) -> &mut [f32];
    fn grads(&self) -> &[f32];
    fn grads_mut(&mut self) -> &mut [f32];
    /// Both buffers at once, for the optimizer update.
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]);
    /// Parameter tensors with their weight-decay class, covering the whole buffer.
    fn param_groups(&self) -> Vec<ParamGroup>;
    /// Every parameter tensor with its name and shape, tiling the buffer exactly in buffer
    /// order (see [`TensorInfo`]).
    fn tensors(&self) -> Vec<TensorInfo>;
    /// Gradient buckets in the order the backward pass finishes them.
    fn grad_buckets(&self) -> Vec<Bucket>;
    /// A short description of the architecture; a saved state only loads into an equal one.
    fn fingerprint(&self) -> String;
}

/// Called by a backward pass each time a bucket of gradients is final.
pub type BucketHook<'a> = &'a mut dyn FnMut(&[f32], &Bucket) -> crate::Result<()>;

/// Checks that `tensors` tile a buffer of `len` elements exactly, in order, with unique names.
#[cfg(test)]
pub(crate) fn assert_tiles(tensors: &[TensorInfo], len: usize) {
    let mut at = 0;
    let mut names = std::collections::HashSet::new();
    for t in tensors {
        assert_eq!(t.offset, at, "{} starts at {} not {at}", t.name, t.offset);
        assert!(!t.is_empty(), "{} is empty", t.name);
        assert!(names.insert(&t.name), "{} appears twice", t.name);
        at += t.len();
    }
    assert_eq!(at, len, "the tensors cover {at} of {len} parameters");
}

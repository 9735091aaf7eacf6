//! Models: each keeps its parameters and gradients in one contiguous buffer, so the optimizer,
//! the all-reduce and checkpoints all see a single flat slice.

pub mod gpt;
pub mod llmc;
pub mod mlp;

use crate::collective::Bucket;
use crate::optim::ParamGroup;

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
    /// Gradient buckets in the order the backward pass finishes them.
    fn grad_buckets(&self) -> Vec<Bucket>;
    /// A short description of the architecture; a saved state only loads into an equal one.
    fn fingerprint(&self) -> String;
}

/// Called by a backward pass each time a bucket of gradients is final.
pub type BucketHook<'a> = &'a mut dyn FnMut(&[f32], &Bucket) -> crate::Result<()>;

//! The gradient all-reduce interface between the training loop and the cluster.
//!
//! The engine only says *when* gradients are ready; how they travel (a TCP ring on CPUs, NCCL
//! on GPUs) is the cluster's business. Backward passes announce buckets in the order they
//! finish, so an implementation can reduce finished buckets while the rest of the backward
//! pass still runs, and `finish` is the single point where the step waits for the network.

use std::ops::Range;

use cudarc::driver::{CudaSlice, CudaStream};

use crate::error::Result;

/// Called by a device model's backward pass each time a bucket of gradients is final (queued
/// on the stream): where a [`DeviceGradReducer`] starts reducing it.
pub type DeviceBucketHook<'a> = &'a mut dyn FnMut(&CudaSlice<f32>, &Bucket) -> Result<()>;

/// Ranges of the flat gradient buffer that become final together during a backward pass.
/// A model's buckets cover every gradient element exactly once.
pub type Bucket = Vec<Range<usize>>;

/// Averages gradients (and a few scalars) over the ranks of a data-parallel job.
///
/// Contract, per optimizer step: `bucket_ready` is called once for each of the model's buckets,
/// in the order of [`crate::model::Model::grad_buckets`], with the gradient buffer whose ranges
/// are final; then `finish` is called once and must leave in `grads` the mean over ranks. The
/// summation order must be fixed so the same job on the same world size is bit-reproducible.
pub trait GradReducer: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The gradients in `bucket` are final for this step; an implementation may copy them out
    /// and start communicating.
    fn bucket_ready(&mut self, grads: &[f32], bucket: &[Range<usize>]) -> Result<()>;
    /// Waits for every bucket and writes the mean over ranks into `grads`.
    fn finish(&mut self, grads: &mut [f32]) -> Result<()>;
    /// Sums `values` over ranks in place (losses, counts for metrics).
    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<()>;
}

/// World size 1: nothing to exchange.
#[derive(Debug, Default)]
pub struct SingleProcess;

impl GradReducer for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn bucket_ready(&mut self, _grads: &[f32], _bucket: &[Range<usize>]) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self, _grads: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn sum_scalars(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

/// The CUDA backend's all-reduce: gradients stay on the GPU and the stream is the clock.
///
/// Same contract as [`GradReducer`], but "final" means "final once the work queued so far on
/// the compute stream has run": the host never waits for the GPU between buckets. An
/// implementation makes its own stream wait on that point (an event recorded on `compute`),
/// reduces in place there, and `finish` makes `compute` wait for all of it, so the kernels
/// queued after `finish` (the norm, the optimizer) see the mean over ranks.
pub trait DeviceGradReducer: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The ranges of `bucket` in `grads` are final once `compute`'s queued work is done; the
    /// compute stream does not touch them again before `finish`.
    fn bucket_ready(
        &mut self,
        grads: &CudaSlice<f32>,
        bucket: &[Range<usize>],
        compute: &CudaStream,
    ) -> Result<()>;
    /// Makes `compute` wait for every bucket's reduction. An implementation may also block
    /// the host until the reductions are done (NCCL's does: it is where a failed or hung
    /// collective is caught, before any update could read a partial average).
    fn finish(&mut self, grads: &mut CudaSlice<f32>, compute: &CudaStream) -> Result<()>;
    /// Sums `values` over ranks in place (losses, counts for metrics); blocks the host.
    fn sum_scalars(&mut self, values: &mut [f64]) -> Result<()>;
}

/// World size 1 on a GPU: nothing to exchange.
#[derive(Debug, Default)]
pub struct SingleDevice;

impl DeviceGradReducer for SingleDevice {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn bucket_ready(
        &mut self,
        _grads: &CudaSlice<f32>,
        _bucket: &[Range<usize>],
        _compute: &CudaStream,
    ) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self, _grads: &mut CudaSlice<f32>, _compute: &CudaStream) -> Result<()> {
        Ok(())
    }
    fn sum_scalars(&mut self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
}

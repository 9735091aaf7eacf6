//! Optimizer state over the model's flat parameter buffer.

use std::ops::Range;

use convoy_kernels::optim::{adamw_update, sgd_update};
use serde::{Deserialize, Serialize};

use crate::spec::{OptimizerKind, OptimizerSpec};

/// A parameter tensor as the optimizer sees it: where it lives in the flat buffer and whether
/// weight decay applies to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamGroup {
    pub name: &'static str,
    pub range: Range<usize>,
    /// 2-D weights and embeddings decay; biases and LayerNorm parameters do not.
    pub is_matrix: bool,
}

/// Moments (AdamW) or momentum (SGD), plus the step count that bias correction needs. This is
/// part of a checkpoint: restoring it is what makes a resumed job continue bit-exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    pub step: u64,
    pub m: Vec<f32>,
    /// Second moments (AdamW); empty for SGD.
    pub v: Vec<f32>,
}

pub struct Optimizer {
    spec: OptimizerSpec,
    groups: Vec<ParamGroup>,
    state: OptimizerState,
}

/// The length of the second-moment buffer for `num_params` parameters: AdamW keeps one per
/// parameter, SGD none.
pub(crate) fn second_moments(kind: OptimizerKind, num_params: usize) -> usize {
    match kind {
        OptimizerKind::Adamw => num_params,
        OptimizerKind::Sgd => 0,
    }
}

impl Optimizer {
    pub fn new(spec: &OptimizerSpec, groups: Vec<ParamGroup>, num_params: usize) -> Self {
        Optimizer {
            spec: spec.clone(),
            groups,
            state: OptimizerState {
                step: 0,
                m: vec![0.0; num_params],
                v: vec![0.0; second_moments(spec.kind, num_params)],
            },
        }
    }

    pub(crate) fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }

    pub(crate) fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    pub(crate) fn decay_for(&self, group: &ParamGroup) -> f32 {
        match self.spec.decay_on {
            crate::spec::DecayOn::All => self.spec.weight_decay,
            crate::spec::DecayOn::Matrices if group.is_matrix => self.spec.weight_decay,
            crate::spec::DecayOn::Matrices => 0.0,
        }
    }

    /// One update of every parameter with learning rate `lr`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.state.step += 1;
        let t = self.state.step;
        let s = &self.spec;
        for g in &self.groups {
            let wd = self.decay_for(g);
            let r = g.range.clone();
            match s.kind {
                OptimizerKind::Adamw => adamw_update(
                    &mut params[r.clone()],
                    &grads[r.clone()],
                    &mut self.state.m[r.clone()],
                    &mut self.state.v[r],
                    lr,
                    s.beta1(),
                    s.beta2(),
                    s.eps(),
                    wd,
                    t,
                ),
                OptimizerKind::Sgd => sgd_update(
                    &mut params[r.clone()],
                    &grads[r.clone()],
                    &mut self.state.m[r],
                    lr,
                    s.momentum(),
                    wd,
                    s.nesterov(),
                    t == 1,
                ),
            }
        }
    }

    pub fn state(&self) -> &OptimizerState {
        &self.state
    }

    /// Replaces the state with a saved one; the sizes must match this model.
    pub fn restore(&mut self, state: OptimizerState) -> Result<(), String> {
        if state.m.len() != self.state.m.len() || state.v.len() != self.state.v.len() {
            return Err(format!(
                "optimizer state holds {} + {} values, this model needs {} + {}",
                state.m.len(),
                state.v.len(),
                self.state.m.len(),
                self.state.v.len()
            ));
        }
        self.state = state;
        Ok(())
    }
}

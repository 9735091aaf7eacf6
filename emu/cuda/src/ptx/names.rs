//! The names a kernel's instructions use — registers, parameters, shared variables, labels — and
//! what they stand for once decoded. Shared variables are laid out on first use, so a kernel's
//! shared memory holds only the module-scope arrays it touches.

use std::collections::HashMap;

use super::ir::{self, Reg};

/// Where shared memory starts in the shared state space: far from 0, so a global or null
/// pointer used as a shared address faults. Fits 32 bits, as `mov.u32` of a shared symbol needs.
pub const SHARED_BASE: u64 = 0x1000_0000;

/// A module-scope or kernel-scope variable in shared memory.
#[derive(Clone, Debug)]
pub(crate) struct SharedVar {
    pub(crate) align: usize,
    pub(crate) size: usize,
}

/// What decoding an instruction needs to know about the kernel's names.
pub(crate) struct Names<'a> {
    pub(crate) regs: HashMap<String, Reg>,
    pub(crate) params: HashMap<String, usize>,
    pub(crate) module_shared: &'a HashMap<String, SharedVar>,
    pub(crate) kernel_shared: HashMap<String, SharedVar>,
    /// Shared variables this kernel uses, at their assigned offsets.
    pub(crate) shared_at: HashMap<String, usize>,
    pub(crate) shared_end: usize,
    pub(crate) labels: HashMap<String, u32>,
}

impl Names<'_> {
    pub(crate) fn reg(&mut self, name: &str) -> Reg {
        let next = self.regs.len() as Reg;
        *self.regs.entry(name.to_string()).or_insert(next)
    }

    /// The value a symbol stands for: a parameter's offset, or a shared variable's address
    /// (laid out on first use).
    pub(crate) fn symbol(&mut self, name: &str) -> Option<(ir::Space, u64)> {
        if let Some(&off) = self.params.get(name) {
            return Some((ir::Space::Param, off as u64));
        }
        if let Some(&off) = self.shared_at.get(name) {
            return Some((ir::Space::Shared, SHARED_BASE + off as u64));
        }
        let var = self
            .kernel_shared
            .get(name)
            .or_else(|| self.module_shared.get(name))?
            .clone();
        let off = self.shared_end.div_ceil(var.align.max(1)) * var.align.max(1);
        self.shared_end = off + var.size;
        self.shared_at.insert(name.to_string(), off);
        Some((ir::Space::Shared, SHARED_BASE + off as u64))
    }

    pub(crate) fn label(&self, name: &str) -> Option<u32> {
        self.labels.get(name).copied()
    }
}

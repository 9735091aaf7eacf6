//! What a replica needs to hold every committed checkpoint whole: which copies it lacks or
//! holds damaged, and clearing a damaged copy so that a good one can be fetched from a peer
//! (see `server::checkpoints`, which does the fetching).

use super::CheckpointStore;
use super::error::CheckpointError;
use super::keys::{manifest_key, split_manifest, upload_prefix};
use super::manifest::{Manifest, decode};
use crate::model::JobId;

impl CheckpointStore {
    /// Every committed checkpoint of every job, in (job, step) order: what a replica offers
    /// its peers to repair from (one scan, however many jobs the cluster has). Manifests
    /// that do not decode are left out: they are nothing to copy.
    pub fn all_checkpoints(&self) -> Result<Vec<Manifest>, CheckpointError> {
        let mut out = vec![];
        for item in self.manifests.iter() {
            let (k, v) = item.map_err(CheckpointError::storage("list every checkpoint"))?;
            let Some((job, step)) = split_manifest(&k) else {
                continue;
            };
            if let Ok(m) = decode(&v, &format!("the manifest of {job} step {step}")) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// How many committed checkpoints this store holds (a replica's status shows it, so that
    /// an operator sees a replica still fetching what it lacks).
    pub fn count(&self) -> u64 {
        self.manifests.len() as u64
    }

    /// Whether this store lacks `job`'s checkpoint at `step` or holds it damaged (a manifest
    /// that does not decode, or chunks a read found damaged). An upload of the step in
    /// progress here is left to finish: it is not a copy to replace; and a step the log
    /// removed is not wanted back.
    pub fn needs_copy(&self, job: JobId, step: u64) -> Result<bool, CheckpointError> {
        let forgotten = self
            .forgotten
            .contains_key(manifest_key(job, step))
            .map_err(CheckpointError::storage(format!(
                "read whether {job} step {step} was removed"
            )))?;
        if forgotten {
            return Ok(false);
        }
        if self
            .lock_in_progress()
            .keys()
            .any(|u| u.job == job && u.step == step)
        {
            return Ok(false);
        }
        match self.get(job, step) {
            Ok(None) => Ok(true),
            Ok(Some(_)) => self.damaged.contains_key(manifest_key(job, step)).map_err(
                CheckpointError::storage(format!("read the damage of {job} step {step}")),
            ),
            Err(e) if e.is_damage() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Abandons the uploads of `job`'s step `step` in progress here (a fetch from a peer that
    /// stopped answering), so that the step can be fetched again.
    pub fn abort_uploads_of(&self, job: JobId, step: u64) -> Result<(), CheckpointError> {
        let generations: Vec<u64> = self
            .lock_in_progress()
            .keys()
            .filter(|u| u.job == job && u.step == step)
            .map(|u| u.generation)
            .collect();
        for generation in generations {
            self.abort(job, step, generation)?;
        }
        Ok(())
    }

    /// Removes a damaged copy of `job`'s checkpoint at `step` (its manifest, its damage
    /// record, every upload of the step not in progress), so that a good copy can be stored.
    /// The manifest goes first, as in every removal.
    pub fn clear_damaged(&self, job: JobId, step: u64) -> Result<(), CheckpointError> {
        let context = format!("clear the damaged {job} step {step}");
        self.manifests
            .remove(manifest_key(job, step))
            .map_err(CheckpointError::storage(context.clone()))?;
        self.damaged
            .remove(manifest_key(job, step))
            .map_err(CheckpointError::storage(context.clone()))?;
        self.db
            .flush()
            .map_err(CheckpointError::storage(context.clone()))?;
        let (uploads, _) = self.chunks.uploads()?;
        for u in uploads {
            if u.job != job || u.step != step {
                continue;
            }
            let in_progress = self.lock_in_progress();
            if !in_progress.contains_key(&u) {
                super::cleanup::remove_prefix(&self.pending, &upload_prefix(u), &context)?;
                self.chunks.remove_upload(u)?;
            }
        }
        Ok(())
    }
}

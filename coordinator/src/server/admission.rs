//! What is checked at submit beyond the spec itself, so that a job that must fail fails with
//! one line now rather than at run time, after a placement and possibly a retry: the cluster
//! could ever run it, its files exist where the coordinator can see them, and its
//! `init_from = "job:ID"` names a checkpoint that exists and fits its model.

use std::path::Path;

use convoy_spec::{Backend, JobSpec};
use tonic::Status;

use crate::model::JobId;
use crate::server::checkpoints::Checkpoints;
use crate::server::handle::Handle;

/// Refuses a gang larger than every registered worker's capacity together (alive or not,
/// cordoned or not: only a cluster that grows could run it). A cluster without workers yet
/// is not judged. Read from this replica's state without a round to the others: workers
/// come and go slowly, and a submission must not wait for a quorum twice.
pub async fn fits_the_cluster(handle: &Handle, spec: &JobSpec) -> Result<(), Status> {
    let (world, backend) = (spec.world_size, spec.backend);
    let (workers, capacity) = handle
        .read_local(move |v| {
            let w = &v.state.workers;
            let capacity: u64 = w.values().map(|w| u64::from(w.capacity_for(backend))).sum();
            (w.len(), capacity)
        })
        .await?;
    if workers > 0 && (world as u64) > capacity {
        let what = match backend {
            Backend::Cpu => "slots",
            Backend::Cuda => "GPUs (with a slot each)",
        };
        return Err(Status::invalid_argument(format!(
            "world_size = {world}: the cluster's {workers} worker(s) have {capacity} {what} in \
             all, so the job could never start"
        )));
    }
    Ok(())
}

/// Refuses a spec naming a file that is not there, for files whose directory the coordinator
/// sees (it shares the filesystem the spec was submitted from); others are the ranks' to
/// find. `workdir` is where relative paths point. The lookups run off the async threads: a
/// shared filesystem can be slow to answer.
pub async fn files_exist(spec: &JobSpec, workdir: &str) -> Result<(), Status> {
    let mut spec = spec.clone();
    if !workdir.is_empty() {
        spec.resolve_paths(Path::new(workdir));
    }
    let paths = spec.input_paths();
    tokio::task::spawn_blocking(move || missing(&paths))
        .await
        .map_err(|e| Status::internal(format!("checking the spec's files: {e}")))?
}

fn missing(paths: &[std::path::PathBuf]) -> Result<(), Status> {
    for p in paths {
        let visible = p.parent().is_some_and(|d| d.is_absolute() && d.is_dir());
        if !visible || p.exists() {
            continue;
        }
        // A shard pattern names files, not itself.
        let pattern = p.to_string_lossy().contains(['*', '?', '[']);
        if !pattern {
            return Err(Status::invalid_argument(format!(
                "{} does not exist (checked from the coordinator, which sees its directory)",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Refuses `init_from = "job:ID[@STEP]"` when that job has no such checkpoint (the latest
/// undamaged one without a step) or its model is not the spec's.
pub async fn init_checkpoint_fits(
    checkpoints: &Checkpoints,
    spec: &JobSpec,
    from: JobId,
    step: Option<u64>,
) -> Result<(), Status> {
    let list = checkpoints.list(&from.to_string()).await?.checkpoints;
    let chosen = match step {
        Some(s) => list.iter().find(|c| c.step == s),
        None => list.iter().rev().find(|c| c.damage.is_empty()),
    };
    let Some(c) = chosen else {
        return Err(Status::failed_precondition(match step {
            Some(s) => format!("{from} has no checkpoint at step {s}"),
            None => format!("{from} has no checkpoint to start from"),
        }));
    };
    spec.loads_checkpoint_of(&c.model)
        .map_err(|e| Status::failed_precondition(format!("{from}@{}: {e}", c.step)))
}

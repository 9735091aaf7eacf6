//! Which checkpoints a job keeps: the newest few (resume needs the latest) and the best few by
//! one metric (what a user exports). A pure function of the manifests, so it is tested
//! without sled and can preview what [`super::CheckpointStore::apply_retention`] would remove.

use std::collections::BTreeSet;

use super::manifest::Manifest;
pub use crate::model::Retention;

/// The steps of `manifests` that `r` does not keep, ascending.
///
/// A manifest without `best_metric`, or with a NaN or infinite value (a diverged step), is never
/// among the best. Among equal metric values the newer step is preferred.
pub fn select_removals(manifests: &[Manifest], r: &Retention) -> Vec<u64> {
    let mut steps: Vec<u64> = manifests.iter().map(|m| m.step).collect();
    steps.sort_unstable();
    steps.dedup();

    let newest = usize::try_from(r.keep_last.max(1)).unwrap_or(usize::MAX);
    let mut keep: BTreeSet<u64> = steps.iter().rev().take(newest).copied().collect();

    let mut scored: Vec<(f64, u64)> = manifests
        .iter()
        .filter_map(|m| {
            let v = *m.metrics.get(&r.best_metric)?;
            v.is_finite().then_some((v, m.step))
        })
        .collect();
    scored.sort_by(|a, b| {
        let by_value = if r.minimize {
            a.0.total_cmp(&b.0)
        } else {
            b.0.total_cmp(&a.0)
        };
        by_value.then_with(|| b.1.cmp(&a.1))
    });
    let best = usize::try_from(r.keep_best).unwrap_or(usize::MAX);
    keep.extend(scored.iter().take(best).map(|&(_, step)| step));

    steps.retain(|s| !keep.contains(s));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobId;

    fn m(step: u64, val_loss: Option<f64>) -> Manifest {
        Manifest {
            job: JobId(1),
            step,
            generation: 0,
            created_at_ms: 0,
            total_len: 0,
            parts: vec![],
            metrics: val_loss
                .map(|v| ("val_loss".to_string(), v))
                .into_iter()
                .collect(),
            model: String::new(),
        }
    }

    fn r(keep_last: u32, keep_best: u32, minimize: bool) -> Retention {
        Retention {
            keep_last,
            keep_best,
            best_metric: "val_loss".to_string(),
            minimize,
        }
    }

    #[test]
    fn keeps_the_newest_and_the_best() {
        let ms = [
            m(100, Some(3.0)),
            m(200, Some(1.0)),
            m(300, Some(2.0)),
            m(400, Some(2.5)),
            m(500, Some(2.2)),
        ];
        assert_eq!(select_removals(&ms, &r(2, 1, true)), vec![100, 300]);
        assert_eq!(select_removals(&ms, &r(2, 2, true)), vec![100]);
        // Maximizing, the best (3.0 at step 100) is the oldest.
        assert_eq!(select_removals(&ms, &r(1, 1, false)), vec![200, 300, 400]);
    }

    #[test]
    fn the_latest_is_always_kept() {
        let ms = [m(100, Some(1.0)), m(200, Some(2.0))];
        assert_eq!(select_removals(&ms, &r(0, 0, true)), vec![100]);
        assert_eq!(select_removals(&ms, &r(0, 1, true)), Vec::<u64>::new());
        assert_eq!(select_removals(&[], &r(0, 0, true)), Vec::<u64>::new());
    }

    #[test]
    fn best_overlapping_newest_adds_nothing() {
        let ms = [m(100, Some(3.0)), m(200, Some(2.0)), m(300, Some(1.0))];
        assert_eq!(select_removals(&ms, &r(1, 1, true)), vec![100, 200]);
    }

    #[test]
    fn missing_or_non_finite_metrics_are_never_best() {
        let ms = [
            m(100, None),
            m(200, Some(f64::NAN)),
            m(300, Some(f64::NEG_INFINITY)),
            m(400, Some(5.0)),
            m(500, None),
        ];
        assert_eq!(select_removals(&ms, &r(1, 1, true)), vec![100, 200, 300]);
        assert_eq!(select_removals(&ms, &r(1, 3, true)), vec![100, 200, 300]);
    }

    #[test]
    fn ties_prefer_the_newer_step_and_input_order_does_not_matter() {
        let ms = [
            m(300, Some(1.0)),
            m(100, Some(1.0)),
            m(400, Some(9.0)),
            m(200, Some(1.0)),
        ];
        assert_eq!(select_removals(&ms, &r(1, 1, true)), vec![100, 200]);
    }
}

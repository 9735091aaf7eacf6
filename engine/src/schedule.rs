//! Learning-rate schedules.

use crate::spec::{ScheduleKind, ScheduleSpec};

/// The learning rate at a 0-based optimizer step: linear warm-up from `lr / warmup` to `lr`
/// over the first `warmup_steps` steps (as llm.c), then constant or a cosine decay that reaches
/// `lr · min_lr_ratio` at the last step.
pub fn learning_rate(spec: &ScheduleSpec, peak: f32, step: u64, total_steps: u64) -> f32 {
    let warmup = spec.warmup_steps;
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    match spec.kind {
        ScheduleKind::Constant => peak,
        ScheduleKind::Cosine => {
            let min_lr = peak * spec.min_lr_ratio;
            let span = total_steps.saturating_sub(warmup).saturating_sub(1).max(1);
            let ratio = ((step - warmup) as f64 / span as f64).min(1.0);
            let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
            (min_lr as f64 + coeff * (peak - min_lr) as f64) as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ScheduleKind, warmup: u64, min: f32) -> ScheduleSpec {
        ScheduleSpec {
            kind,
            warmup_steps: warmup,
            min_lr_ratio: min,
        }
    }

    #[test]
    fn warmup_is_linear_then_constant() {
        let s = spec(ScheduleKind::Constant, 4, 0.0);
        let lrs: Vec<f32> = (0..6).map(|i| learning_rate(&s, 1.0, i, 10)).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn cosine_starts_at_peak_and_ends_at_floor() {
        let s = spec(ScheduleKind::Cosine, 10, 0.1);
        assert_eq!(learning_rate(&s, 2.0, 10, 110), 2.0);
        let last = learning_rate(&s, 2.0, 109, 110);
        assert!((last - 0.2).abs() < 1e-6, "last lr {last}");
        let mid = learning_rate(&s, 2.0, 10 + 99 / 2, 110);
        assert!((mid - 1.1).abs() < 0.02, "mid lr {mid}");
        // Monotone non-increasing after warm-up.
        let lrs: Vec<f32> = (10..110).map(|i| learning_rate(&s, 2.0, i, 110)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    }
}

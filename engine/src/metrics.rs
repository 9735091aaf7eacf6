//! Classification metrics from a confusion matrix.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub accuracy: f64,
    /// Per class; a class never predicted has precision 0.
    pub precision: Vec<f64>,
    /// Per class; a class absent from the labels has recall 0.
    pub recall: Vec<f64>,
    /// The unweighted mean of the per-class F1 scores.
    pub macro_f1: f64,
}

/// `confusion[label * k + predicted]` counts.
pub fn from_confusion(confusion: &[u64], k: usize) -> ClassMetrics {
    assert_eq!(confusion.len(), k * k);
    let total: u64 = confusion.iter().sum();
    let correct: u64 = (0..k).map(|i| confusion[i * k + i]).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut precision = Vec::with_capacity(k);
    let mut recall = Vec::with_capacity(k);
    let mut f1_sum = 0.0;
    for c in 0..k {
        let tp = confusion[c * k + c];
        let predicted: u64 = (0..k).map(|l| confusion[l * k + c]).sum();
        let actual: u64 = confusion[c * k..(c + 1) * k].iter().sum();
        let (p, r) = (ratio(tp, predicted), ratio(tp, actual));
        f1_sum += if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        precision.push(p);
        recall.push(r);
    }
    ClassMetrics {
        accuracy: ratio(correct, total),
        precision,
        recall,
        macro_f1: f1_sum / k.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_example() {
        // labels 0,0,1,1,2 ; predictions 0,1,1,1,0
        let mut conf = vec![0u64; 9];
        for (l, p) in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)] {
            conf[l * 3 + p] += 1;
        }
        let m = from_confusion(&conf, 3);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(m.precision, vec![0.5, 2.0 / 3.0, 0.0]);
        assert_eq!(m.recall, vec![0.5, 1.0, 0.0]);
        let f1 = [0.5, 0.8, 0.0];
        assert!((m.macro_f1 - f1.iter().sum::<f64>() / 3.0).abs() < 1e-12);
    }
}

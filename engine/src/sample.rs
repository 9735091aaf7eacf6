//! Drawing the next token from logits: temperature and top-k, seeded.

use rand::Rng;

/// Picks a token id from `logits` [V]: greedy when `temperature` is 0, else softmax of
/// logits / temperature restricted to the `top_k` largest (0 = all), sampled with `rng`.
pub fn pick(logits: &[f32], temperature: f32, top_k: usize, rng: &mut impl Rng) -> u32 {
    if temperature <= 0.0 {
        return argmax(logits) as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if top_k > 0 && top_k < logits.len() {
        // Ties broken by index so the candidate set is deterministic.
        idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        idx.truncate(top_k);
        idx.sort_unstable();
    }
    let max = idx
        .iter()
        .map(|&i| logits[i])
        .fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - max) / temperature) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (w, &i) in weights.iter().zip(&idx) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    *idx.last().expect("logits are not empty") as u32
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn top_k_restricts_and_temperature_zero_is_greedy() {
        let logits = [0.0, 5.0, 1.0, 4.9, -3.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(pick(&logits, 0.0, 0, &mut rng), 1);
        for _ in 0..200 {
            let t = pick(&logits, 1.0, 2, &mut rng);
            assert!(t == 1 || t == 3, "top-2 drew {t}");
        }
        // Same seed, same draws.
        let draw = |seed| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| pick(&logits, 1.5, 0, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
    }
}

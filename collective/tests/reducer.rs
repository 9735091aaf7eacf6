//! The GradReducer path: scattered buckets announced one by one, means written back, scalars
//! summed, several steps in a row.

mod common;

use std::ops::Range;
use std::time::Duration;

use common::{assert_close_to_f64, form_ring, per_rank, values};
use convoy_collective::RingReducer;
use convoy_engine::collective::{Bucket, GradReducer};
use convoy_testkit::bits;

/// A GPT-like layout: embeddings first, then each per-layer tensor kind for all layers
/// (llm.c's order), then the final layer norm; buckets are per layer, last layer first, so
/// each bucket's ranges are scattered over the flat buffer.
fn gpt_like(n_layer: usize) -> (usize, Vec<Bucket>) {
    let kinds = [48, 7, 300, 1, 129];
    let mut at = 0;
    let mut take = |len: usize| {
        let r = at..at + len;
        at += len;
        r
    };
    let (wte, wpe) = (take(5000), take(333));
    let mut per_layer: Vec<Vec<Range<usize>>> = vec![Vec::new(); n_layer];
    for &k in &kinds {
        for layer in per_layer.iter_mut() {
            layer.push(take(k));
        }
    }
    let lnf = vec![take(16), take(16)];
    let mut buckets = vec![lnf];
    buckets.extend(per_layer.into_iter().rev());
    buckets.push(vec![wte, wpe]);
    (at, buckets)
}

#[test]
fn scattered_buckets_come_back_as_bit_identical_means() {
    let world = 3;
    let (n, buckets) = gpt_like(4);
    let steps = 3usize;
    let rings = form_ring(world, Duration::from_secs(10));
    let results: Vec<Vec<Vec<f32>>> = per_rank(rings, move |rank, ring| {
        let mut reducer = RingReducer::new(ring).expect("reducer");
        assert_eq!((reducer.rank(), reducer.world_size()), (rank, world));
        let mut out = Vec::new();
        for step in 0..steps {
            let fresh = values(rank, n, step as u64);
            // Gradients not yet final are garbage, as mid-backward.
            let mut grads = vec![f32::NAN; n];
            for b in &buckets {
                for r in b {
                    grads[r.clone()].copy_from_slice(&fresh[r.clone()]);
                }
                reducer.bucket_ready(&grads, b).expect("bucket");
            }
            reducer.finish(&mut grads).expect("finish");
            let mut scalars = [rank as f64, 1.0];
            reducer.sum_scalars(&mut scalars).expect("scalars");
            assert_eq!(scalars, [3.0, 3.0]);
            out.push(grads);
        }
        out
    });
    for (step, reference) in results[0].iter().enumerate() {
        let inputs: Vec<Vec<f32>> = (0..world).map(|r| values(r, n, step as u64)).collect();
        for (r, ranks) in results.iter().enumerate().skip(1) {
            assert_eq!(bits(&ranks[step]), bits(reference), "step {step}, rank {r}");
        }
        assert_close_to_f64(reference, &inputs, true, &format!("step {step}"));
    }
}

#[test]
fn a_bucket_outside_the_buffer_or_missing_buckets_are_errors() {
    let mut rings = form_ring(1, Duration::from_secs(1));
    let mut reducer = RingReducer::new(rings.pop().expect("ring")).expect("reducer");
    let mut grads = vec![1.0f32; 10];
    let e = reducer
        .bucket_ready(&grads, std::slice::from_ref(&(5..11)))
        .expect_err("out of range")
        .to_string();
    assert!(e.contains("5..11") && e.contains("10 elements"), "{e}");
    reducer
        .bucket_ready(&grads, std::slice::from_ref(&(0..4)))
        .expect("bucket");
    let e = reducer
        .finish(&mut grads)
        .expect_err("uncovered")
        .to_string();
    assert!(e.contains("cover 4 of 10"), "{e}");
}

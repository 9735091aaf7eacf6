//! `NcclReducer` on real GPUs: buckets averaged in place on the device, scalars summed, several
//! steps on one communicator, and a rank that never joins turned into an error rather than a
//! hang. Each test prints why it is skipped without a GPU or without libnccl; the two-rank test
//! needs two GPUs.

use std::ops::Range;
use std::thread;
use std::time::{Duration, Instant};

use convoy_collective::{NcclReducer, nccl_available, nccl_unique_id};
use convoy_engine::collective::DeviceGradReducer;
use convoy_kernels::cuda::{Device, device_count};

const N: usize = 10_000;

/// Scattered and adjacent ranges, announced last layer first, like a GPT's; together they cover
/// every element once.
fn buckets() -> Vec<Vec<Range<usize>>> {
    vec![
        vec![9_500..N, 9_000..9_500],
        vec![3_000..4_000, 8_000..9_000, 4_000..5_000],
        vec![5_000..6_000, 7_000..8_000, 6_000..7_000],
        vec![0..1_000, 1_000..3_000],
    ]
}

/// Rank `rank`'s gradients: (rank + 1) · a pattern of exact binary fractions, so means are exact.
fn grads(rank: usize) -> Vec<f32> {
    (0..N)
        .map(|i| (rank + 1) as f32 * (i % 97) as f32 * 0.25)
        .collect()
}

fn nccl_or_skip(test: &str) -> bool {
    if !nccl_available() {
        eprintln!("{test}: skipped (libnccl.so is not loadable here)");
    }
    nccl_available()
}

fn gpu_or_skip(test: &str) -> Option<Device> {
    match Device::open(0) {
        Ok(Some(d)) => nccl_or_skip(test).then_some(d),
        Ok(None) => {
            eprintln!("{test}: skipped (no CUDA driver or no GPU on this machine)");
            None
        }
        Err(e) => panic!("{test}: the GPU is present but unusable: {e}"),
    }
}

/// One rank's optimizer step as the trainer drives it: every bucket, `finish`, the scalars;
/// returns the gradients as `finish` left them.
fn step(reducer: &mut NcclReducer, dev: &Device, host: &[f32], scalars: &mut [f64]) -> Vec<f32> {
    let s = &dev.stream;
    let mut g = s.clone_htod(host).expect("upload");
    for b in buckets() {
        reducer.bucket_ready(&g, &b, s).expect("bucket_ready");
    }
    reducer.finish(&mut g, s).expect("finish");
    reducer.sum_scalars(scalars).expect("sum_scalars");
    s.clone_dtoh(&g).expect("download")
}

#[test]
fn one_rank_gets_its_own_gradients_back() {
    let test = "nccl_one_rank";
    let Some(dev) = gpu_or_skip(test) else {
        return;
    };
    let id = nccl_unique_id().expect("unique id");
    let mut reducer =
        NcclReducer::new(&dev, 0, 1, &id, Duration::from_secs(60)).expect("communicator");
    assert_eq!((reducer.rank(), reducer.world_size()), (0, 1));
    for i in 0..3 {
        let g = grads(i);
        let mut scalars = [1.5, -2.0, 1e10 + i as f64];
        let out = step(&mut reducer, &dev, &g, &mut scalars);
        assert_eq!(out, g, "step {i}: the mean over one rank is the rank's own");
        assert_eq!(scalars, [1.5, -2.0, 1e10 + i as f64]);
    }
}

#[test]
fn two_ranks_get_the_mean() {
    let test = "nccl_two_ranks";
    let gpus = device_count();
    if gpus < 2 {
        eprintln!("{test}: skipped (needs two GPUs, this machine has {gpus})");
        return;
    }
    if !nccl_or_skip(test) {
        return;
    }
    let id = nccl_unique_id().expect("unique id");
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let id = id.clone();
            thread::spawn(move || {
                let dev = Device::open(rank).expect("open").expect("a GPU");
                let mut reducer = NcclReducer::new(&dev, rank, 2, &id, Duration::from_secs(60))
                    .expect("communicator");
                let mut outs = Vec::new();
                for _ in 0..2 {
                    let mut scalars = [rank as f64 + 1.0, 10.0];
                    let out = step(&mut reducer, &dev, &grads(rank), &mut scalars);
                    outs.push((out, scalars));
                }
                outs
            })
        })
        .collect();
    // The mean of x and 2x is 1.5x, exactly for these values.
    let want: Vec<f32> = grads(0).iter().map(|x| 1.5 * x).collect();
    for (rank, t) in ranks.into_iter().enumerate() {
        for (i, (out, scalars)) in t.join().expect("rank thread").into_iter().enumerate() {
            assert_eq!(out, want, "rank {rank} step {i}");
            assert_eq!(scalars, [3.0, 20.0], "rank {rank} step {i}");
        }
    }
}

#[test]
fn a_rank_that_never_joins_is_an_error_not_a_hang() {
    let test = "nccl_missing_peer";
    let Some(dev) = gpu_or_skip(test) else {
        return;
    };
    let id = nccl_unique_id().expect("unique id");
    let started = Instant::now();
    // Rank 1 of 2 never starts.
    let err = NcclReducer::new(&dev, 0, 2, &id, Duration::from_secs(2))
        .err()
        .expect("no communicator without rank 1");
    let text = err.to_string();
    assert!(
        text.starts_with("rank 0: ") && text.contains("never joined") && text.contains("aborted"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "gave up after {:?}",
        started.elapsed()
    );
}

//! Ring all-reduce results: exact to f32 rounding, identical on every rank and every run.

mod common;

use std::time::Duration;

use common::{assert_close_to_f64, form_ring, per_rank, values};
use convoy_collective::{ReduceOp, Ring, RingConfig};
use convoy_testkit::bits;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sizes smaller than, equal to and not divisible by every world size, and large enough that
/// chunks span many socket buffers and the pipeline runs several steps at once.
const SIZES: [usize; 11] = [0, 1, 2, 3, 5, 7, 64, 1001, 40_000, 100_003, 1_500_007];

/// Every rank's outputs for every size and op, in order.
fn run_all(world: usize) -> Vec<Vec<Vec<f32>>> {
    per_rank(form_ring(world, TIMEOUT), |rank, mut ring| {
        let mut out = Vec::new();
        for (k, &n) in SIZES.iter().enumerate() {
            for op in [ReduceOp::Sum, ReduceOp::Mean] {
                let mut buf = values(rank, n, k as u64);
                ring.all_reduce(&mut buf, op).expect("all-reduce");
                out.push(buf);
            }
        }
        out
    })
}

#[test]
fn all_reduce_matches_the_f64_sum_bit_identically_on_every_rank() {
    for world in [2, 3, 4] {
        let first = run_all(world);
        for (k, &n) in SIZES.iter().enumerate() {
            let inputs: Vec<Vec<f32>> = (0..world).map(|r| values(r, n, k as u64)).collect();
            for (j, mean) in [false, true].into_iter().enumerate() {
                let idx = 2 * k + j;
                let what = format!("world {world}, n {n}, mean {mean}");
                for r in 1..world {
                    assert_eq!(
                        bits(&first[r][idx]),
                        bits(&first[0][idx]),
                        "{what}: rank {r}"
                    );
                }
                assert_close_to_f64(&first[0][idx], &inputs, mean, &what);
            }
        }
        let second = run_all(world);
        for r in 0..world {
            for (a, b) in first[r].iter().zip(&second[r]) {
                assert_eq!(bits(a), bits(b), "world {world}: a second run differs");
            }
        }
    }
}

#[test]
fn scalars_sum_in_f64() {
    let sums = per_rank(form_ring(3, TIMEOUT), |rank, mut ring| {
        let mut v = [rank as f64 + 0.25, 1.0, 1e300];
        ring.all_reduce(&mut v, ReduceOp::Sum).expect("sum");
        v
    });
    for v in sums {
        assert_eq!(v, [3.75, 3.0, 3e300]);
    }
}

#[test]
fn a_world_of_one_needs_no_sockets() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let cfg = RingConfig {
        rank: 0,
        world: 1,
        addrs: vec![listener.local_addr().expect("addr")],
        generation: 0,
        timeout: TIMEOUT,
        secret: vec![],
    };
    let mut ring = Ring::connect(cfg, listener).expect("ring of one");
    let mut v = values(0, 10, 0);
    let before = bits(&v);
    ring.all_reduce(&mut v, ReduceOp::Mean).expect("mean");
    assert_eq!(bits(&v), before);
}

#[test]
fn bad_configs_are_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cfg = RingConfig {
        rank: 2,
        world: 2,
        addrs: vec![addr, addr],
        generation: 0,
        timeout: TIMEOUT,
        secret: vec![],
    };
    let e = Ring::connect(cfg, listener)
        .err()
        .expect("rank out of range");
    assert!(e.to_string().contains("rank 2 of world 2"), "{e}");
}

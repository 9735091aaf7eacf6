//! Rings of threads on 127.0.0.1 for the tests.
#![allow(dead_code)] // each test file uses a different part

use std::net::{SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use convoy_collective::{Ring, RingConfig};

pub fn listeners(world: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let ls: Vec<TcpListener> = (0..world)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs = ls.iter().map(|l| l.local_addr().expect("addr")).collect();
    (ls, addrs)
}

/// The ring secret of the tests' attempts.
pub const SECRET: &[u8] = b"the ring secret of this attempt";

pub fn config(rank: usize, addrs: &[SocketAddr], generation: u64, timeout: Duration) -> RingConfig {
    RingConfig {
        rank,
        world: addrs.len(),
        addrs: addrs.to_vec(),
        generation,
        timeout,
        secret: SECRET.to_vec(),
    }
}

/// Runs `f(rank, item)` for every item on a thread of its own (a rank each), and returns the
/// results in rank order.
pub fn per_rank<I, T, F>(items: Vec<I>, f: F) -> Vec<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(usize, I) -> T + Clone + Send + 'static,
{
    let handles: Vec<_> = items
        .into_iter()
        .enumerate()
        .map(|(rank, item)| {
            let f = f.clone();
            thread::spawn(move || f(rank, item))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a rank's thread"))
        .collect()
}

/// Forms a ring of `world` ranks, each connecting from its own thread; index = rank.
pub fn form_ring(world: usize, timeout: Duration) -> Vec<Ring> {
    let (ls, addrs) = listeners(world);
    per_rank(ls, move |rank, l| {
        Ring::connect(config(rank, &addrs, 1, timeout), l).expect("ring forms")
    })
}

/// Deterministic pseudo-random values in [-1, 1), different for each rank and salt.
pub fn values(rank: usize, n: usize, salt: u64) -> Vec<f32> {
    let mut s = (rank as u64 + 1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Checks `got` against the f64 sum of `inputs` (divided by the rank count for a mean) to 1e-6
/// of the summed magnitudes.
pub fn assert_close_to_f64(got: &[f32], inputs: &[Vec<f32>], mean: bool, what: &str) {
    let world = inputs.len() as f64;
    for (i, &g) in got.iter().enumerate() {
        let exact: f64 = inputs.iter().map(|x| x[i] as f64).sum();
        let scale: f64 = inputs.iter().map(|x| (x[i] as f64).abs()).sum();
        let (exact, scale) = if mean {
            (exact / world, scale / world)
        } else {
            (exact, scale)
        };
        assert!(
            (g as f64 - exact).abs() <= 1e-6 * scale.max(f64::MIN_POSITIVE),
            "{what}: element {i}: got {g}, exact {exact}"
        );
    }
}

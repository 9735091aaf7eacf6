//! Failures end collectives with errors that name the peer, within the timeout: a rank that
//! goes away, a rank that goes silent, a rank from an earlier attempt, ranks out of step.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{config, form_ring, listeners, values};
use convoy_collective::wire::{HELLO_LEN, Hello, Status, VERSION};
use convoy_collective::{Peer, ReduceOp, Ring, RingReducer};
use convoy_engine::EngineError;
use convoy_engine::collective::GradReducer;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Slack on top of the timeout for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

#[test]
fn a_peer_that_disappears_fails_the_others_naming_it() {
    let mut rings = form_ring(3, TIMEOUT);
    let gone = rings.pop().expect("rank 2");
    let name = |p: Option<&Peer>| p.expect("a neighbour").to_string();
    let rank2 = name(rings[0].left());
    assert_eq!(name(rings[1].right()), rank2);
    let rank0 = name(rings[1].left());
    drop(gone);
    let started = Instant::now();
    let handles: Vec<_> = rings
        .into_iter()
        .enumerate()
        .map(|(rank, ring)| {
            thread::spawn(move || {
                let mut reducer = RingReducer::new(ring).expect("reducer");
                let mut grads = values(rank, 100_000, 0);
                reducer
                    .bucket_ready(&grads, std::slice::from_ref(&(0..grads.len())))
                    .expect("queued");
                (reducer.finish(&mut grads), started.elapsed())
            })
        })
        .collect();
    for (rank, h) in handles.into_iter().enumerate() {
        let (result, took) = h.join().expect("rank thread");
        let Err(EngineError::Collective(msg)) = result else {
            panic!("rank {rank}: expected a collective error, got {result:?}");
        };
        assert!(took < TIMEOUT + SLACK, "rank {rank} took {took:?}: {msg}");
        assert!(msg.starts_with(&format!("rank {rank}: ")), "{msg}");
        // Rank 0 reads from rank 2 and sees it go; rank 1 sees rank 2 or rank 0 fail.
        if rank == 0 {
            assert!(msg.contains(&rank2) && msg.contains("closed"), "{msg}");
        } else {
            assert!(msg.contains(&rank2) || msg.contains(&rank0), "{msg}");
        }
    }
}

#[test]
fn a_silent_peer_times_out_naming_it() {
    // Small (inline) and large (sender thread) messages.
    for n in [100, 1_000_000] {
        let mut rings = form_ring(2, TIMEOUT);
        let _silent = rings.pop().expect("rank 1");
        let mut ring = rings.pop().expect("rank 0");
        let started = Instant::now();
        let mut buf = values(0, n, 0);
        let e = ring
            .all_reduce(&mut buf, ReduceOp::Sum)
            .expect_err("no answer")
            .to_string();
        let took = started.elapsed();
        assert!(
            took >= TIMEOUT && took < TIMEOUT + SLACK,
            "took {took:?}: {e}"
        );
        assert!(
            e.contains("rank 1 (127.0.0.1:") && e.contains("silent"),
            "{e}"
        );
        // The ring is unusable afterwards, and says why.
        let again = ring
            .all_reduce(&mut buf, ReduceOp::Sum)
            .expect_err("broken");
        assert!(again.to_string().contains("failed earlier"), "{again}");
    }
}

fn hello(generation: u64, rank: u32, world: u32) -> Hello {
    Hello {
        version: VERSION,
        generation,
        rank,
        world,
        status: Status::Accepted,
    }
}

/// Connects as a would-be left neighbour and returns the reply.
fn knock(addr: std::net::SocketAddr, h: Hello) -> Hello {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&h.encode()).expect("hello");
    let mut b = [0u8; HELLO_LEN];
    s.read_exact(&mut b).expect("reply");
    Hello::decode(&b).expect("a ring reply")
}

#[test]
fn a_stale_generation_or_wrong_rank_is_turned_away_and_the_ring_still_forms() {
    let (mut ls, addrs) = listeners(2);
    let l1 = ls.pop().expect("listener 1");
    let l0 = ls.pop().expect("listener 0");
    let cfg0 = config(0, &addrs, 5, Duration::from_secs(10));
    let rank0 = thread::spawn(move || Ring::connect(cfg0, l0));

    // A zombie rank 1 from attempt 4, then an impostor claiming to be rank 0.
    let zombie = knock(addrs[0], hello(4, 1, 2));
    assert_eq!(zombie.status, Status::WrongGeneration);
    assert_eq!((zombie.generation, zombie.rank), (5, 0));
    let impostor = knock(addrs[0], hello(5, 0, 2));
    assert_eq!(impostor.status, Status::WrongRank);
    let wrong_world = knock(addrs[0], hello(5, 1, 3));
    assert_eq!(wrong_world.status, Status::WrongWorld);

    let cfg1 = config(1, &addrs, 5, Duration::from_secs(10));
    let rank1 = thread::spawn(move || Ring::connect(cfg1, l1));
    let mut rings: Vec<Ring> = [rank0, rank1]
        .into_iter()
        .map(|h| h.join().expect("thread").expect("ring forms"))
        .collect();
    let mut r1 = rings.pop().expect("rank 1");
    let t = thread::spawn(move || {
        let mut v = [2.0f32];
        r1.all_reduce(&mut v, ReduceOp::Sum).map(|()| v)
    });
    let mut v = [1.0f32];
    rings[0].all_reduce(&mut v, ReduceOp::Sum).expect("sum");
    assert_eq!(v, [3.0]);
    assert_eq!(t.join().expect("rank 1").expect("sum"), [3.0]);
}

#[test]
fn a_process_that_knows_the_hello_but_not_the_secret_is_turned_away_and_the_ring_still_forms() {
    let (mut ls, addrs) = listeners(2);
    let l1 = ls.pop().expect("listener 1");
    let l0 = ls.pop().expect("listener 0");
    let cfg0 = config(0, &addrs, 5, Duration::from_secs(10));
    let rank0 = thread::spawn(move || Ring::connect(cfg0, l0));

    // The right identity and a challenge; then an answer made up without the secret.
    let mut s = TcpStream::connect(addrs[0]).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut hello_and_challenge = hello(5, 1, 2).encode().to_vec();
    hello_and_challenge.extend_from_slice(&[7u8; 32]);
    s.write_all(&hello_and_challenge).expect("hello");
    let mut reply = [0u8; HELLO_LEN + 64];
    s.read_exact(&mut reply)
        .expect("reply, challenge and answer");
    let head: [u8; HELLO_LEN] = reply[..HELLO_LEN].try_into().expect("hello bytes");
    assert_eq!(
        Hello::decode(&head).expect("hello").status,
        Status::Accepted
    );
    s.write_all(&[0u8; 32]).expect("a made-up answer");
    let mut verdict = [0u8; 1];
    s.read_exact(&mut verdict).expect("verdict");
    assert_ne!(verdict[0], 0, "a made-up answer was accepted");

    // The real rank 1 knows the secret and joins; one with another secret would not.
    let mut wrong = config(1, &addrs, 5, Duration::from_millis(500));
    wrong.secret = b"another attempt's secret".to_vec();
    let stray = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let e = Ring::connect(wrong, stray)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("rank 0") && e.contains("ring secret"), "{e}");
    let cfg1 = config(1, &addrs, 5, Duration::from_secs(10));
    let rank1 = thread::spawn(move || Ring::connect(cfg1, l1));
    for h in [rank0, rank1] {
        h.join().expect("thread").expect("the ring forms");
    }
}

#[test]
fn ranks_of_different_generations_refuse_each_other() {
    let (ls, addrs) = listeners(2);
    let started = Instant::now();
    let handles: Vec<_> = ls
        .into_iter()
        .enumerate()
        .map(|(rank, l)| {
            let cfg = config(rank, &addrs, 7 + rank as u64, TIMEOUT);
            thread::spawn(move || {
                let e = Ring::connect(cfg, l).err().map(|e| e.to_string());
                (e, started.elapsed())
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    // Whichever rank is turned away first knows it at once (a rejection is final); the other
    // keeps waiting for a neighbour of its own generation until the timeout, then says what
    // it turned away.
    let mut quick = 0;
    for (rank, (e, took)) in results.into_iter().enumerate() {
        let e = e.expect("refused");
        let other = 1 - rank;
        assert!(
            e.contains(&format!("rank {other} (127.0.0.1:")) && e.contains("generation"),
            "rank {rank}: {e}"
        );
        assert!(took < TIMEOUT + SLACK, "rank {rank} took {took:?}");
        if e.contains("rejected our handshake") {
            quick += 1;
            assert!(took < TIMEOUT, "rank {rank} took {took:?}: {e}");
        } else {
            assert!(e.contains("turned away"), "rank {rank}: {e}");
        }
    }
    assert!(quick >= 1);
}

#[test]
fn ranks_out_of_step_fail_with_a_clear_error() {
    let rings = form_ring(2, TIMEOUT);
    let handles: Vec<_> = rings
        .into_iter()
        .enumerate()
        .map(|(rank, mut ring)| {
            thread::spawn(move || {
                let mut v = vec![1.0f32; 10 + rank];
                ring.all_reduce(&mut v, ReduceOp::Sum)
                    .expect_err("lengths differ")
                    .to_string()
            })
        })
        .collect();
    for (rank, h) in handles.into_iter().enumerate() {
        let e = h.join().expect("thread");
        assert!(
            e.contains("out of step") && e.contains(&format!("of {} f32", 10 + rank)),
            "{e}"
        );
    }
}

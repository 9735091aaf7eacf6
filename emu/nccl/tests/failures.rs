//! Failures as convoy's watchdog meets them, with ranks as threads: a peer that aborts
//! mid-collective is an error on every other rank, `ncclCommAbort` ends pending work (setup
//! included) from any thread, and a clean teardown is not an error for anyone.

mod common;

use std::path::PathBuf;
use std::sync::{Barrier, Mutex, mpsc};

use common::*;
use convoy_nccl_emu::*;

#[test]
fn a_peer_aborting_mid_collective_is_a_remote_error_for_the_others() {
    host_memory();
    // The hub (rank 0) and another rank, each as the one that goes away.
    for victim in [2, 0] {
        let id = unique_id();
        let issued = Barrier::new(3);
        let results = ranks(3, |r| {
            let comm = init_nonblocking(3, id, r);
            assert_eq!(settle(comm), NcclResult::Success);
            let send = f32s(&[1.0; 64]);
            let mut recv = vec![0; 256];
            if r == victim {
                // Both others have issued a collective this rank will never join.
                issued.wait();
                abort(comm);
                return None;
            }
            let res = all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum);
            assert_eq!(
                res,
                NcclResult::InProgress,
                "rank {r}: rank {victim} has not called"
            );
            issued.wait();
            let state = settle(comm);
            let text = last_error(comm);
            // Every later call reports the same error.
            let again = all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum);
            destroy(comm);
            Some((state, again, text))
        });
        for (r, res) in results.into_iter().enumerate() {
            let Some((state, again, text)) = res else {
                continue;
            };
            assert_eq!(state, NcclResult::RemoteError, "rank {r}: {text}");
            assert_eq!(again, NcclResult::RemoteError, "rank {r}");
            assert!(
                text.contains(&format!("rank {victim}")) && text.contains("aborted"),
                "rank {r} (rank {victim} aborted): {text}"
            );
        }
    }
}

#[test]
fn abort_from_another_thread_ends_a_blocking_call() {
    host_memory();
    let id = unique_id();
    let (handle_tx, handle_rx) = mpsc::channel();
    let handle_rx = Mutex::new(handle_rx);
    let done = Barrier::new(3);
    let results = ranks(3, |t| match t {
        // Rank 0, blocking, calls a collective rank 1 never joins.
        0 => {
            let comm = init_blocking(2, id, 0);
            handle_tx.send(comm).expect("watchdog waits");
            let mut buf = f32s(&[1.0; 4]);
            let send = buf.clone();
            let res = all_reduce(comm, &send, &mut buf, DataType::Float32, RedOp::Sum);
            done.wait();
            Some(res)
        }
        // Rank 1 joins, then only waits for the end.
        1 => {
            let comm = init_blocking(2, id, 1);
            done.wait();
            // Rank 0 is gone: the next collective fails at once, whenever the news arrived.
            let mut buf = f32s(&[1.0; 4]);
            let send = buf.clone();
            let res = all_reduce(comm, &send, &mut buf, DataType::Float32, RedOp::Sum);
            destroy(comm);
            Some(res)
        }
        // The watchdog: aborts rank 0 once its call is pending.
        _ => {
            let comm: Handle = handle_rx.lock().unwrap().recv().expect("rank 0's handle");
            while async_state(comm) != NcclResult::InProgress {
                std::thread::yield_now();
            }
            abort(comm);
            done.wait();
            None
        }
    });
    assert_eq!(
        results[0],
        Some(NcclResult::InvalidUsage),
        "the aborted call"
    );
    assert_eq!(results[1], Some(NcclResult::RemoteError), "the peer");
}

/// The socket path inside an id (see the crate's `id` module for the layout).
fn socket_path(id: &UniqueId) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let b: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
    let len = u16::from_le_bytes([b[24], b[25]]) as usize;
    PathBuf::from(std::ffi::OsStr::from_bytes(&b[26..26 + len]))
}

#[test]
fn abort_ends_a_setup_that_waits_for_missing_ranks() {
    host_memory();
    // Rank 0 listening for a rank 1 that never comes.
    let id = unique_id();
    let hub = init_nonblocking(2, id, 0);
    let path = socket_path(&id);
    while !path.exists() {
        assert_eq!(async_state(hub), NcclResult::InProgress);
        std::thread::yield_now();
    }
    assert_eq!(async_state(hub), NcclResult::InProgress);
    abort(hub);
    assert!(!path.exists(), "the socket file is removed");
    assert_eq!(async_state_of_dead(hub), NcclResult::InvalidArgument);

    // Rank 1 trying to reach a rank 0 that never listens.
    let spoke = init_nonblocking(2, unique_id(), 1);
    assert_eq!(async_state(spoke), NcclResult::InProgress);
    abort(spoke);
}

fn async_state_of_dead(comm: Handle) -> NcclResult {
    let mut state = NcclResult::Success;
    // SAFETY: a local; the handle is checked.
    unsafe { ncclCommGetAsyncError(comm.raw(), &mut state) }
}

#[test]
fn a_clean_destroy_is_not_an_error_until_the_rank_is_needed() {
    host_memory();
    let id = unique_id();
    let (gone_tx, gone_rx) = mpsc::channel();
    let gone_rx = Mutex::new(gone_rx);
    let results = ranks(2, |r| {
        let comm = init_nonblocking(2, id, r);
        assert_eq!(settle(comm), NcclResult::Success);
        let send = f32s(&[2.0; 8]);
        let mut recv = vec![0; 32];
        all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum);
        assert_eq!(settle(comm), NcclResult::Success);
        assert_eq!(to_f32s(&recv), [4.0; 8]);
        if r == 1 {
            // SAFETY: a live handle.
            let fin = unsafe { ncclCommFinalize(comm.raw()) };
            assert!(matches!(fin, NcclResult::InProgress | NcclResult::Success));
            assert_eq!(settle(comm), NcclResult::Success);
            destroy(comm);
            gone_tx.send(()).expect("rank 0 waits");
            return None;
        }
        gone_rx.lock().unwrap().recv().expect("rank 1 destroyed");
        // Rank 1 finalized: nothing of rank 0's is pending, so nothing is wrong.
        assert_eq!(async_state(comm), NcclResult::Success);
        // Until rank 0 needs rank 1 again.
        all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum);
        let state = settle(comm);
        let text = last_error(comm);
        destroy(comm);
        Some((state, text))
    });
    let (state, text) = results[0].clone().expect("rank 0's result");
    assert_eq!(state, NcclResult::RemoteError, "{text}");
    assert!(
        text.contains("rank 1 has destroyed its communicator"),
        "{text}"
    );
}

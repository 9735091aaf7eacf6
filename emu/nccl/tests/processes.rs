//! Ranks in separate processes (this test binary run again as a child rank), and a rank process
//! killed with SIGKILL in the middle of a collective: the surviving ranks must see
//! `ncclRemoteError`, not wait forever. Killing the hub (rank 0) and killing another rank are
//! both covered.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;

use common::*;
use convoy_nccl_emu::*;

const CHILD: &str = "CONVOY_NCCL_EMU_TEST_CHILD";

fn hex(id: &UniqueId) -> String {
    id.internal
        .iter()
        .map(|&c| format!("{:02x}", c as u8))
        .collect()
}

fn unhex(s: &str) -> UniqueId {
    let mut id = UniqueId { internal: [0; 128] };
    for (i, c) in id.internal.iter_mut().enumerate() {
        *c = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex") as _;
    }
    id
}

/// Not a test of its own: the body of a child rank when this binary is run with `CHILD` set
/// (`RANK,NRANKS,ID`). It joins, takes part in one all-reduce, then waits on stdin for the
/// kill (or exits when its parent is gone).
#[test]
fn child_rank() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    host_memory();
    let parts: Vec<&str> = spec.split(',').collect();
    let (rank, nranks) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
    let comm = init_blocking(nranks, unhex(parts[2]), rank);
    let send = f32s(&[rank as f32 + 1.0; 16]);
    let mut recv = vec![0; 64];
    assert_eq!(
        all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum),
        NcclResult::Success
    );
    let want = (1..=nranks).sum::<usize>() as f32;
    assert_eq!(to_f32s(&recv), [want; 16]);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0);
}

fn spawn_child(rank: usize, nranks: usize, id: &UniqueId) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_rank", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{rank},{nranks},{}", hex(id)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("child rank")
}

/// Ranks `local` of `nranks` run here as threads, `victim` in a child process: one all-reduce
/// with everyone, then a second the child never joins, during which it is killed.
fn kill_mid_collective(nranks: usize, victim: usize) {
    host_memory();
    let id = unique_id();
    let mut child = spawn_child(victim, nranks, &id);
    let local: Vec<usize> = (0..nranks).filter(|&r| r != victim).collect();
    let issued = Barrier::new(local.len() + 1);
    let results = std::thread::scope(|s| {
        let threads: Vec<_> = local
            .iter()
            .map(|&r| {
                let issued = &issued;
                s.spawn(move || {
                    let comm = init_nonblocking(nranks, id, r);
                    assert_eq!(settle(comm), NcclResult::Success, "rank {r}: setup");
                    let send = f32s(&[r as f32 + 1.0; 16]);
                    let mut recv = vec![0; 64];
                    all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum);
                    assert_eq!(settle(comm), NcclResult::Success, "rank {r}: first");
                    let want = (1..=nranks).sum::<usize>() as f32;
                    assert_eq!(to_f32s(&recv), [want; 16]);
                    let res = all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum);
                    assert_eq!(res, NcclResult::InProgress, "rank {r}: second");
                    issued.wait();
                    let state = settle(comm);
                    let text = last_error(comm);
                    abort(comm);
                    (r, state, text)
                })
            })
            .collect();
        issued.wait();
        child.kill().expect("SIGKILL the child rank");
        child.wait().expect("reap the child");
        threads
            .into_iter()
            .map(|t| t.join().expect("rank thread"))
            .collect::<Vec<_>>()
    });
    for (r, state, text) in results {
        assert_eq!(state, NcclResult::RemoteError, "rank {r}: {text}");
        assert!(text.contains(&format!("rank {victim}")), "rank {r}: {text}");
    }
}

#[test]
fn a_rank_process_killed_mid_collective_is_a_remote_error_for_the_others() {
    kill_mid_collective(3, 1);
}

#[test]
fn the_hub_process_killed_mid_collective_is_a_remote_error_for_the_others() {
    kill_mid_collective(2, 0);
}

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

/// `CONVOY_NCCL_EMU_KILL_AT=1`: the child rank SIGKILLs itself in its first collective, saying
/// so on stderr; with `CONVOY_NCCL_EMU_KILL_WHEN` only once that file exists, the other ranks
/// blocked in the collective meanwhile. Either way they see `ncclRemoteError`.
fn killed_by_its_environment(nranks: usize, victim: usize, wait: bool) {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::sync::Mutex;

    host_memory();
    let id = unique_id();
    let dir = tempfile::tempdir().expect("temp dir");
    let go = dir.path().join("go");
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", "child_rank", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{victim},{nranks},{}", hex(&id)))
        .env("CONVOY_NCCL_EMU_KILL_AT", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if wait {
        cmd.env("CONVOY_NCCL_EMU_KILL_WHEN", &go);
    }
    let mut child = cmd.spawn().expect("child rank");
    let mut stderr = BufReader::new(child.stderr.take().expect("the child's stderr"));
    let local: Vec<usize> = (0..nranks).filter(|&r| r != victim).collect();
    let issued = Barrier::new(local.len() + 1);
    let comms = Mutex::new(Vec::new());
    let results = std::thread::scope(|s| {
        let threads: Vec<_> = local
            .iter()
            .map(|&r| {
                let (issued, comms) = (&issued, &comms);
                s.spawn(move || {
                    let comm = init_nonblocking(nranks, id, r);
                    assert_eq!(settle(comm), NcclResult::Success, "rank {r}: setup");
                    comms.lock().expect("comms").push(comm);
                    let send = f32s(&[r as f32 + 1.0; 16]);
                    let mut recv = vec![0; 64];
                    let res = all_reduce(comm, &send, &mut recv, DataType::Float32, RedOp::Sum);
                    assert_eq!(res, NcclResult::InProgress, "rank {r}");
                    issued.wait();
                    let state = settle(comm);
                    let text = last_error(comm);
                    abort(comm);
                    (r, state, text)
                })
            })
            .collect();
        issued.wait();
        let mut said = String::new();
        if wait {
            while !said.contains("SIGKILL once") {
                let mut line = String::new();
                let n = stderr.read_line(&mut line).expect("the child's stderr");
                assert!(
                    n > 0,
                    "the child ended without waiting for its file: {said}"
                );
                said += &line;
            }
            assert!(child.try_wait().expect("the child").is_none(), "{said}");
            for &comm in comms.lock().expect("comms").iter() {
                assert_eq!(async_state(comm), NcclResult::InProgress, "{said}");
            }
            std::fs::write(&go, b"").expect("create the file");
        }
        let status = child.wait().expect("reap the child");
        stderr
            .read_to_string(&mut said)
            .expect("the child's stderr");
        assert_eq!(status.signal(), Some(9), "{status:?}: {said}");
        assert!(
            said.contains(&format!(
                "rank {victim} of {nranks}: CONVOY_NCCL_EMU_KILL_AT=1: SIGKILL in \
                 AllReduce(16 × Float32, Sum) (collective #0)"
            )),
            "{said}"
        );
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
fn a_rank_told_to_die_in_a_collective_is_a_remote_error_for_the_others() {
    killed_by_its_environment(3, 1, false);
}

#[test]
fn the_hub_told_to_die_once_a_file_exists_waits_with_the_others_blocked() {
    killed_by_its_environment(2, 0, true);
}

//! `backend = "cuda"` jobs of two ranks on a cluster, as on a machine with two GPUs: each rank
//! on its own GPU, gradients averaged with convoy's NCCL reducer. `convoy dev` runs one to the
//! end; a rank killed in the middle of an all-reduce is caught by the other rank's NCCL
//! watchdog (a peer failure, not blamed on its worker), and the job resumes from its last
//! checkpoint. Needs GPUs, or the emulated ones of the emulated GPU pass (emu/gpu_tests.sh:
//! the PTX interpreter as libcuda, two devices, and the NCCL stand-in as libnccl); skips
//! without them unless CONVOY_REQUIRE_GPU is set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use convoy_testkit::cluster::Cluster;
use convoy_testkit::dev::Dev;
use convoy_testkit::harness::READY_TIMEOUT;
use convoy_testkit::specs::write_shakespeare;
use convoy_testkit::{bin_dir, convoy, serial};
use serde_json::Value;

fn gpu_or_skip(test: &str) -> bool {
    if convoy_kernels::cuda::device_count() >= 2 {
        return true;
    }
    assert!(
        std::env::var_os("CONVOY_REQUIRE_GPU").is_none(),
        "{test}: CONVOY_REQUIRE_GPU is set but fewer than two GPUs (or stand-in devices) are \
         visible"
    );
    eprintln!("{test}: skipped (no CUDA driver or fewer than two GPUs on this machine)");
    false
}

const STEPS: usize = 6;

/// A 2-layer GPT (32 channels) on 20 kB of Shakespeare, `world_size` ranks of `batch` × 32
/// tokens, 6 steps, a checkpoint every 2. One rank of batch 8 reads exactly the rows two ranks
/// of batch 4 read (rank r reads rows 4r to 4r+3 of each global batch of 8), so it is the
/// two-rank job's single-process reference.
fn write_spec(dir: &Path, name: &str, backend: &str, world_size: usize, batch: usize) -> PathBuf {
    let text = write_shakespeare(dir, 20_000);
    let spec = format!(
        "name = \"{name}\"\nbackend = \"{backend}\"\nworld_size = {world_size}\n\
         steps = {STEPS}\nbatch_size = {batch}\nseq_len = 32\n\
         [model]\nkind = \"gpt\"\nn_layer = 2\nn_head = 4\nn_embd = 32\ncontext = 32\n\
         [data]\nkind = \"text\"\nfiles = [{:?}]\ntokenizer = \"byte\"\n\
         [optimizer]\nlr = 3e-3\nweight_decay = 0.1\ngrad_clip = 1.0\n\
         [checkpoint]\ninterval = 2\nkeep_last = 10\n",
        text.display().to_string()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec).expect("write the spec");
    path
}

/// The step losses of one process training the job's global batch on the CPU.
fn reference_losses(dir: &Path) -> Vec<f64> {
    let spec = write_spec(dir, "reference", "cpu", 1, 8);
    let out = convoy(&["train", spec.to_str().expect("utf-8"), "--json"]);
    assert!(
        out.status.success(),
        "convoy train {}: {}",
        spec.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let losses: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
        .filter(|e| e["event"] == "step")
        .map(|e| e["loss"].as_f64().expect("a loss"))
        .collect();
    assert_eq!(losses.len(), STEPS, "one loss per step");
    losses
}

/// One line of a job's log: a rank's (`rank`), or convoy's own (`None`).
struct Line {
    rank: Option<u64>,
    generation: u64,
    text: String,
}

/// `convoy logs JOB --json`, run by `convoy`.
fn parse_logs(out: &std::process::Output) -> Vec<Line> {
    assert!(
        out.status.success(),
        "convoy logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            Line {
                rank: v["rank"].as_u64().filter(|_| v["stream"] != "convoy"),
                generation: v["generation"].as_u64().unwrap_or(0),
                text: v["text"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect()
}

fn text_of(lines: &[Line], rank: u64, generation: u64) -> String {
    lines
        .iter()
        .filter(|l| l.rank == Some(rank) && l.generation == generation)
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Rank 0's "step K/N loss X …" lines, by step (a later attempt's replacing an earlier's).
fn logged_losses(lines: &[Line]) -> BTreeMap<usize, f64> {
    let mut losses = BTreeMap::new();
    for l in lines.iter().filter(|l| l.rank == Some(0)) {
        let mut words = l.text.split_whitespace();
        if let (Some("step"), Some(step), Some("loss"), Some(loss)) =
            (words.next(), words.next(), words.next(), words.next())
            && let (Some(Ok(step)), Ok(loss)) = (
                step.split('/').next().map(str::parse::<usize>),
                loss.parse::<f64>(),
            )
        {
            losses.insert(step, loss);
        }
    }
    losses
}

/// The cluster's losses (4 decimals in the log) follow the single-process CPU reference as
/// `convoy train` on CUDA does (tests/tests/gpu_train.rs): sums in other orders, the average
/// over ranks taken after the one within each rank.
fn assert_follows(what: &str, logged: &BTreeMap<usize, f64>, reference: &[f64]) {
    let steps: Vec<usize> = logged.keys().copied().collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "{what}: {logged:?}");
    for (step, loss) in logged {
        let want = reference[step - 1];
        assert!(
            (loss - want).abs() <= 1e-3 * want.abs(),
            "{what}, step {step}: loss {loss} vs {want} for one process on the CPU"
        );
    }
}

/// What a user of `convoy dev` relies on: the job succeeds in one attempt, each rank on a GPU
/// of its own with NCCL between them, its final checkpoint stored, and its losses those of one
/// process training the same global batch.
#[test]
fn convoy_dev_trains_a_two_rank_cuda_job_with_nccl() {
    if !gpu_or_skip("convoy_dev_trains_a_two_rank_cuda_job_with_nccl") {
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let reference = reference_losses(d);
    let spec = write_spec(d, "dev-cuda", "cuda", 2, 4);
    // Two one-slot workers on one machine: convoy dev deals the machine's GPUs out between
    // them (each worker's --gpus), so the ranks, one per worker, never share a GPU.
    let dev = Dev::start(&["--workers", "2", "--slots", "1"], READY_TIMEOUT * 2);
    let workers = dev.json(&["workers"]);
    let per_worker: Vec<Option<u64>> = workers
        .as_array()
        .expect("a list")
        .iter()
        .map(|w| w["gpus"].as_u64())
        .collect();
    assert_eq!(per_worker, [Some(1), Some(1)], "{workers}");
    let id = dev.submit(&spec);
    let job = dev.wait_state(&id, "succeeded", Duration::from_secs(600));
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job}");

    let lines = parse_logs(&dev.convoy(&["logs", &id, "--json"]));
    let mut gpus = vec![];
    for rank in 0..2 {
        let text = text_of(&lines, rank, 1);
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("rank {rank}/2 on GPU ")))
            .unwrap_or_else(|| panic!("rank {rank} names its GPU:\n{text}"));
        assert!(
            line.ends_with("; gradients averaged with NCCL across 2 ranks"),
            "{line}"
        );
        let visible = line
            .split("(CUDA_VISIBLE_DEVICES=")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap_or_else(|| panic!("rank {rank}'s GPU: {line}"));
        gpus.push(visible.to_string());
        assert!(
            text.contains(&format!("done: {STEPS} steps")),
            "rank {rank}:\n{text}"
        );
    }
    assert!(
        gpus[0] != gpus[1] && !gpus[0].is_empty(),
        "each rank on its own GPU: {gpus:?}"
    );
    let steps: Vec<u64> = dev
        .json(&["checkpoints", &id])
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|c| c["step"].as_u64())
        .collect();
    assert_eq!(
        steps,
        [2, 4, 6],
        "a checkpoint every 2 steps, the final one too"
    );
    assert_follows("convoy dev", &logged_losses(&lines), &reference);
    let verify = dev.json(&["checkpoint", "verify", &id]);
    assert_eq!(verify["ok"], true, "{verify}");
    let status = dev.stop();
    assert!(status.success(), "convoy dev exited with {status:?}");
}

/// The collective rank 0 of the first attempt dies in: a gradient all-reduce of step 3 (each
/// step makes 27 collectives here: the 26 runs of adjacent tensors of its 4 buckets, then the
/// loss sum), so that the checkpoint of step 2 can be stored before it.
const KILL_AT: u32 = 60;

/// A rank program that runs `convoy-rank`, except that rank 0 of the first attempt runs with
/// the NCCL stand-in told to SIGKILL it inside collective [`KILL_AT`] once `go` exists
/// (emu/nccl's fault injection), beside a `sleep` that keeps its output open: the worker reports
/// a rank's exit once its output has ended, so the coordinator hears of this death only when it
/// stops the attempt, and the attempt's end is the surviving rank's doing. (Reported at once,
/// the death would end the attempt itself, racing the survivor's own detection.) The `sleep`
/// ignores SIGTERM, as a wedged process would: it holds the dead rank's GPU until the worker's
/// SIGKILL at the end of the stop grace (15 s here), after the restart is placed (5 s hold), so
/// the new rank 0 has to wait for its GPU.
fn killing_rank_program(dir: &Path, go: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("rank-killed.sh");
    let script = format!(
        "#!/bin/sh\n\
         if grep -qx 'generation = 1' \"$1\" && grep -qx 'rank = 0' \"$1\"; then\n\
         \x20 (trap '' TERM; exec sleep 600) &\n\
         \x20 export CONVOY_NCCL_EMU_KILL_AT={KILL_AT} CONVOY_NCCL_EMU_KILL_WHEN='{}'\n\
         fi\n\
         exec '{}' \"$@\"\n",
        go.display(),
        bin_dir().join("convoy-rank").display()
    );
    std::fs::write(&path, script).expect("write the rank program");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn checkpoint_steps(c: &Cluster, id: &str, generation: u64) -> Vec<u64> {
    c.json(&["checkpoints", id])
        .as_array()
        .expect("a list")
        .iter()
        .filter(|x| x["generation"].as_u64() == Some(generation))
        .filter_map(|x| x["step"].as_u64())
        .collect()
}

/// A rank SIGKILLed inside an all-reduce, its peer blocked in the same all-reduce: the peer's
/// NCCL reports the loss (ncclRemoteError), its reducer's watchdog aborts the communicator, and
/// the peer exits as a peer failure, which ends the attempt without blaming its worker. The
/// collective timeout is ten minutes, so the detection is NCCL's, not a timeout's. The job then
/// resumes from the checkpoint the first attempt stored and ends with the reference's losses.
#[test]
fn a_rank_killed_mid_all_reduce_is_caught_by_its_peer_and_the_job_resumes() {
    if !gpu_or_skip("a_rank_killed_mid_all_reduce_is_caught_by_its_peer_and_the_job_resumes") {
        return;
    }
    let _g = serial();
    let mut c = Cluster::start(5_000);
    let d = c.dir.path().to_path_buf();
    let reference = reference_losses(&d);
    let go = d.join("kill-now");
    let program = killing_rank_program(&d, &go);
    let mut args = c.worker_args("gpus", 2);
    let timeout = args
        .iter()
        .position(|a| a == "--collective-timeout-ms")
        .expect("the worker's collective timeout");
    args[timeout + 1] = "600000".into();
    // A stop grace longer than the restart hold (5 s): see `killing_rank_program`.
    let grace = args
        .iter()
        .position(|a| a == "--stop-grace-ms")
        .expect("the worker's stop grace");
    args[grace + 1] = "15000".into();
    args.extend(["--rank-program".into(), program.display().to_string()]);
    let mut worker = c.spawn_worker("gpus", &args);
    if let Err(e) = worker.wait_ready(READY_TIMEOUT) {
        panic!("{e}\n{}", c.log_tails());
    }
    c.workers.push(worker);
    c.wait_workers(1);

    let id = c.submit(&write_spec(&d, "killed", "cuda", 2, 4), &[]);
    // Rank 0 cannot pass collective KILL_AT (step 3) before `go` exists, so the first attempt
    // is still running when its first checkpoint is stored.
    c.wait_for(
        "a checkpoint of the first attempt",
        Duration::from_secs(600),
        || !checkpoint_steps(&c, &id, 1).is_empty(),
    );
    std::fs::write(&go, b"").expect("create the kill file");

    let mut job = Value::Null;
    c.wait_for("the first attempt to end", Duration::from_secs(300), || {
        job = c.job(&id);
        job["attempts"][0]["outcome"]
            .as_str()
            .is_some_and(|o| !o.is_empty())
    });
    let outcome = job["attempts"][0]["outcome"].as_str().unwrap_or("");
    let worker = job["attempts"][0]["placement"][1].as_str().unwrap_or("");
    // Rank 1's last words, its reducer's: NCCL's asynchronous error, then the abort.
    assert!(
        outcome.contains(&format!("rank 1 on {worker} "))
            && outcome.contains("exited with status 5")
            && outcome.contains("NCCL all-reduce failed: ncclRemoteError")
            && outcome.contains("aborted the communicator")
            && outcome.ends_with(&format!("(a peer failed; {worker} is not blamed)")),
        "the survivor ends the attempt as a peer failure: {job}"
    );
    // The coordinator counts the ended attempt's GPUs free at once; the worker frees the dead
    // rank's only when its processes are gone. The restart's rank waits for it instead of
    // failing ("no free GPU", which would be charged to the worker and cost a restart).
    let job = c.wait_state(&id, "succeeded", Duration::from_secs(600));
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(2), "{job}");
    let log = std::fs::read_to_string(d.join("gpus.log")).unwrap_or_default();
    assert!(!log.contains("no free GPU"), "{log}");
    eprintln!(
        "the restart {} for the dead rank's GPU",
        if log.contains("waits for a GPU") {
            "waited"
        } else {
            "did not wait"
        }
    );

    let lines = parse_logs(&c.convoy(&["logs", &id, "--json"]));
    let victim = text_of(&lines, 0, 1);
    assert!(
        victim.contains(&format!(
            "rank 0 of 2: CONVOY_NCCL_EMU_KILL_AT={KILL_AT}: SIGKILL in AllReduce("
        )) && victim.contains("step 2/6 loss")
            && !victim.contains("step 3/6 loss"),
        "rank 0 dies in an all-reduce of step 3:\n{victim}"
    );
    let survivor = text_of(&lines, 1, 1);
    assert!(
        survivor.contains("rank 1 of 2: the connection to rank 0 closed before it finalized"),
        "the survivor's NCCL sees rank 0 die:\n{survivor}"
    );
    let stored = checkpoint_steps(&c, &id, 1);
    assert_eq!(stored, [2], "the first attempt stored step 2 only");
    for rank in 0..2 {
        let text = text_of(&lines, rank, 2);
        assert!(
            text.contains("resuming from checkpoint step 2 ")
                && text.contains(&format!("done: {STEPS} steps")),
            "rank {rank} of the second attempt:\n{text}"
        );
    }
    assert_eq!(checkpoint_steps(&c, &id, 2), [4, 6]);
    assert_follows("resumed", &logged_losses(&lines), &reference);
}

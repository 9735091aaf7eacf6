//! Benchmarks of the coordinator on real processes (release build, 127.0.0.1):
//!
//! - `submit`: N small job submissions from concurrent clients against a coordinator with no
//!   workers (every job is accepted, logged in sled and queued): accepted per second, latency
//!   percentiles, the coordinator's resident memory.
//! - `failover`: a 2-rank job on 3 one-slot workers; one of its workers is SIGKILLed and the
//!   time until the job's next attempt is placed (and until that attempt reports a step) is
//!   measured, against the heartbeat timeout.
//! - `restart`: N queued jobs, then the coordinator is stopped with SIGTERM and started again,
//!   `--rounds` times: the time from SIGTERM to exit, and from start to serving with every job
//!   recovered, for each N of `--jobs` (default 1,000, 10,000 and 100,000).
//! - `dp SPEC`: data-parallel efficiency, the spec's per-rank throughput on 2 ranks against
//!   1 rank, one thread per rank, same per-rank batch.
//!
//! `cargo build --release --bins && cargo build --release -p convoy-harness --examples` then
//! `target/release/examples/cluster_bench submit --jobs 10000` or
//! `target/release/examples/cluster_bench failover --rounds 5` or
//! `target/release/examples/cluster_bench restart --rounds 3` or
//! `target/release/examples/cluster_bench dp bench/gpt-cpu.toml`.

mod bench_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bench_common::{
    auth_args, client, digits_spec, dir_size, harness, load_spec, memory_mib, ms, percentile,
    start_workers, submit_many, wait,
};
use clap::{Parser, Subcommand};
use convoy_client::Channel;
use convoy_harness::{Daemon, Harness};
use convoy_proto::v1::convoy_client::ConvoyClient;
use convoy_proto::v1::{ClusterStatusRequest, GetJobRequest, JobState, SubmitJobRequest};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Submit {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Client connections (HTTP/2 channels) the requests are spread over.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    Failover {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5000)]
        heartbeat_timeout_ms: u64,
        /// The job to run (2 ranks); default: the digits MLP. A spec with `[checkpoint]` is
        /// killed after its first checkpoint, so the restart includes downloading it.
        #[arg(long)]
        spec: Option<PathBuf>,
        #[arg(long, default_value_t = 1_000_000)]
        steps: u64,
    },
    /// SIGTERM-to-exit and start-to-serving times of a coordinator holding N jobs.
    Restart {
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        jobs: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Data-parallel efficiency: the spec on 1 rank and on 2 ranks (one thread each, same
    /// per-rank batch), alternating, on two one-slot workers.
    Dp {
        spec: PathBuf,
        #[arg(long, default_value_t = 40)]
        steps: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

fn start_coordinator(
    h: &Harness,
    dir: &Path,
    heartbeat_timeout_ms: u64,
) -> Result<(Daemon, String)> {
    let d = h.coordinator(
        "coordinator",
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.join("coordinator").display().to_string(),
            "--heartbeat-timeout-ms".into(),
            heartbeat_timeout_ms.to_string(),
        ]
        .into_iter()
        .chain(auth_args(dir, true)?)
        .collect::<Vec<_>>(),
    )?;
    let url = d.url().context("the coordinator's address")?;
    Ok((d, url))
}

async fn submit(jobs: usize, concurrency: usize, connections: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let h = harness(dir.path())?;
    let (coordinator, addr) = start_coordinator(&h, dir.path(), 5000)?;
    let (spec, workdir) = digits_spec(100, 1)?;
    let (spec, workdir) = (Arc::new(spec), Arc::new(workdir));
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients.push(client(&addr).await?);
    }
    let (_, idle_hwm) = memory_mib(coordinator.pid())?;
    let started = Instant::now();
    let mut lat = submit_many(&clients, jobs, concurrency, &spec, &workdir).await?;
    let elapsed = started.elapsed();
    lat.sort();
    let (rss, hwm) = memory_mib(coordinator.pid())?;
    let status = clients[0]
        .cluster_status(ClusterStatusRequest {})
        .await?
        .into_inner();
    println!(
        "submitted {} jobs in {:.2} s with {} in flight over {} connections: {:.0} accepted/s",
        lat.len(),
        elapsed.as_secs_f64(),
        concurrency,
        connections,
        lat.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0))
    );
    println!(
        "coordinator: RSS {rss:.1} MiB, peak {hwm:.1} MiB (peak before the run {idle_hwm:.1} MiB); \
         data dir {:.1} MiB; jobs queued per the coordinator: {}",
        dir_size(&dir.path().join("coordinator")) as f64 / (1 << 20) as f64,
        status.jobs_queued
    );
    Ok(())
}

async fn restart(job_counts: &[usize], rounds: usize) -> Result<()> {
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    for &jobs in job_counts {
        let dir = tempfile::tempdir()?;
        let h = harness(dir.path())?;
        let (mut coordinator, addr) = start_coordinator(&h, dir.path(), 5000)?;
        let (spec, workdir) = digits_spec(100, 1)?;
        let clients = vec![client(&addr).await?; 4];
        submit_many(&clients, jobs, 64, &Arc::new(spec), &Arc::new(workdir)).await?;
        drop(clients);
        let (mut stops, mut starts) = (vec![], vec![]);
        for _ in 0..rounds {
            let t = Instant::now();
            if !coordinator.stop(Duration::from_secs(120)) {
                bail!("the coordinator did not exit within 120 s of SIGTERM");
            }
            stops.push(t.elapsed());
            let t = Instant::now();
            let (d, addr) = start_coordinator(&h, dir.path(), 5000)?;
            starts.push(t.elapsed());
            coordinator = d;
            let status = client(&addr)
                .await?
                .cluster_status(ClusterStatusRequest {})
                .await?
                .into_inner();
            if status.jobs_queued as usize != jobs {
                bail!("{} jobs recovered of {jobs}", status.jobs_queued);
            }
        }
        println!(
            "{jobs} jobs: SIGTERM to exit median {:.0} ms {:?}; start to serving median {:.0} ms {:?}; data dir {:.1} MiB",
            ms(median(stops.clone())),
            stops.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
            ms(median(starts.clone())),
            starts.iter().map(|d| ms(*d).round()).collect::<Vec<_>>(),
            dir_size(&dir.path().join("coordinator")) as f64 / (1 << 20) as f64,
        );
    }
    Ok(())
}

async fn failover(
    rounds: usize,
    heartbeat_timeout_ms: u64,
    spec: Option<&Path>,
    steps: u64,
) -> Result<()> {
    let mut placed = Vec::new();
    let mut stepping = Vec::new();
    for round in 1..=rounds {
        let dir = tempfile::tempdir()?;
        let h = harness(dir.path())?;
        let (_coordinator, addr) = start_coordinator(&h, dir.path(), heartbeat_timeout_ms)?;
        let names = ["w1", "w2", "w3"];
        let mut workers = start_workers(&h, dir.path(), &addr, &names)?;
        let mut c = client(&addr).await?;
        let (spec_toml, workdir) = match spec {
            Some(p) => load_spec(p, Some(steps), 2)?,
            None => digits_spec(steps, 2)?,
        };
        let checkpoints = spec_toml.contains("[checkpoint]");
        let id = c
            .submit_job(SubmitJobRequest {
                spec_toml,
                workdir,
                max_restarts: 3,
                no_progress_timeout: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .job_id;
        // Running and stepping on two of the three workers, past its first checkpoint if it
        // saves any.
        wait(Duration::from_secs(600), "the job to step", || {
            let (mut c, id) = (c.clone(), id.clone());
            async move {
                let j = c
                    .get_job(GetJobRequest { job_id: id.clone() })
                    .await?
                    .into_inner();
                let stepping = j.state == JobState::Running as i32 && j.step > 10;
                if !stepping || !checkpoints {
                    return Ok(stepping);
                }
                let list = c
                    .list_checkpoints(convoy_proto::v1::ListCheckpointsRequest { job_id: id })
                    .await?
                    .into_inner();
                Ok(!list.checkpoints.is_empty())
            }
        })
        .await?;
        let job = c
            .get_job(GetJobRequest { job_id: id.clone() })
            .await?
            .into_inner();
        let attempt = job.attempts.last().ok_or_else(|| anyhow!("no attempt"))?;
        let victim_id = attempt.placement[0].clone();
        let workers_list = c
            .list_workers(convoy_proto::v1::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers;
        let victim_name = workers_list
            .iter()
            .find(|w| w.id == victim_id)
            .map(|w| w.name.clone())
            .ok_or_else(|| anyhow!("worker {victim_id} not listed"))?;
        let idx = names
            .iter()
            .position(|n| *n == victim_name)
            .ok_or_else(|| anyhow!("unknown worker {victim_name}"))?;
        let generation = attempt.generation;

        let killed = Instant::now();
        workers[idx].kill();
        let mut restart = None;
        let mut lost = None;
        let deadline = killed + Duration::from_secs(120);
        loop {
            if Instant::now() > deadline {
                bail!("round {round}: no restart within 120 s");
            }
            let j = c
                .get_job(GetJobRequest { job_id: id.clone() })
                .await?
                .into_inner();
            if lost.is_none() {
                let ws = c
                    .list_workers(convoy_proto::v1::ListWorkersRequest {})
                    .await?
                    .into_inner()
                    .workers;
                if ws.iter().any(|w| w.id == victim_id && w.liveness == "lost") {
                    lost = Some(killed.elapsed());
                }
            }
            let newer = j.attempts.last().is_some_and(|a| a.generation > generation);
            if newer && j.state == JobState::Running as i32 && restart.is_none() {
                restart = Some(killed.elapsed());
            }
            if newer && j.latest.as_ref().is_some_and(|m| m.generation > generation) {
                let first_step = killed.elapsed();
                let r = restart.unwrap_or(first_step);
                let resumed = resume_line(&mut c, &id).await?;
                println!(
                    "round {round}: killed {victim_name}; lost after {:.0} ms, restart placed \
                     after {:.0} ms, first step of the new attempt after {:.0} ms (heartbeat \
                     timeout {heartbeat_timeout_ms} ms){}",
                    lost.map_or(f64::NAN, ms),
                    ms(r),
                    ms(first_step),
                    resumed.map_or(String::new(), |l| format!("; rank 0: {l}"))
                );
                placed.push(r);
                stepping.push(first_step);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    placed.sort();
    stepping.sort();
    println!(
        "median over {rounds} rounds: restart placed after {:.0} ms, first step after {:.0} ms; \
         target: restart within heartbeat timeout + 1 s = {} ms",
        ms(percentile(&placed, 0.5)),
        ms(percentile(&stepping, 0.5)),
        heartbeat_timeout_ms + 1000
    );
    Ok(())
}

async fn data_parallel(spec: &Path, steps: u64, rounds: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let h = harness(dir.path())?;
    let (_coordinator, addr) = start_coordinator(&h, dir.path(), 5000)?;
    let _workers = start_workers(&h, dir.path(), &addr, &["w1", "w2"])?;
    let c = client(&addr).await?;
    let mut per_rank: [Vec<f64>; 2] = [vec![], vec![]];
    for round in 1..=rounds {
        for world in [1usize, 2] {
            let t = run_for_throughput(&c, spec, steps, world).await?;
            println!(
                "round {round}, world {world}: median {t:.1}/s over all ranks, {:.1}/s per rank",
                t / world as f64
            );
            per_rank[world - 1].push(t / world as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (one, two) = (median(&mut per_rank[0]), median(&mut per_rank[1]));
    println!(
        "median per-rank throughput: world 1 {one:.1}, world 2 {two:.1}; efficiency {:.3} \
         (target >= 0.85)",
        two / one
    );
    Ok(())
}

/// Runs the spec to the end on `world` ranks; the median throughput of its training steps,
/// leaving out the first five (warm-up) and evaluation records.
async fn run_for_throughput(
    c: &ConvoyClient<Channel>,
    spec: &Path,
    steps: u64,
    world: usize,
) -> Result<f64> {
    let mut c = c.clone();
    let (spec_toml, workdir) = load_spec(spec, Some(steps), world)?;
    let id = c
        .submit_job(SubmitJobRequest {
            spec_toml,
            workdir,
            ..Default::default()
        })
        .await?
        .into_inner()
        .job_id;
    wait(Duration::from_secs(1800), "the job to end", || {
        let (mut c, id) = (c.clone(), id.clone());
        async move {
            let j = c
                .get_job(GetJobRequest { job_id: id.clone() })
                .await?
                .into_inner();
            if j.state == JobState::Failed as i32 || j.state == JobState::Cancelled as i32 {
                bail!("job {id} ended without success: {}", j.reason);
            }
            Ok(j.state == JobState::Succeeded as i32)
        }
    })
    .await?;
    let mut stream = c
        .stream_metrics(convoy_proto::v1::StreamMetricsRequest {
            job_id: id.clone(),
            follow: false,
        })
        .await?
        .into_inner();
    let mut t = Vec::new();
    while let Some(m) = stream.message().await? {
        if m.val_loss.is_none() && m.step > 5 && m.throughput > 0.0 {
            t.push(m.throughput);
        }
    }
    if t.is_empty() {
        bail!("job {id} reported no step metrics past warm-up");
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Rank 0's "resuming from checkpoint" line of the job's latest attempt, if it printed one.
async fn resume_line(c: &mut ConvoyClient<Channel>, id: &str) -> Result<Option<String>> {
    let mut stream = c
        .stream_logs(convoy_proto::v1::StreamLogsRequest {
            job_id: id.to_string(),
            rank: Some(0),
            follow: false,
        })
        .await?
        .into_inner();
    let mut found = None;
    while let Some(l) = stream.message().await? {
        if l.text.contains("resuming from checkpoint") {
            found = Some(l.text.trim().to_string());
        }
    }
    Ok(found)
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Submit {
            jobs,
            concurrency,
            connections,
        } => submit(jobs, concurrency, connections).await,
        Cmd::Restart { jobs, rounds } => restart(&jobs, rounds).await,
        Cmd::Failover {
            rounds,
            heartbeat_timeout_ms,
            spec,
            steps,
        } => failover(rounds, heartbeat_timeout_ms, spec.as_deref(), steps).await,
        Cmd::Dp {
            spec,
            steps,
            rounds,
        } => data_parallel(&spec, steps, rounds).await,
    }
}

//! Benchmarks of the replicated coordinator on real processes (release build, 127.0.0.1):
//!
//! - `failover`: three replicas, two one-slot workers and a 2-rank job that runs throughout.
//!   `--kills` times: the leader is SIGKILLed; measured are the time from the kill to the
//!   first acknowledged submission (a client given all three addresses, retrying every 10 ms
//!   with one request id) and to every worker being heard by the new leader again; the job's
//!   attempt must stay the same (no rank restarted). The killed replica is started again and
//!   caught up before the next kill.
//! - `submit`: submissions per second and latency with 1 replica and with 3, in one run
//!   (with TLS and tokens, as a cluster runs).
//! - `security`: submissions per second and latency of one coordinator with TLS and tokens
//!   against one with neither (`--insecure`, plaintext), alternating rounds, each in a
//!   process of its own (TLS is set up once per process).
//! - `upload`: checkpoint upload throughput with 1 replica and with 3 (where each part is
//!   also copied to the two others before it is acknowledged), in one run: a part of
//!   `--mib` MiB in 1 MiB chunks, as a rank of a running 2-rank job sends it.
//!
//! `cargo build --release --bins && cargo build --release -p convoy-harness --examples` then
//! `target/release/examples/ha_bench failover --kills 30` or
//! `target/release/examples/ha_bench submit --jobs 10000` or
//! `target/release/examples/ha_bench security --jobs 10000 --rounds 5` or
//! `target/release/examples/ha_bench upload --mib 256 --rounds 3`.

mod bench_common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bench_common::{
    ADMIN_TOKEN, auth_args, client, digits_spec, harness, ms, percentile, start_workers,
    submit_many, wait,
};
use clap::{Parser, Subcommand};
use convoy_harness::{Daemon, Harness};
use convoy_proto::v1::replicas_client::ReplicasClient;
use convoy_proto::v1::{
    CheckpointPart, CheckpointUpload, GetJobRequest, JobState, ListWorkersRequest, ReplicaStatus,
    ReplicaStatusRequest, SubmitJobRequest,
};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Failover {
        #[arg(long, default_value_t = 30)]
        kills: usize,
        #[arg(long, default_value_t = 5000)]
        heartbeat_timeout_ms: u64,
    },
    Upload {
        #[arg(long, default_value_t = 256)]
        mib: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    Submit {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    Security {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// One measurement of `security`, in a fresh process: prints `RESULT rate p50 p99`.
    #[command(hide = true)]
    SubmitRound {
        #[arg(long)]
        secure: bool,
        #[arg(long)]
        jobs: usize,
        #[arg(long)]
        concurrency: usize,
        #[arg(long)]
        connections: usize,
    },
}

/// `n` replicas (one, without `--peers`, when `n` is 1) on ports chosen now.
struct Replicas {
    harness: Harness,
    dir: std::path::PathBuf,
    listens: Vec<String>,
    daemons: Vec<Option<Daemon>>,
    heartbeat_timeout_ms: u64,
    /// The coordinators' authentication flags (see `auth_args`).
    auth: Vec<String>,
}

impl Replicas {
    /// `secure`: with tokens (as a real cluster runs), else without authentication.
    fn start(
        h: Harness,
        dir: &Path,
        n: usize,
        heartbeat_timeout_ms: u64,
        secure: bool,
    ) -> Result<Replicas> {
        convoy_service::secret_file::write(&dir.join("secret"), "bench-secret-0123456789")?;
        let auth = auth_args(dir, secure)?;
        let listens = (0..n)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                Ok(format!("127.0.0.1:{}", l.local_addr()?.port()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut r = Replicas {
            harness: h,
            dir: dir.to_path_buf(),
            daemons: (0..n).map(|_| None).collect(),
            listens,
            heartbeat_timeout_ms,
            auth,
        };
        for i in 0..n {
            r.start_member(i)?;
        }
        Ok(r)
    }

    fn start_member(&mut self, i: usize) -> Result<()> {
        let name = format!("coordinator-{}", i + 1);
        let mut args = vec![
            "--listen".into(),
            self.listens[i].clone(),
            "--data-dir".into(),
            self.dir.join(&name).display().to_string(),
            "--heartbeat-timeout-ms".into(),
            self.heartbeat_timeout_ms.to_string(),
        ];
        args.extend(self.auth.iter().cloned());
        if self.listens.len() > 1 {
            let peers: Vec<String> = self
                .listens
                .iter()
                .enumerate()
                .map(|(j, l)| format!("{}={l}", j + 1))
                .collect();
            args.extend([
                "--node-id".into(),
                (i + 1).to_string(),
                "--peers".into(),
                peers.join(","),
                "--cluster-id".into(),
                "bench".into(),
                "--cluster-secret-file".into(),
                self.dir.join("secret").display().to_string(),
            ]);
        }
        self.daemons[i] = Some(self.harness.coordinator(&name, &args)?);
        Ok(())
    }

    fn addresses(&self) -> String {
        self.listens.join(",")
    }

    async fn status(&self, i: usize) -> Option<ReplicaStatus> {
        let channel = convoy_client::connect(&self.listens[i]).await.ok()?;
        channel.set_credential(ADMIN_TOKEN).ok()?;
        let mut replicas = ReplicasClient::new(channel);
        let ask = replicas.status(ReplicaStatusRequest {});
        match tokio::time::timeout(Duration::from_secs(2), ask).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }

    /// The index of the serving leader, waiting for one.
    async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            for i in 0..self.listens.len() {
                if self.status(i).await.is_some_and(|s| s.serving) {
                    return Ok(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no leader within 60 s")
    }

    /// Waits until every replica has applied what the leader has committed.
    async fn caught_up(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let mut all = vec![];
            for i in 0..self.listens.len() {
                all.push(self.status(i).await);
            }
            let commit = all
                .iter()
                .flatten()
                .filter(|s| s.serving)
                .map(|s| s.commit)
                .next();
            if let Some(c) = commit
                && all
                    .iter()
                    .all(|s| s.as_ref().is_some_and(|s| s.applied >= c))
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("the replicas did not catch up within 60 s")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn failover(kills: usize, heartbeat_timeout_ms: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut replicas, workers, addrs, job, _) =
        running_job(dir.path(), 3, heartbeat_timeout_ms, true).await?;
    let mut c = client(&addrs).await?;
    let (spec_toml, workdir) = digits_spec(100, 1)?;
    wait(Duration::from_secs(120), "the job to step", || {
        let (mut c, job) = (c.clone(), job.clone());
        async move {
            let j = c.get_job(GetJobRequest { job_id: job }).await?.into_inner();
            Ok(j.step > 10)
        }
    })
    .await?;
    let generation = |j: &convoy_proto::v1::Job| j.attempts.last().map(|a| a.generation);
    let first = generation(
        &c.get_job(GetJobRequest {
            job_id: job.clone(),
        })
        .await?
        .into_inner(),
    );
    let (mut writes, mut reattached) = (vec![], vec![]);
    for kill in 1..=kills {
        replicas.caught_up().await?;
        let leader = replicas.leader().await?;
        let killed_wall = now_ms();
        let killed = Instant::now();
        if let Some(mut d) = replicas.daemons[leader].take() {
            d.kill();
        }
        // The first acknowledged write: a submission retried with one request id.
        let request_id = convoy_client::submit::new_request_id();
        let write = loop {
            let req = SubmitJobRequest {
                spec_toml: spec_toml.clone(),
                workdir: workdir.clone(),
                request_id: request_id.clone(),
                priority: -1,
                ..Default::default()
            };
            let tried = tokio::time::timeout(Duration::from_millis(500), c.submit_job(req));
            if let Ok(Ok(r)) = tried.await {
                let id = r.into_inner().job_id;
                // Queued behind the running job for ever; cancelled to keep the queue short.
                let _ = c
                    .cancel_job(convoy_proto::v1::CancelJobRequest { job_id: id })
                    .await;
                break killed.elapsed();
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("kill {kill}: no write acknowledged within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Every worker registered again (reattached, under its instance) with the new leader.
        let back = loop {
            if let Ok(ws) = c.list_workers(ListWorkersRequest {}).await {
                let ws = ws.into_inner().workers;
                if ws.len() == 2 && ws.iter().all(|w| w.registered_at_ms >= killed_wall) {
                    break killed.elapsed();
                }
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("kill {kill}: the workers did not reattach within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let j = c
            .get_job(GetJobRequest {
                job_id: job.clone(),
            })
            .await?
            .into_inner();
        if generation(&j) != first || j.state != JobState::Running as i32 {
            bail!("kill {kill}: the job's attempt changed: {j:?}");
        }
        println!(
            "kill {kill}: replica {} killed; first write acknowledged after {:.0} ms, workers \
             reattached after {:.0} ms",
            leader + 1,
            ms(write),
            ms(back)
        );
        writes.push(write);
        reattached.push(back);
        replicas.start_member(leader)?;
    }
    writes.sort();
    reattached.sort();
    println!(
        "{kills} leader kills: first acknowledged write p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; \
         workers reattached p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; ranks restarted: 0 (the \
         job kept attempt {})",
        ms(percentile(&writes, 0.5)),
        ms(percentile(&writes, 0.99)),
        ms(percentile(&writes, 1.0)),
        ms(percentile(&reattached, 0.5)),
        ms(percentile(&reattached, 0.99)),
        ms(percentile(&reattached, 1.0)),
        first.unwrap_or(0)
    );
    drop(workers);
    Ok(())
}

async fn submit(jobs: usize, concurrency: usize, connections: usize, rounds: usize) -> Result<()> {
    let (spec, workdir) = digits_spec(100, 1)?;
    let (spec, workdir) = (Arc::new(spec), Arc::new(workdir));
    let mut rates: [Vec<f64>; 2] = [vec![], vec![]];
    let mut p99s: [Vec<f64>; 2] = [vec![], vec![]];
    for round in 1..=rounds {
        for (k, n) in [1usize, 3].into_iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let h = harness(dir.path())?;
            let replicas = Replicas::start(h, dir.path(), n, 5000, true)?;
            replicas.leader().await?;
            let mut clients = vec![];
            for _ in 0..connections.max(1) {
                clients.push(client(&replicas.addresses()).await?);
            }
            let started = Instant::now();
            let mut lat = submit_many(&clients, jobs, concurrency, &spec, &workdir)
                .await
                .with_context(|| format!("{n} replicas"))?;
            let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
            lat.sort();
            let p99 = ms(percentile(&lat, 0.99));
            println!(
                "round {round}, {n} replica(s): {} submissions, {rate:.0}/s, p50 {:.2} ms, p99 \
                 {p99:.2} ms",
                lat.len(),
                ms(percentile(&lat, 0.5))
            );
            rates[k].push(rate);
            p99s[k].push(p99);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r1, r3) = (median(&mut rates[0]), median(&mut rates[1]));
    let (l1, l3) = (median(&mut p99s[0]), median(&mut p99s[1]));
    println!(
        "median of {rounds}: 1 replica {r1:.0}/s (p99 {l1:.2} ms), 3 replicas {r3:.0}/s (p99 \
         {l3:.2} ms): 3 replicas reach {:.2}x the single one",
        r3 / r1
    );
    Ok(())
}

/// One coordinator, `secure` or not: submissions per second, p50 and p99 in ms.
async fn submit_round(
    secure: bool,
    jobs: usize,
    concurrency: usize,
    connections: usize,
) -> Result<()> {
    let (spec, workdir) = digits_spec(100, 1)?;
    let (spec, workdir) = (Arc::new(spec), Arc::new(workdir));
    let dir = tempfile::tempdir()?;
    let replicas = Replicas::start(harness(dir.path())?, dir.path(), 1, 5000, secure)?;
    replicas.leader().await?;
    let mut clients = vec![];
    for _ in 0..connections.max(1) {
        clients.push(client(&replicas.addresses()).await?);
    }
    let started = Instant::now();
    let mut lat = submit_many(&clients, jobs, concurrency, &spec, &workdir).await?;
    let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "RESULT {rate:.1} {:.3} {:.3}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    Ok(())
}

/// Alternating rounds of [`submit_round`] without and with TLS and tokens, each in a child
/// process; medians and the ratio.
fn security(jobs: usize, concurrency: usize, connections: usize, rounds: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut results: [Vec<[f64; 3]>; 2] = [vec![], vec![]];
    for round in 1..=rounds {
        for (k, secure) in [false, true].into_iter().enumerate() {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["submit-round", "--jobs", &jobs.to_string()])
                .args(["--concurrency", &concurrency.to_string()])
                .args(["--connections", &connections.to_string()]);
            if secure {
                cmd.arg("--secure");
            }
            let out = cmd.output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .with_context(|| {
                    format!(
                        "round {round}: no result: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            let v: Vec<f64> = line.split(' ').map(str::parse).collect::<Result<_, _>>()?;
            let [rate, p50, p99] = v[..] else {
                bail!("round {round}: a malformed result {line:?}");
            };
            println!(
                "round {round}, {}: {rate:.0}/s, p50 {p50:.2} ms, p99 {p99:.2} ms",
                if secure {
                    "TLS + tokens"
                } else {
                    "plaintext, no auth"
                }
            );
            results[k].push([rate, p50, p99]);
        }
    }
    let median = |k: usize, i: usize| {
        let mut v: Vec<f64> = results[k].iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median of {rounds}: plaintext {:.0}/s (p99 {:.2} ms), TLS + tokens {:.0}/s (p99 {:.2} \
         ms): {:.2}x the submissions per second, {:.2}x the p99",
        median(0, 0),
        median(0, 2),
        median(1, 0),
        median(1, 2),
        median(1, 0) / median(0, 0),
        median(1, 2) / median(0, 2)
    );
    Ok(())
}

/// Starts `n` replicas and two one-slot workers running a long 2-rank job; the job's id and
/// live generation, and what must stay alive meanwhile.
async fn running_job(
    dir: &Path,
    n: usize,
    heartbeat_timeout_ms: u64,
    secure: bool,
) -> Result<(Replicas, Vec<Daemon>, String, String, u64)> {
    let h = harness(dir)?;
    let replicas = Replicas::start(h.clone(), dir, n, heartbeat_timeout_ms, secure)?;
    replicas.leader().await?;
    let addrs = replicas.addresses();
    let workers = start_workers(&h, dir, &addrs, &["w1", "w2"])?;
    let mut c = client(&addrs).await?;
    let (spec_toml, workdir) = digits_spec(100_000_000, 2)?;
    let job = c
        .submit_job(SubmitJobRequest {
            spec_toml,
            workdir,
            no_progress_timeout: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .job_id;
    wait(Duration::from_secs(120), "the job to run", || {
        let (mut c, job) = (c.clone(), job.clone());
        async move {
            let j = c.get_job(GetJobRequest { job_id: job }).await?.into_inner();
            Ok(j.state == JobState::Running as i32)
        }
    })
    .await?;
    let j = c
        .get_job(GetJobRequest {
            job_id: job.clone(),
        })
        .await?
        .into_inner();
    let generation = j
        .attempts
        .last()
        .map(|a| a.generation)
        .ok_or_else(|| anyhow!("{job} runs without an attempt"))?;
    Ok((replicas, workers, addrs, job, generation))
}

async fn upload(mib: u64, rounds: usize) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    let len = mib << 20;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 3) as u8).collect();
    let checksum = xxhash_rust::xxh3::xxh3_64(&chunk);
    let mut rates: [Vec<f64>; 2] = [vec![], vec![]];
    for round in 1..=rounds {
        for (k, n) in [1usize, 3].into_iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let (_replicas, _workers, addrs, job, generation) =
                // Without authentication: this client uploads as if it were rank 0.
                running_job(dir.path(), n, 5000, false).await?;
            let mut api = convoy_client::worker_api(convoy_client::connect(&addrs).await?);
            let chunks = (len as usize).div_ceil(CHUNK);
            let chunk = chunk.clone();
            let messages = (0..chunks).map(move |i| CheckpointUpload {
                part: (i == 0).then(|| CheckpointPart {
                    job_id: job.clone(),
                    generation,
                    step: 1,
                    part: 0,
                    parts: 2,
                    total_len: 2 * len,
                    offset: 0,
                    len,
                    ..Default::default()
                }),
                data: chunk.clone(),
                checksum,
            });
            let started = Instant::now();
            api.upload_checkpoint(tokio_stream::iter(messages)).await?;
            let rate = mib as f64 / started.elapsed().as_secs_f64();
            println!(
                "round {round}, {n} replica(s): {mib} MiB part stored in {:.2} s: {rate:.0} MiB/s",
                started.elapsed().as_secs_f64()
            );
            rates[k].push(rate);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r1, r3) = (median(&mut rates[0]), median(&mut rates[1]));
    println!(
        "median of {rounds}: 1 replica {r1:.0} MiB/s, 3 replicas {r3:.0} MiB/s: {:.2}x",
        r3 / r1
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::Failover {
            kills,
            heartbeat_timeout_ms,
        } => failover(kills, heartbeat_timeout_ms).await,
        Cmd::Submit {
            jobs,
            concurrency,
            connections,
            rounds,
        } => submit(jobs, concurrency, connections, rounds).await,
        Cmd::Security {
            jobs,
            concurrency,
            connections,
            rounds,
        } => security(jobs, concurrency, connections, rounds),
        Cmd::SubmitRound {
            secure,
            jobs,
            concurrency,
            connections,
        } => submit_round(secure, jobs, concurrency, connections).await,
        Cmd::Upload { mib, rounds } => upload(mib, rounds).await,
    }
    .map_err(|e| anyhow!("{e:#}"))
}

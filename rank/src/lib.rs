//! One training rank of a job: the process (`convoy-rank LAUNCH_FILE`) a worker daemon starts
//! for each rank it is given, configured by the launch file the daemon wrote
//! ([`convoy_service::RankLaunch`]).
//!
//! A CPU rank binds its collective listener, publishes the address through the
//! coordinator's rendezvous and forms the TCP ring with the other ranks of its generation; a
//! CUDA rank opens the GPU the daemon gave it and joins an NCCL communicator whose unique id
//! rank 0 publishes through the same rendezvous. Either way it trains with the engine —
//! continuing from the job's newest valid checkpoint if it has one (`checkpoint.rs`),
//! uploading its share of each new one — printing progress on stdout (which the daemon
//! ships to the coordinator) and reporting step metrics to the coordinator directly
//! (`reporter.rs`). All of it goes through one [`client::RankClient`]. It exits 0 when the
//! job's steps are done; any error is one line on stderr and a non-zero status.

mod checkpoint;
mod client;
mod error;
mod reporter;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy_collective::{
    CollectiveError, NcclReducer, Ring, RingConfig, RingReducer, nccl_available, nccl_unique_id,
};
use convoy_engine::collective::{DeviceGradReducer, SingleDevice};
use convoy_engine::spec::{Backend, JobSpec};
use convoy_engine::train::{Event, StopToken, Trainer, open_gpu};
use convoy_proto::v1 as pb;
use convoy_service::RankLaunch;

use checkpoint::{Outgoing, Uploader};
use client::RankClient;
pub use error::RankError;
use reporter::Reporter;

/// Exit status of a rank that learned its attempt was superseded (a zombie stopping itself).
pub const EXIT_SUPERSEDED: u8 = 3;

fn resolve(addr: &str) -> Result<SocketAddr, RankError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| RankError::Config(format!("peer address {addr:?} does not resolve")))
}

/// A CPU rank averages gradients over a TCP ring between the ranks' collective listeners.
fn cpu_trainer(
    launch: &RankLaunch,
    spec: &JobSpec,
    client: &RankClient,
) -> Result<Trainer, RankError> {
    let listener = TcpListener::bind("0.0.0.0:0").map_err(|e| RankError::Io {
        what: "binding the collective listener".into(),
        source: e,
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| RankError::Io {
            what: "reading the listener's port".into(),
            source: e,
        })?
        .port();
    let rendezvous = client.rendezvous(
        launch,
        format!("{}:{port}", launch.advertise_host),
        Vec::new(),
    )?;
    let addrs = rendezvous
        .addresses
        .iter()
        .map(|a| resolve(a))
        .collect::<Result<Vec<_>, _>>()?;
    let ring = Ring::connect(
        RingConfig {
            rank: launch.rank,
            world: launch.world_size,
            addrs,
            generation: launch.generation,
            timeout: launch.collective_timeout(),
            secret: launch.ring_secret.as_bytes().to_vec(),
        },
        listener,
    )?;
    let reducer = RingReducer::new(ring)?;
    Ok(Trainer::new(spec, Box::new(reducer))?)
}

/// A CUDA rank trains on the one GPU the daemon gave it (through `CUDA_VISIBLE_DEVICES`, so it
/// is always ordinal 0) and averages gradients with NCCL. NCCL finds the peers itself from the
/// unique id rank 0 publishes in the rendezvous, so these ranks have no listener and publish
/// no address.
fn cuda_trainer(
    launch: &RankLaunch,
    spec: &JobSpec,
    client: &RankClient,
) -> Result<Trainer, RankError> {
    // Checked before the rendezvous, so a rank that cannot train fails before the others
    // wait for it.
    let device = Arc::new(open_gpu(0)?);
    let several = launch.world_size > 1;
    if several && !nccl_available() {
        return Err(CollectiveError::NcclMissing.into());
    }
    let id = match (several, launch.rank) {
        (true, 0) => nccl_unique_id()?,
        _ => Vec::new(),
    };
    let rendezvous = client.rendezvous(launch, String::new(), id)?;
    let reducer: Box<dyn DeviceGradReducer> = match several {
        true => Box::new(NcclReducer::new(
            &device,
            launch.rank,
            launch.world_size,
            &rendezvous.nccl_id,
            launch.collective_timeout(),
        )?),
        false => Box::new(SingleDevice),
    };
    // For the job's log: which GPU each rank trains on and how gradients meet.
    let name = device
        .ctx
        .name()
        .unwrap_or_else(|e| format!("a GPU whose name the driver did not give: {e}"));
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    let reducer_text = match several {
        true => format!(
            "gradients averaged with NCCL across {} ranks",
            launch.world_size
        ),
        false => "one rank: no all-reduce".to_string(),
    };
    println!(
        "rank {}/{} on GPU {name:?} (CUDA_VISIBLE_DEVICES={visible}); {reducer_text}",
        launch.rank, launch.world_size
    );
    Ok(Trainer::on_gpu(spec, device, reducer)?)
}

/// Refuses a job that reads outside the worker's data roots (when it has any). A path is
/// judged by where it really is (symbolic links and `..` resolved), through its directory for
/// a file that does not exist yet or a shard pattern.
fn within_roots(paths: &[PathBuf], roots: &[PathBuf]) -> Result<(), RankError> {
    if roots.is_empty() {
        return Ok(());
    }
    for p in paths {
        let real = std::fs::canonicalize(p).ok().or_else(|| {
            let dir = std::fs::canonicalize(p.parent()?).ok()?;
            Some(dir.join(p.file_name()?))
        });
        if !real.is_some_and(|r| roots.iter().any(|root| r.starts_with(root))) {
            let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            return Err(RankError::Job(format!(
                "{} is outside this worker's data roots ({}): the job may read only there",
                p.display(),
                roots.join(", ")
            )));
        }
    }
    Ok(())
}

/// Runs the rank to completion.
pub fn run(launch: RankLaunch) -> Result<(), RankError> {
    let launch = Arc::new(launch);
    let text = std::fs::read_to_string(&launch.spec).map_err(|e| RankError::Io {
        what: format!("reading {}", launch.spec.display()),
        source: e,
    })?;
    let mut spec = JobSpec::parse(&text, &launch.spec.display().to_string())?;
    if !launch.workdir.is_empty() {
        spec.resolve_paths(std::path::Path::new(&launch.workdir));
    }
    within_roots(&spec.input_paths(), &launch.data_roots)?;
    if spec.world_size != launch.world_size {
        return Err(RankError::Job(format!(
            "the spec says world_size = {}, the placement has {} ranks",
            spec.world_size, launch.world_size
        )));
    }
    if let Some(n) = launch.threads.or(spec.threads) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| RankError::Config(format!("starting {n} threads: {e}")))?;
    }
    convoy_client::tls::configure(&convoy_client::tls::TlsSettings {
        ca: launch.tls_ca.clone(),
        identity: None,
    })
    .map_err(convoy_client::ClientError::from)?;
    let client = RankClient::connect(&launch.coordinator, &launch.credential)?;
    // `init_from = "job:ID[@STEP]"` names another job's checkpoint, not a file.
    let init_job = spec.init_from_job();
    if init_job.is_some() {
        spec.init_from = None;
    }
    let mut trainer = match spec.backend {
        Backend::Cpu => cpu_trainer(&launch, &spec, &client)?,
        Backend::Cuda => cuda_trainer(&launch, &spec, &client)?,
    };
    let timeout = launch.collective_timeout();
    // A restarted attempt continues from the job's latest checkpoint, wherever it runs now.
    let fetch_started = Instant::now();
    match checkpoint::download(&client, &launch.job_id, None, timeout)? {
        Some(d) => {
            for s in &d.skipped {
                println!("{s}");
            }
            let downloaded = fetch_started.elapsed();
            let restore_started = Instant::now();
            trainer.restore(d.state)?;
            println!(
                "resuming from checkpoint step {} ({:.1} MiB downloaded in {:.2} s, restored in {:.2} s)",
                d.step,
                d.bytes as f64 / (1 << 20) as f64,
                downloaded.as_secs_f64(),
                restore_started.elapsed().as_secs_f64()
            );
        }
        None => {
            if let Some((source, step)) = init_job {
                let d =
                    checkpoint::download(&client, &source, step, timeout)?.ok_or_else(|| {
                        RankError::Job(format!(
                            "init_from: {source} has no checkpoint{}",
                            step.map_or(String::new(), |s| format!(" at step {s}"))
                        ))
                    })?;
                trainer.init_params_from(&d.state)?;
                println!("initialised the parameters from {source} step {}", d.step);
            }
        }
    }
    // Set by the reporter or the uploader when the coordinator says this attempt is over;
    // the training loop checks it before every step.
    let stop = StopToken::new();
    let uploader = match spec.checkpoint.interval {
        0 => None,
        _ => Some(Uploader::spawn(
            client.clone(),
            launch.clone(),
            stop.clone(),
        )?),
    };
    let reporter =
        (launch.rank == 0).then(|| Reporter::spawn(client.clone(), launch.clone(), stop.clone()));
    // The state carries its step's loss; the evaluation at that step is the rank's to add.
    let mut last_val = None;
    let mut final_checkpoint = None;
    let unit = trainer.unit();
    let steps = spec.steps;
    let print_every = (steps / 50).max(1);
    println!(
        "rank {}/{} of {} (generation {}) training {} steps",
        launch.rank, launch.world_size, launch.job_id, launch.generation, steps
    );
    let trained = trainer.run(
        &mut |event| match event {
            Event::Step(m) => {
                if let Some(r) = &reporter {
                    let metrics = pb::StepMetrics {
                        step: m.step,
                        loss: m.loss,
                        lr: m.lr,
                        grad_norm: m.grad_norm,
                        throughput: m.throughput,
                        unit: unit.to_string(),
                        generation: launch.generation,
                        val_loss: None,
                    };
                    // The job's final progress must reach the coordinator.
                    r.send(metrics, m.step == steps);
                }
                if m.step % print_every == 0 || m.step == steps {
                    println!(
                        "step {}/{steps} loss {:.4} lr {:.2e} {:.0} {unit}/s",
                        m.step, m.loss, m.lr, m.throughput
                    );
                }
            }
            Event::Eval(e) => {
                let mut line = format!("eval step {} val_loss {:.4}", e.step, e.val_loss);
                if let Some(c) = &e.classification {
                    line += &format!(" accuracy {:.4} macro_f1 {:.4}", c.accuracy, c.macro_f1);
                }
                println!("{line}");
                last_val = Some((e.step, e.val_loss));
                if let Some(r) = &reporter {
                    let metrics = pb::StepMetrics {
                        step: e.step,
                        generation: launch.generation,
                        unit: unit.to_string(),
                        val_loss: Some(e.val_loss),
                        ..Default::default()
                    };
                    r.send(metrics, false);
                }
            }
            Event::Sample(s) => println!("sample:\n{s}"),
            Event::Checkpoint(state) => {
                let mut metrics = HashMap::new();
                if let Some(m) = state.metrics.as_ref().filter(|m| m.step == state.step) {
                    metrics.insert("loss".to_string(), m.loss);
                }
                if let Some((step, v)) = last_val
                    && step == state.step
                {
                    metrics.insert("val_loss".to_string(), v);
                }
                let p = Outgoing { state, metrics };
                if p.state.step == steps {
                    final_checkpoint = Some(p);
                } else if let Some(u) = &uploader {
                    u.offer(p);
                }
            }
        },
        &stop,
    );
    let summary = match (trained, stop.reason()) {
        (Ok(s), _) => s,
        // Told the attempt is over: whatever ended the loop (the check before a step, or a
        // collective that failed because the other ranks were stopped first), this rank was
        // superseded, and says so.
        (Err(_), Some(reason)) => return Err(RankError::Superseded(reason)),
        (Err(e), None) => return Err(e.into()),
    };
    if let Some(u) = uploader {
        u.finish(final_checkpoint)
            .map_err(|e| match stop.reason() {
                Some(reason) => RankError::Superseded(reason),
                None => e,
            })?;
    }
    println!(
        "done: {} steps in {:.1} s, median {:.0} {unit}/s, final loss {}",
        summary.steps,
        summary.elapsed_s,
        summary.throughput,
        summary
            .final_loss
            .map_or("-".to_string(), |l| format!("{l:.4}"))
    );
    if let Some(r) = reporter {
        r.finish(Duration::from_secs(3));
    }
    Ok(())
}

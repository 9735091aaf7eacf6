//! One training rank, as a child process of the worker daemon.
//!
//! The daemon starts `convoy-worker rank` with the rank's identity in the environment
//! ([`RankEnv`]). A CPU rank binds its collective listener, publishes the address through the
//! coordinator's rendezvous and forms the TCP ring with the other ranks of its generation; a
//! CUDA rank opens the GPU the daemon gave it and joins an NCCL communicator whose unique id
//! rank 0 publishes through the same rendezvous. Either way it trains with the engine —
//! continuing from the job's newest valid checkpoint if it has one (`checkpoint.rs`),
//! uploading its share of each new one — printing progress on stdout (which
//! the daemon ships to the coordinator) and reporting step metrics to the coordinator directly
//! (`coordinator.rs`). It exits 0 when the job's steps are done; any error is one line on
//! stderr and a non-zero status.

mod checkpoint;
mod coordinator;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use convoy_engine::collective::{DeviceGradReducer, SingleDevice};
use convoy_engine::spec::{Backend, JobSpec};
use convoy_engine::train::{Event, Trainer, open_gpu};
use convoy_proto::v1 as pb;

use crate::collective::{
    NcclReducer, Ring, RingConfig, RingError, RingReducer, nccl_available, nccl_unique_id,
};
use crate::error::WorkerError;
use checkpoint::{Pending, Uploader};
use coordinator::{Coordinator, spawn_reporter};

/// Exit status of a rank that learned its attempt was superseded (a zombie stopping itself).
pub const EXIT_SUPERSEDED: i32 = 3;

/// What the daemon tells a rank, through `CONVOY_*` environment variables.
#[derive(Clone, Debug)]
pub struct RankEnv {
    pub job_id: String,
    pub generation: u64,
    pub rank: usize,
    pub world_size: usize,
    /// `http://host:port` of the coordinator.
    pub coordinator: String,
    pub spec: PathBuf,
    /// Relative spec paths resolve against this (empty: the current directory).
    pub workdir: String,
    /// The host other ranks reach this rank's listener at.
    pub advertise_host: String,
    pub threads: Option<usize>,
    /// How long the ring waits for peers and tolerates a silent peer.
    pub collective_timeout: Duration,
}

impl RankEnv {
    pub const VARS: [&'static str; 10] = [
        "CONVOY_JOB",
        "CONVOY_GENERATION",
        "CONVOY_RANK",
        "CONVOY_WORLD_SIZE",
        "CONVOY_COORDINATOR",
        "CONVOY_SPEC",
        "CONVOY_WORKDIR",
        "CONVOY_ADVERTISE_HOST",
        "CONVOY_THREADS",
        "CONVOY_COLLECTIVE_TIMEOUT_MS",
    ];

    /// The variables to set on the child, in [`Self::VARS`] order.
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let values = [
            self.job_id.clone(),
            self.generation.to_string(),
            self.rank.to_string(),
            self.world_size.to_string(),
            self.coordinator.clone(),
            self.spec.display().to_string(),
            self.workdir.clone(),
            self.advertise_host.clone(),
            self.threads.map_or(String::new(), |t| t.to_string()),
            self.collective_timeout.as_millis().to_string(),
        ];
        Self::VARS.into_iter().zip(values).collect()
    }

    pub fn from_env() -> Result<RankEnv, WorkerError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                WorkerError::Config(format!(
                    "{name} is not set: `convoy-worker rank` is started by the worker daemon"
                ))
            })
        };
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, WorkerError> {
            v.parse()
                .map_err(|_| WorkerError::Config(format!("{name}={v:?} is not a number")))
        }
        let threads = var("CONVOY_THREADS")?;
        Ok(RankEnv {
            job_id: var("CONVOY_JOB")?,
            generation: num("CONVOY_GENERATION", var("CONVOY_GENERATION")?)?,
            rank: num("CONVOY_RANK", var("CONVOY_RANK")?)?,
            world_size: num("CONVOY_WORLD_SIZE", var("CONVOY_WORLD_SIZE")?)?,
            coordinator: var("CONVOY_COORDINATOR")?,
            spec: PathBuf::from(var("CONVOY_SPEC")?),
            workdir: var("CONVOY_WORKDIR")?,
            advertise_host: var("CONVOY_ADVERTISE_HOST")?,
            threads: if threads.is_empty() {
                None
            } else {
                Some(num("CONVOY_THREADS", threads)?)
            },
            collective_timeout: Duration::from_millis(num(
                "CONVOY_COLLECTIVE_TIMEOUT_MS",
                var("CONVOY_COLLECTIVE_TIMEOUT_MS")?,
            )?),
        })
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, WorkerError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| WorkerError::Config(format!("peer address {addr:?} does not resolve")))
}

/// A CPU rank averages gradients over a TCP ring between the ranks' collective listeners.
fn cpu_trainer(
    env: &RankEnv,
    spec: &JobSpec,
    coord: &mut Coordinator,
) -> Result<Trainer, WorkerError> {
    let listener = TcpListener::bind("0.0.0.0:0").map_err(|e| WorkerError::Io {
        what: "binding the collective listener".into(),
        source: e,
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| WorkerError::Io {
            what: "reading the listener's port".into(),
            source: e,
        })?
        .port();
    let rendezvous = coord.rendezvous(env, format!("{}:{port}", env.advertise_host), Vec::new())?;
    let addrs = rendezvous
        .addresses
        .iter()
        .map(|a| resolve(a))
        .collect::<Result<Vec<_>, _>>()?;
    let ring = Ring::connect(
        RingConfig {
            rank: env.rank,
            world: env.world_size,
            addrs,
            generation: env.generation,
            timeout: env.collective_timeout,
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
    env: &RankEnv,
    spec: &JobSpec,
    coord: &mut Coordinator,
) -> Result<Trainer, WorkerError> {
    // Checked before the rendezvous, so a rank that cannot train fails before the others
    // wait for it.
    let device = Arc::new(open_gpu(0)?);
    let several = env.world_size > 1;
    if several && !nccl_available() {
        return Err(RingError::NcclMissing.into());
    }
    let id = match (several, env.rank) {
        (true, 0) => nccl_unique_id()?,
        _ => Vec::new(),
    };
    let rendezvous = coord.rendezvous(env, String::new(), id)?;
    let reducer: Box<dyn DeviceGradReducer> = match several {
        true => Box::new(NcclReducer::new(
            &device,
            env.rank,
            env.world_size,
            &rendezvous.nccl_id,
            env.collective_timeout,
        )?),
        false => Box::new(SingleDevice),
    };
    Ok(Trainer::on_gpu(spec, device, reducer)?)
}

/// Runs the rank to completion.
pub fn run(env: RankEnv) -> Result<(), WorkerError> {
    let text = std::fs::read_to_string(&env.spec).map_err(|e| WorkerError::Io {
        what: format!("reading {}", env.spec.display()),
        source: e,
    })?;
    let mut spec = JobSpec::parse(&text, &env.spec.display().to_string())?;
    if !env.workdir.is_empty() {
        spec.resolve_paths(std::path::Path::new(&env.workdir));
    }
    if spec.world_size != env.world_size {
        return Err(WorkerError::Config(format!(
            "the spec says world_size = {}, the placement has {} ranks",
            spec.world_size, env.world_size
        )));
    }
    if let Some(n) = env.threads.or(spec.threads) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| WorkerError::Config(format!("starting {n} threads: {e}")))?;
    }
    let mut coord = Coordinator::connect(&env.coordinator)?;
    // `init_from = "job:ID[@STEP]"` names another job's checkpoint, not a file.
    let init_job = spec.init_from_job();
    if init_job.is_some() {
        spec.init_from = None;
    }
    let mut trainer = match spec.backend {
        Backend::Cpu => cpu_trainer(&env, &spec, &mut coord)?,
        Backend::Cuda => cuda_trainer(&env, &spec, &mut coord)?,
    };
    // A restarted attempt continues from the job's latest checkpoint, wherever it runs now.
    let fetch_started = Instant::now();
    match checkpoint::download(&coord, &env.job_id, None, env.collective_timeout)? {
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
                let d = checkpoint::download(&coord, &source, step, env.collective_timeout)?
                    .ok_or_else(|| {
                        WorkerError::Config(format!(
                            "init_from: {source} has no checkpoint{}",
                            step.map_or(String::new(), |s| format!(" at step {s}"))
                        ))
                    })?;
                trainer.init_params_from(&d.state)?;
                println!("initialised the parameters from {source} step {}", d.step);
            }
        }
    }
    let uploader = match spec.checkpoint.interval {
        0 => None,
        _ => Some(Uploader::spawn(env.clone())?),
    };
    // The state carries its step's loss; the evaluation at that step is the rank's to add.
    let mut last_val = None;
    let mut final_checkpoint = None;
    let unit = trainer.unit();
    let steps = spec.steps;
    let print_every = (steps / 50).max(1);
    let (reporter, reporter_thread) = match env.rank {
        0 => {
            let (tx, thread) = spawn_reporter(coord, env.clone());
            (Some(tx), Some(thread))
        }
        _ => (None, None),
    };
    println!(
        "rank {}/{} of {} (generation {}) training {} steps",
        env.rank, env.world_size, env.job_id, env.generation, steps
    );
    let summary = trainer.run(&mut |event| match event {
        Event::Step(m) => {
            if let Some(tx) = &reporter {
                let metrics = pb::StepMetrics {
                    step: m.step,
                    loss: m.loss,
                    lr: m.lr,
                    grad_norm: m.grad_norm,
                    throughput: m.throughput,
                    unit: unit.to_string(),
                    generation: env.generation,
                    val_loss: None,
                };
                // A full queue drops a step's metrics, never the last step's: the job's
                // final progress must reach the coordinator.
                let _ = if m.step == steps {
                    tx.send(metrics).map_err(|_| ())
                } else {
                    tx.try_send(metrics).map_err(|_| ())
                };
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
            if let Some(tx) = &reporter {
                let _ = tx.try_send(pb::StepMetrics {
                    step: e.step,
                    generation: env.generation,
                    unit: unit.to_string(),
                    val_loss: Some(e.val_loss),
                    ..Default::default()
                });
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
            let p = Pending { state, metrics };
            if p.state.step == steps {
                final_checkpoint = Some(p);
            } else if let Some(u) = &uploader {
                u.offer(p);
            }
        }
    })?;
    if let Some(u) = uploader {
        u.finish(final_checkpoint);
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
    // Let the reporter deliver the last metrics, but never hold the exit for long.
    drop(reporter);
    if let Some(t) = reporter_thread {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

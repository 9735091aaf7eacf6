//! What the benchmark examples share: the release binaries beside them, clients, specs,
//! submissions and percentiles.

// Each example uses its own part of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use convoy_client::Channel;
use convoy_harness::{Daemon, Harness, READY_TIMEOUT};
use convoy_proto::v1::SubmitJobRequest;
use convoy_proto::v1::convoy_client::ConvoyClient;

/// The release binaries' directory (`target/release`, above `examples/`).
fn bins() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("cannot locate the target directory from {}", exe.display()))
}

/// The release binaries beside this example (`target/release/examples/..`).
pub fn harness(dir: &Path) -> Result<Harness> {
    let h = Harness::new(&bins()?, dir)?;
    h.check_binaries()?;
    Ok(h)
}

/// The administrator token benchmark clusters run with (see [`auth_args`]).
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const JOIN_TOKEN: &str = "bench-join-token-0123456789abcdef";

/// The coordinator flags for a cluster as a real one runs, with TLS and tokens (the token
/// files written into `dir`), or, when not `secure`, for one with neither. A process's
/// secure clusters share one CA (`target/release/bench-pki`, made by `convoy tls init` on
/// first use), which this process's connections then trust: TLS is set up once per process,
/// so one process benchmarks one kind of cluster.
pub fn auth_args(dir: &Path, secure: bool) -> Result<Vec<String>> {
    if !secure {
        return Ok(vec!["--insecure".into()]);
    }
    let pki = bins()?.join("bench-pki");
    if !pki.join("ca.pem").exists() {
        let out = std::process::Command::new(bins()?.join("convoy"))
            .args(["tls", "init", "--out"])
            .arg(&pki)
            .output()?;
        if !out.status.success() {
            bail!("convoy tls init: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    convoy_client::tls::configure(&convoy_client::tls::TlsSettings {
        ca: Some(pki.join("ca.pem")),
        identity: None,
    })?;
    let admin = dir.join("admin.token");
    convoy_service::secret_file::write(&admin, ADMIN_TOKEN)?;
    let file = |name: &str| pki.join(name).display().to_string();
    Ok(vec![
        "--admin-token-file".into(),
        admin.display().to_string(),
        "--join-token-file".into(),
        join_token_file(dir)?.display().to_string(),
        "--tls-cert".into(),
        file("coordinator.pem"),
        "--tls-key".into(),
        file("coordinator.key"),
        "--tls-ca".into(),
        file("ca.pem"),
    ])
}

fn join_token_file(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("join.token");
    convoy_service::secret_file::write(&path, JOIN_TOKEN)?;
    Ok(path)
}

/// A client presenting the administrator's token (ignored by a cluster without
/// authentication).
pub async fn client(addr: &str) -> Result<ConvoyClient<Channel>> {
    let channel = convoy_client::connect(addr).await?;
    channel.set_credential(ADMIN_TOKEN)?;
    Ok(convoy_client::client_api(channel))
}

/// A spec file with `steps` and `world_size` replaced, and the directory its relative paths
/// are resolved against.
pub fn load_spec(path: &Path, steps: Option<u64>, world: usize) -> Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut spec: toml::Table = toml::from_str(&text)?;
    if let Some(steps) = steps {
        spec.insert("steps".into(), toml::Value::Integer(steps as i64));
    }
    spec.insert("world_size".into(), toml::Value::Integer(world as i64));
    let dir = path
        .canonicalize()?
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    Ok((toml::to_string(&spec)?, dir))
}

pub fn digits_spec(steps: u64, world: usize) -> Result<(String, String)> {
    load_spec(
        &convoy_testkit::examples("digits-mlp.toml"),
        Some(steps),
        world,
    )
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
pub fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow!("{name} missing from /proc/{pid}/status"))?;
        let kb: f64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("malformed {name} line"))?
            .parse()?;
        Ok(kb / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Submits `jobs` copies of `spec` with `concurrency` requests in flight over `clients`;
/// returns each request's latency.
pub async fn submit_many(
    clients: &[ConvoyClient<Channel>],
    jobs: usize,
    concurrency: usize,
    spec: &Arc<String>,
    workdir: &Arc<String>,
) -> Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..concurrency.max(1) {
        let mut c = clients[t % clients.len()].clone();
        let (next, spec, workdir) = (next.clone(), spec.clone(), workdir.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let t0 = Instant::now();
                c.submit_job(SubmitJobRequest {
                    spec_toml: spec.to_string(),
                    workdir: workdir.to_string(),
                    priority: 0,
                    max_restarts: 3,
                    ..Default::default()
                })
                .await?;
                lat.push(t0.elapsed());
            }
            Ok::<_, tonic::Status>(lat)
        }));
    }
    let mut lat = Vec::with_capacity(jobs);
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(lat)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Polls `cond` every 50 ms until it holds.
pub async fn wait<F, Fut>(timeout: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond().await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// One-slot workers with one thread per rank, started together and waited for.
pub fn start_workers(h: &Harness, dir: &Path, addr: &str, names: &[&str]) -> Result<Vec<Daemon>> {
    // The CA this process trusts, if it set one up (see `auth_args`).
    let tls = match convoy_client::tls::enabled() {
        true => vec![
            "--tls-ca".to_string(),
            bins()?.join("bench-pki/ca.pem").display().to_string(),
        ],
        false => vec![],
    };
    let mut workers = names
        .iter()
        .map(|name| {
            h.spawn_worker(
                name,
                &[
                    "--coordinator".into(),
                    addr.into(),
                    "--name".into(),
                    name.to_string(),
                    "--slots".into(),
                    "1".into(),
                    "--data-dir".into(),
                    dir.join(name).display().to_string(),
                    "--threads-per-rank".into(),
                    "1".into(),
                    "--join-token-file".into(),
                    join_token_file(dir)?.display().to_string(),
                ]
                .into_iter()
                .chain(tls.iter().cloned())
                .chain(convoy_harness::running_as_root().then(|| "--allow-root-ranks".into()))
                .collect::<Vec<_>>(),
            )
            .map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for w in &mut workers {
        w.wait_ready(READY_TIMEOUT)?;
    }
    Ok(workers)
}

//! The cluster commands: talk to a coordinator over gRPC (`submit`, `jobs`, `logs`, …) or
//! start a local one (`dev`).

pub mod admin;
pub mod checkpoints;
pub mod coordinators;
pub mod dev;
pub mod follow;
pub mod jobs;
pub mod submit;
pub mod tls;
pub mod workers;

use anyhow::{Context, Result};
use convoy_client::Channel;
use convoy_proto::v1::convoy_client::ConvoyClient;
use convoy_service::secret_file;

/// Connects to the coordinator, or says in one line why not.
pub async fn connect(addr: &str) -> Result<ConvoyClient<Channel>> {
    Ok(convoy_client::client_api(channel(addr).await?))
}

/// A channel to the coordinator(s) at `addr` that presents the user's token (see [`token`]).
pub async fn channel(addr: &str) -> Result<Channel> {
    let channel = convoy_client::connect(addr).await?;
    if let Some(token) = token()? {
        channel.set_credential(&token)?;
    }
    Ok(channel)
}

/// The user's API token: `CONVOY_TOKEN`, else the file `CONVOY_TOKEN_FILE` names, else
/// `~/.config/convoy/token` if it exists (files must be private to their owner). None: the
/// coordinator then says that it wants one (unless it runs without authentication).
pub fn token() -> Result<Option<String>> {
    if let Some(t) = std::env::var("CONVOY_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(Some(t.trim().to_string()));
    }
    if let Some(path) = std::env::var_os("CONVOY_TOKEN_FILE").filter(|p| !p.is_empty()) {
        let path = std::path::PathBuf::from(path);
        return Ok(Some(secret_file::read(&path).context("CONVOY_TOKEN_FILE")?));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")));
    match config.map(|c| c.join("convoy").join("token")) {
        Some(path) if path.exists() => Ok(Some(secret_file::read(&path)?)),
        _ => Ok(None),
    }
}

/// A gRPC error as one line: the coordinator's message (which names the ids involved).
pub fn rpc(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", convoy_client::one_line(&status))
}

/// How long ago a time in milliseconds since the epoch was ("12s ago"), for tables.
pub fn ago(at_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(at_ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

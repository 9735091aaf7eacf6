//! The cluster commands: talk to a coordinator over gRPC (`submit`, `jobs`, `logs`, …) or
//! start a local one (`dev`).

pub mod checkpoints;
pub mod coordinators;
pub mod dev;
pub mod follow;
pub mod jobs;
pub mod submit;
pub mod workers;

use anyhow::Result;
use convoy_client::Channel;
use convoy_proto::v1::convoy_client::ConvoyClient;

/// Connects to the coordinator, or says in one line why not.
pub async fn connect(addr: &str) -> Result<ConvoyClient<Channel>> {
    Ok(convoy_client::client_api(
        convoy_client::connect(addr).await?,
    ))
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

//! The cluster commands: talk to a coordinator over gRPC (`submit`, `jobs`, `logs`, …) or
//! start a local one (`dev`).

pub mod checkpoints;
pub mod dev;
pub mod follow;
pub mod jobs;
pub mod submit;
pub mod workers;

use std::time::Duration;

use anyhow::{Result, anyhow};
use convoy_proto::v1::convoy_client::ConvoyClient;
use tonic::transport::{Channel, Endpoint};

use crate::common::normalize;

/// The default coordinator address, as `convoy-coordinator` listens by default.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

/// Connects to the coordinator, or says in one line why not.
pub async fn connect(addr: &str) -> Result<ConvoyClient<Channel>> {
    let url = normalize(addr);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow!("invalid coordinator address {addr:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3));
    let channel = endpoint.connect().await.map_err(|e| {
        let mut cause = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        anyhow!("cannot reach the coordinator at {url}: {cause} (set --coordinator or CONVOY_COORDINATOR)")
    })?;
    Ok(ConvoyClient::new(channel).max_decoding_message_size(64 << 20))
}

/// A gRPC error as one line: the coordinator's message (which names the ids involved).
pub fn rpc(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => anyhow!("the coordinator is unavailable: {}", status.message()),
        _ => anyhow!("{}", status.message()),
    }
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

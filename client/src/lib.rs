//! The one way every convoy program reaches a coordinator: the CLI, the worker daemon, a
//! rank and its checkpoint uploader all build their connections here, so they agree on the
//! address form, the default address, timeouts, keep-alives and message limits.
//!
//! Two ways to connect: [`connect`] for a command that talks to the coordinator now and
//! must say in one line why it cannot; [`connect_lazy`] for long-lived daemons and ranks,
//! which outlive coordinator restarts and reconnect on their own.

pub mod checkpoint;
mod leader;
pub mod submit;
pub mod tls;

use std::time::Duration;

use convoy_proto::v1::convoy_client::ConvoyClient;
use convoy_proto::v1::worker_api_client::WorkerApiClient;
pub use leader::{Channel, LEADER_HEADER, bearer};
use tonic::transport::Endpoint;

/// `host:port` of a coordinator with its default settings on this machine (a macro so that
/// both constants below are built from the one literal).
macro_rules! default_host_port {
    () => {
        "127.0.0.1:7070"
    };
}

/// Where `convoy-coordinator` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = default_host_port!();
/// Where clients look for the coordinator unless told otherwise (`--coordinator`,
/// `CONVOY_COORDINATOR`): [`DEFAULT_LISTEN`] as a URL.
pub const DEFAULT_ADDRESS: &str = concat!("http://", default_host_port!());

/// The largest gRPC message a client accepts (a listing of many jobs, a checkpoint chunk).
/// The coordinator's own limit on what it accepts is its `max_message_bytes`.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How long establishing a TCP connection may take before the coordinator counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on idle connections, so a coordinator that vanished without closing the
/// connection (a crashed machine, a cut network) is noticed by long-lived streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid coordinator address {addr:?}: {msg}")]
    InvalidAddress { addr: String, msg: String },
    #[error(
        "cannot reach the coordinator at {url}: {cause} (set --coordinator or CONVOY_COORDINATOR)"
    )]
    Unreachable { url: String, cause: String },
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Accepts `host:port` as well as `http://host:port`. Once [`tls::configure`] set TLS up,
/// every address means `https://` (also one stored as `http://` before the cluster had TLS).
pub fn url(addr: &str) -> String {
    let addr = addr.trim();
    let scheme = if tls::enabled() { "https" } else { "http" };
    match addr.strip_prefix("http://") {
        Some(rest) => format!("{scheme}://{rest}"),
        None if addr.contains("://") => addr.to_string(),
        None => format!("{scheme}://{addr}"),
    }
}

/// The endpoint every connection is made from.
pub fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    let url = url(addr);
    let https = url.starts_with("https://");
    let mut endpoint = Endpoint::from_shared(url).map_err(|e| ClientError::InvalidAddress {
        addr: addr.to_string(),
        msg: e.to_string(),
    })?;
    if https {
        endpoint = endpoint
            .tls_config(tls::client_config())
            .map_err(|e| tls::TlsError(e.to_string()))?;
    }
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The URLs of `addrs`: one coordinator's address, or the replicas' separated by commas.
pub fn urls(addrs: &str) -> Result<Vec<String>, ClientError> {
    let urls: Vec<String> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(url)
        .collect();
    if urls.is_empty() {
        return Err(ClientError::InvalidAddress {
            addr: addrs.to_string(),
            msg: "no address".into(),
        });
    }
    Ok(urls)
}

/// Connects now to the member of `addrs` that serves (the leader, as `grpc.health.v1` says),
/// else to the first that answers, or says in one line why none does (the deepest cause:
/// "Connection refused"). Calls then follow the leader (see [`Channel`]).
pub async fn connect(addrs: &str) -> Result<Channel, ClientError> {
    let urls = urls(addrs)?;
    let channel = Channel::lazy(&urls)?;
    let mut cause = String::new();
    let mut reachable = None;
    for (i, u) in urls.iter().enumerate() {
        // The TLS handshake too: a member that accepts TCP but never answers (a frozen
        // process) must not hold the command up.
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, endpoint(u)?.connect()).await;
        let Ok(connected) = connected else {
            cause = format!("no connection within {} s", CONNECT_TIMEOUT.as_secs());
            continue;
        };
        match connected {
            Ok(c) => {
                if urls.len() == 1 || serves(c.clone()).await {
                    channel.prefer(i, c);
                    return Ok(channel);
                }
                reachable.get_or_insert((i, c));
            }
            Err(e) => {
                cause = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    cause = s.to_string();
                    source = s.source();
                }
            }
        }
    }
    if let Some((i, c)) = reachable {
        // No member says it serves (an election is under way): calls will say so, or find
        // the leader once there is one.
        channel.prefer(i, c);
        return Ok(channel);
    }
    Err(ClientError::Unreachable {
        url: urls.join(","),
        cause,
    })
}

/// Whether the coordinator on `channel` serves the client API (a replica that is not the
/// leader reports `NOT_SERVING`).
async fn serves(channel: tonic::transport::Channel) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = health.check(HealthCheckRequest {
        service: "convoy.v1.Convoy".into(),
    });
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// A channel that connects on first use and again after every failure, following the
/// leader among `addrs`. Must be called inside a tokio runtime: the channels' background
/// tasks run there.
pub fn connect_lazy(addrs: &str) -> Result<Channel, ClientError> {
    Channel::lazy(&urls(addrs)?)
}

/// The client API (`convoy.v1.Convoy`) over `channel`.
pub fn client_api(channel: Channel) -> ConvoyClient<Channel> {
    ConvoyClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// The worker API (`convoy.v1.WorkerApi`) over `channel`.
pub fn worker_api(channel: Channel) -> WorkerApiClient<Channel> {
    WorkerApiClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// A gRPC error as one line: the coordinator's message, which names the ids involved; for a
/// failure of the connection itself, its deepest cause too.
pub fn one_line(status: &tonic::Status) -> String {
    let mut msg = status.message().to_string();
    let mut source = std::error::Error::source(status);
    let mut cause = None;
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    if let Some(cause) = cause.filter(|c| *c != msg) {
        msg = format!("{msg}: {cause}");
        if !tls::enabled() {
            msg.push_str(" (if the coordinator serves TLS, set CONVOY_TLS_CA to its CA)");
        }
    }
    match status.code() {
        tonic::Code::Unavailable => format!("the coordinator is unavailable: {msg}"),
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_urls_are_both_accepted() {
        assert_eq!(url("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(url("http://h:1"), "http://h:1");
        assert_eq!(url(" https://h:1 "), "https://h:1");
        assert_eq!(url(DEFAULT_LISTEN), DEFAULT_ADDRESS);
    }

    #[test]
    fn a_bad_address_is_one_line_naming_it() {
        let e = endpoint("http://[::1").expect_err("not a URI");
        let msg = e.to_string();
        assert!(
            msg.starts_with("invalid coordinator address \"http://[::1\""),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_names_the_address_and_the_cause() {
        // A port nobody listens on: bind one, note it, free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let e = connect(&format!("127.0.0.1:{port}"))
            .await
            .expect_err("nothing listens");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach the coordinator at http://127.0.0.1:{port}: "
            )),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }
}

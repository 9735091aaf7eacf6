//! What the three binaries share: the coordinator address form, logging setup and shutdown
//! signals for the daemons.
#![allow(dead_code)] // each binary uses a part

/// Accepts `host:port` as well as `http://host:port`.
pub fn normalize(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Daemon logs on stderr (journald under systemd); `RUST_LOG` filters, `info` by default.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on the first SIGTERM (systemd, `convoy dev`) or SIGINT (Ctrl-C).
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the daemon can still be stopped with SIGKILL.
        _ => std::future::pending().await,
    }
}

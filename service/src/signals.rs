//! The signals that stop a daemon.

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

//! Fail-stop: a storage failure the coordinator cannot recover from in-process ends it.
//!
//! After an I/O error (a full disk, a failing device) sled refuses further work, and a
//! coordinator that went on would accept requests it cannot make durable, or hang flushing in
//! a destructor. Everything acknowledged is already durable, so stopping at once loses
//! nothing: the daemon ([`FailStop::exiting`]) prints one line naming the store and the error
//! and exits with status 1 without running destructors, and systemd's `Restart=on-failure`
//! starts it again. Embedded in a test, the server shuts down instead and `run` returns the
//! error.

use std::fmt::Display;

use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct FailStop {
    exit: bool,
    tripped: watch::Sender<Option<String>>,
}

impl FailStop {
    /// Exits the process on a failure (the daemon).
    pub fn exiting() -> FailStop {
        FailStop::new(true)
    }

    /// Shuts the server down on a failure and lets `run` return it (an embedded server).
    pub fn returning() -> FailStop {
        FailStop::new(false)
    }

    fn new(exit: bool) -> FailStop {
        FailStop {
            exit,
            tripped: watch::channel(None).0,
        }
    }

    /// Stops the coordinator because `store` failed with `error`.
    pub fn fail(&self, store: &str, error: &dyn Display) {
        self.stop(format!("{store} failed, stopping: {error}"));
    }

    /// Stops the coordinator, saying why in `line`.
    pub fn stop(&self, line: String) {
        if self.exit {
            eprintln!("convoy-coordinator: {line}");
            std::process::exit(1);
        }
        tracing::error!("{line}");
        self.tripped.send_if_modified(|t| {
            let first = t.is_none();
            if first {
                *t = Some(line);
            }
            first
        });
    }

    /// The first failure, once there is one.
    pub fn failure(&self) -> Option<String> {
        self.tripped.borrow().clone()
    }

    /// Resolves once a failure happened.
    pub async fn tripped(&self) {
        let mut rx = self.tripped.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }
}

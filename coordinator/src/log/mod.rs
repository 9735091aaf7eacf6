//! The durable command log: commands are appended (durably) before they are applied, and the
//! state is rebuilt from the latest snapshot plus the commands after it.
//!
//! [`CommandLog`] is the seam between storage and the state machine: [`SledLog`] implements it
//! on one machine, and a Raft log can implement it without any change to
//! [`crate::state`]. Records are enveloped and checksummed in [`codec`].

pub mod codec;
mod mark;
mod sled_log;

pub use mark::{Mark, MarkFile};
pub use sled_log::SledLog;

use crate::error::StoreError;
use crate::state::{ClusterConfig, ClusterState, Command};

/// Log indices start at 1; 0 means "nothing yet".
pub type Index = u64;

/// An ordered, durable sequence of commands with snapshots of the state they produce.
pub trait CommandLog {
    /// Appends `cmd` durably (it survives a crash once this returns) and returns its index.
    fn append(&mut self, cmd: &Command) -> Result<Index, StoreError>;
    /// Appends `cmds` in order, durable together when this returns (one flush for the batch:
    /// group commit). Returns the index of the last one.
    fn append_all(&mut self, cmds: &[Command]) -> Result<Index, StoreError> {
        let mut last = self.last_index()?;
        for cmd in cmds {
            last = self.append(cmd)?;
        }
        Ok(last)
    }
    /// The commands after `index`, in order, with their indices.
    fn read_after(&self, index: Index) -> Result<Vec<(Index, Command)>, StoreError>;
    /// The index of the last command appended (or covered by the snapshot); 0 when empty.
    fn last_index(&self) -> Result<Index, StoreError>;
    /// Durably stores `state` as the result of applying every command up to `index`; entries
    /// up to `index` may then be discarded.
    fn save_snapshot(&mut self, index: Index, state: &ClusterState) -> Result<(), StoreError>;
    /// The latest snapshot and its index, if any.
    fn load_snapshot(&self) -> Result<Option<(Index, ClusterState)>, StoreError>;
    /// Durably records what has been acknowledged, apart from the entries (see [`Mark`]).
    fn save_mark(&mut self, mark: Mark) -> Result<(), StoreError>;
    /// The newest mark saved, as read at open; `None` for a new log.
    fn mark(&self) -> Option<Mark>;
    /// Where the log is, for messages.
    fn location(&self) -> String;
}

/// Rebuilds the state: the latest snapshot (or an empty state with `config`; a snapshot's own
/// config wins, since it is replicated state) plus every command after it. Commands the state
/// machine rejects are skipped: they were rejected when first applied too, and a rejected
/// command changes nothing, so skipping them reproduces the original state exactly.
pub fn recover<L: CommandLog + ?Sized>(
    log: &L,
    config: ClusterConfig,
) -> Result<(ClusterState, Index), StoreError> {
    let (mut index, mut state) = match log.load_snapshot()? {
        Some((i, s)) => (i, s),
        None => (0, ClusterState::new(config)),
    };
    for (i, cmd) in log.read_after(index)? {
        if i != index + 1 {
            return Err(StoreError::Invalid(format!(
                "entry {} follows entry {index}: the log has a gap",
                i
            )));
        }
        // Rejections are expected here (see above); effects were carried out before the crash
        // or will be re-derived by the I/O loop from the recovered state.
        let _ = state.apply(&cmd);
        index = i;
    }
    check_mark(log, &state, index)?;
    Ok((state, index))
}

/// Refuses a recovered state that holds less than the log's mark says was acknowledged.
fn check_mark<L: CommandLog + ?Sized>(
    log: &L,
    state: &ClusterState,
    index: Index,
) -> Result<(), StoreError> {
    let Some(mark) = log.mark() else {
        return Ok(());
    };
    let lost = |msg: String| StoreError::RolledBack {
        location: log.location(),
        msg,
    };
    if index < mark.index {
        return Err(lost(format!(
            "it ends at entry {index}, but entry {} was acknowledged",
            mark.index
        )));
    }
    if state.jobs_issued() < mark.jobs_issued {
        return Err(lost(format!(
            "its state has issued {} job ids, but {} were acknowledged",
            state.jobs_issued(),
            mark.jobs_issued
        )));
    }
    Ok(())
}

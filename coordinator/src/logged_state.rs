//! [`LoggedState`]: the state machine bound to a command log — log first, then apply.
//!
//! This is the seam the I/O loop drives (and that Raft will replace: with Raft, `append`
//! becomes "propose and wait for commit"). It owns no sockets and reads no clock.

use crate::error::{ApplyError, CoordinatorError, StoreError};
use crate::log::{CommandLog, Index, Mark, recover};
use crate::state::{ClusterConfig, ClusterState, Command, Effect};

pub struct LoggedState<L: CommandLog> {
    state: ClusterState,
    log: L,
    applied: Index,
    snapshot_index: Index,
    /// A snapshot is written after this many commands since the last one (0: never).
    snapshot_every: u64,
}

impl<L: CommandLog> LoggedState<L> {
    /// Recovers the state held in `log` (empty with `config` when the log is new).
    pub fn open(
        log: L,
        config: ClusterConfig,
        snapshot_every: u64,
    ) -> Result<Self, CoordinatorError> {
        let (state, applied) = recover(&log, config)?;
        let snapshot_index = log.load_snapshot()?.map_or(0, |(i, _)| i);
        Ok(LoggedState {
            state,
            log,
            applied,
            snapshot_index,
            snapshot_every,
        })
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The index of the last command applied.
    pub fn applied(&self) -> Index {
        self.applied
    }

    /// Logs `cmd` durably, then applies it. A command the state machine rejects stays in the
    /// log (replay rejects it again, changing nothing) and its error is returned.
    pub fn execute(&mut self, cmd: &Command) -> Result<Vec<Effect>, CoordinatorError> {
        let index = self.log.append(cmd)?;
        let result = self.state.apply(cmd);
        self.applied = index;
        self.acknowledge()?;
        self.maybe_snapshot()?;
        Ok(result?)
    }

    /// Logs every command of `cmds` durably with one flush (group commit), then applies them in
    /// order; one result per command. This is what keeps submissions fast: the I/O loop
    /// gathers the requests that arrived while it was busy and pays for one flush.
    pub fn execute_all(
        &mut self,
        cmds: &[Command],
    ) -> Result<Vec<Result<Vec<Effect>, ApplyError>>, StoreError> {
        if cmds.is_empty() {
            return Ok(vec![]);
        }
        let last = self.log.append_all(cmds)?;
        let results = cmds.iter().map(|c| self.state.apply(c)).collect();
        self.applied = last;
        self.acknowledge()?;
        self.maybe_snapshot()?;
        Ok(results)
    }

    /// Records what the caller is about to acknowledge (see [`Mark`]).
    fn acknowledge(&mut self) -> Result<(), StoreError> {
        self.log.save_mark(Mark {
            index: self.applied,
            jobs_issued: self.state.jobs_issued(),
        })
    }

    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        if self.snapshot_every > 0 && self.applied - self.snapshot_index >= self.snapshot_every {
            self.log.save_snapshot(self.applied, &self.state)?;
            self.snapshot_index = self.applied;
        }
        Ok(())
    }

    /// Writes a snapshot of the current state now.
    pub fn snapshot(&mut self) -> Result<(), StoreError> {
        self.log.save_snapshot(self.applied, &self.state)?;
        self.snapshot_index = self.applied;
        Ok(())
    }
}

//! The cluster state machine: [`ClusterState::apply`] of a [`Command`] → [`Effect`]s.
//!
//! `apply` is deterministic and does no I/O: the same commands in the same order give the same
//! state and effects, so the state can be rebuilt from a log (see [`crate::log`]) and, later,
//! replicated through Raft. Time enters only through the `now` fields of commands. Every
//! command is validated before anything changes, so a rejected command leaves the state as it
//! was. Effects are what the I/O loop must carry out (launch or stop ranks, notify clients);
//! the scheduler ([`crate::scheduler`]) decides placements, which come back as
//! [`Command::StartAttempt`].

use std::collections::BTreeMap;

use convoy_spec::{Backend, JobSpec, SpecError};
use serde::{Deserialize, Serialize};

use crate::error::ApplyError;
use crate::identity::{ApiToken, Identities};
use crate::model::{
    Attempt, AttemptOutcome, Cordon, Job, JobId, JobState, Liveness, Millis, Progress, RankExit,
    Retention, Usage, Worker, WorkerId,
};

/// Settings of the state machine. They are part of the state (and its snapshots) because they
/// change what `apply` does: replicas must agree on them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// A worker not heard from for longer than this is lost at the next tick.
    pub heartbeat_timeout: Millis,
    /// Rank failures in a row on one worker after which it is cordoned automatically.
    pub auto_cordon_after: u32,
    /// How long a job whose rank failed waits before it is placed again. When a worker dies,
    /// its peers' ranks fail at once (their connections break) while the worker is declared
    /// lost only after the heartbeat timeout; without this hold the restart would land on the
    /// dead worker and waste an attempt. Equal to the heartbeat timeout by default; the tick
    /// that declares the dead worker lost may come a little after the hold ends, which the
    /// scheduler covers by placing nothing on a silent worker ([`crate::model::Worker::silent`]).
    pub restart_delay: Millis,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat_timeout: 5_000,
            auto_cordon_after: 3,
            restart_delay: 5_000,
        }
    }
}

/// A job submission, validated. The API handler parses the spec once ([`SubmitJob::parse`]);
/// the command carries what the cluster needs from it beside the text the ranks get, so that
/// `apply` (and replaying the log, in any later release) never parses a spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitJob {
    /// Chosen by the client once per submission and sent again by its retries: a submission
    /// whose id the cluster already holds returns the job it created instead of a second one.
    /// Empty: no deduplication.
    #[serde(default)]
    pub request_id: String,
    /// The spec's `name`.
    pub name: String,
    pub steps: u64,
    pub world_size: usize,
    pub backend: Backend,
    pub retention: Retention,
    /// The spec's `init_from`, if any.
    pub init_from: Option<String>,
    /// The spec (TOML) as submitted.
    pub spec_text: String,
    pub priority: i32,
    pub max_restarts: u32,
    pub progress_timeout: Option<Millis>,
    /// The directory the spec's relative paths are relative to (where the client read the spec
    /// file; ranks resolve data paths against it, as Slurm's `--chdir` does). Empty: the rank's
    /// own working directory.
    pub workdir: String,
    /// The user submitting (empty: before convoy had users, or without authentication).
    #[serde(default)]
    pub owner: String,
    pub now: Millis,
}

impl SubmitJob {
    /// Priority 0 and the default retry and timeout policy.
    pub const DEFAULT_MAX_RESTARTS: u32 = 2;
    /// Ten minutes: long enough for data loading and a slow first step.
    pub const DEFAULT_PROGRESS_TIMEOUT: Millis = 10 * 60 * 1000;

    /// Validates `spec_text` (`origin` names it in errors) into a submission with the default
    /// options.
    pub fn parse(spec_text: &str, origin: &str, now: Millis) -> Result<Self, SpecError> {
        Ok(Self::from_spec(
            &JobSpec::parse(spec_text, origin)?,
            spec_text,
            now,
        ))
    }

    /// The submission of `spec`, parsed from `spec_text`, with the default options.
    pub fn from_spec(spec: &JobSpec, spec_text: &str, now: Millis) -> Self {
        let c = &spec.checkpoint;
        SubmitJob {
            request_id: String::new(),
            name: spec.name.clone(),
            steps: spec.steps,
            world_size: spec.world_size,
            backend: spec.backend,
            retention: Retention {
                keep_last: c.keep_last,
                keep_best: c.keep_best,
                best_metric: c.best_metric.clone(),
                minimize: true,
            },
            init_from: spec.init_from.clone(),
            spec_text: spec_text.to_string(),
            priority: 0,
            max_restarts: Self::DEFAULT_MAX_RESTARTS,
            progress_timeout: Some(Self::DEFAULT_PROGRESS_TIMEOUT),
            workdir: String::new(),
            owner: String::new(),
            now,
        }
    }
}

/// Everything that changes the cluster state. Serializable: this is what the log stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    SubmitJob(SubmitJob),
    CancelJob {
        job: JobId,
        now: Millis,
    },
    /// A worker daemon announcing itself. A name already alive is rejected unless `instance`
    /// matches (the same daemon reconnecting after a coordinator restart or a network break);
    /// the name of a lost worker re-registers it under its old id.
    RegisterWorker {
        name: String,
        slots: u32,
        gpus: u32,
        /// Chosen by the daemon once per process start.
        instance: String,
        now: Millis,
    },
    Heartbeat {
        worker: WorkerId,
        now: Millis,
    },
    Cordon {
        worker: WorkerId,
    },
    Uncordon {
        worker: WorkerId,
    },
    /// A placement the scheduler decided: `placement[rank]` runs that rank.
    StartAttempt {
        job: JobId,
        generation: u64,
        placement: Vec<WorkerId>,
        now: Millis,
    },
    ReportProgress {
        job: JobId,
        generation: u64,
        step: u64,
        now: Millis,
    },
    ReportRankExit {
        job: JobId,
        generation: u64,
        rank: usize,
        exit: RankExit,
        now: Millis,
    },
    /// The passage of time: loses silent workers and stalled jobs.
    Tick {
        now: Millis,
    },
    /// Queues a failed or cancelled job again with a fresh restart budget; its ranks continue
    /// from the job's latest checkpoint.
    ResumeJob {
        job: JobId,
    },
    /// Replaces the cluster's settings (the coordinator was started with other values than
    /// those stored).
    Configure(ClusterConfig),
    /// Forgets a finished job (its id is never reused).
    DeleteJob {
        job: JobId,
    },
    /// An administrator created an API token (its secret is not in here, only its hash).
    CreateToken(ApiToken),
    RevokeToken {
        id: String,
    },
    /// The first serving coordinator chose the key machine credentials derive from.
    SetCredentialKey {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl Command {
    /// The time the command was stamped with, if it carries one. A replicated log's leader
    /// keeps these from going backwards across leaders (see the event loop's clock).
    pub fn now(&self) -> Option<Millis> {
        match self {
            Command::SubmitJob(s) => Some(s.now),
            Command::CancelJob { now, .. }
            | Command::RegisterWorker { now, .. }
            | Command::Heartbeat { now, .. }
            | Command::StartAttempt { now, .. }
            | Command::ReportProgress { now, .. }
            | Command::ReportRankExit { now, .. }
            | Command::Tick { now } => Some(*now),
            Command::Cordon { .. }
            | Command::Uncordon { .. }
            | Command::ResumeJob { .. }
            | Command::Configure(_)
            | Command::DeleteJob { .. }
            | Command::RevokeToken { .. }
            | Command::SetCredentialKey { .. } => None,
            Command::CreateToken(t) => Some(t.created_at),
        }
    }
}

/// What the I/O loop must do after a command was applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// The submission was accepted under this id (reply to the client).
    JobSubmitted {
        job: JobId,
    },
    /// The registration was accepted under this id (reply to the daemon).
    WorkerRegistered {
        worker: WorkerId,
    },
    /// Tell each worker of the placement to launch its ranks of this generation.
    LaunchRanks {
        job: JobId,
        generation: u64,
        placement: Vec<WorkerId>,
    },
    /// Tell these workers to kill their ranks of this generation (the whole gang goes when one
    /// rank is lost, because data-parallel ranks cannot continue without a peer).
    StopRanks {
        job: JobId,
        generation: u64,
        workers: Vec<WorkerId>,
    },
    /// The attempt failed and the job went back to the queue.
    JobRequeued {
        job: JobId,
        generation: u64,
        reason: String,
    },
    /// The job reached a final state.
    JobFinished {
        job: JobId,
        state: JobState,
    },
    WorkerLost {
        worker: WorkerId,
    },
    WorkerCordoned {
        worker: WorkerId,
        reason: Cordon,
    },
    /// The job is gone from the state; its records and checkpoints may be removed.
    JobDeleted {
        job: JobId,
    },
}

/// Whether a failed attempt's job may run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// If it has attempts left, no earlier than this long from now.
    After(Millis),
    /// No: the job itself is at fault.
    No,
}

/// The whole replicated state of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub config: ClusterConfig,
    pub jobs: BTreeMap<JobId, Job>,
    pub workers: BTreeMap<WorkerId, Worker>,
    /// The job each client request id created (see [`SubmitJob::request_id`]).
    #[serde(default)]
    pub requests: BTreeMap<String, JobId>,
    next_job: u64,
    next_worker: u64,
    /// The latest time an accepted command carried. A replicated log's new leader stamps
    /// nothing earlier, so time never goes backwards in the state, whatever the clocks of
    /// the machines that led.
    #[serde(default)]
    pub clock: Millis,
    /// API tokens and the cluster key (see [`crate::identity`]).
    #[serde(default)]
    pub identities: Identities,
}

impl ClusterState {
    pub fn new(config: ClusterConfig) -> Self {
        ClusterState {
            config,
            ..ClusterState::default()
        }
    }

    /// Job ids issued so far: the highest id (ids are never reused, even for removed jobs).
    pub fn jobs_issued(&self) -> u64 {
        self.next_job
    }

    pub fn job(&self, id: JobId) -> Result<&Job, ApplyError> {
        self.jobs.get(&id).ok_or(ApplyError::UnknownJob(id))
    }

    pub fn worker(&self, id: WorkerId) -> Result<&Worker, ApplyError> {
        self.workers.get(&id).ok_or(ApplyError::UnknownWorker(id))
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut Job, ApplyError> {
        self.jobs.get_mut(&id).ok_or(ApplyError::UnknownJob(id))
    }

    fn worker_mut(&mut self, id: WorkerId) -> Result<&mut Worker, ApplyError> {
        self.workers
            .get_mut(&id)
            .ok_or(ApplyError::UnknownWorker(id))
    }

    /// Slots and GPUs held on each worker by live attempts. A rank holds its slot until its
    /// whole attempt ends, even after it exited, because a gang is placed and freed as one.
    pub fn usage(&self) -> BTreeMap<WorkerId, Usage> {
        let mut usage: BTreeMap<WorkerId, Usage> = BTreeMap::new();
        for job in self.jobs.values() {
            if let Some(attempt) = job.live_attempt() {
                for w in &attempt.placement {
                    usage.entry(*w).or_default().add(job.backend, 1);
                }
            }
        }
        usage
    }

    /// Applies one command. Deterministic, no I/O; on `Err` the state is unchanged.
    pub fn apply(&mut self, cmd: &Command) -> Result<Vec<Effect>, ApplyError> {
        let effects = self.apply_inner(cmd)?;
        if let Some(t) = cmd.now() {
            self.clock = self.clock.max(t);
        }
        if matches!(
            cmd,
            Command::CreateToken(_)
                | Command::RevokeToken { .. }
                | Command::SetCredentialKey { .. }
                | Command::RegisterWorker { .. }
        ) {
            self.identities.epoch += 1;
        }
        Ok(effects)
    }

    fn apply_inner(&mut self, cmd: &Command) -> Result<Vec<Effect>, ApplyError> {
        match cmd {
            Command::SubmitJob(s) => self.submit(s),
            Command::CancelJob { job, now } => self.cancel(*job, *now),
            Command::ResumeJob { job } => self.resume(*job),
            Command::DeleteJob { job } => self.delete(*job),
            Command::RegisterWorker {
                name,
                slots,
                gpus,
                instance,
                now,
            } => self.register(name, *slots, *gpus, instance, *now),
            Command::Heartbeat { worker, now } => {
                let w = self.worker_mut(*worker)?;
                if w.liveness == Liveness::Lost {
                    return Err(ApplyError::WorkerLost { worker: *worker });
                }
                w.last_heartbeat = w.last_heartbeat.max(*now);
                Ok(vec![])
            }
            Command::Cordon { worker } => {
                let w = self.worker_mut(*worker)?;
                // Idempotent; an automatic cordon becomes the operator's.
                if w.cordon == Some(Cordon::Operator) {
                    return Ok(vec![]);
                }
                w.cordon = Some(Cordon::Operator);
                Ok(vec![Effect::WorkerCordoned {
                    worker: *worker,
                    reason: Cordon::Operator,
                }])
            }
            Command::Uncordon { worker } => {
                let w = self.worker_mut(*worker)?;
                w.cordon = None;
                // The operator vouches for the machine: start its failure streak afresh, or one
                // more failure would cordon it again at once.
                w.consecutive_failures = 0;
                Ok(vec![])
            }
            Command::StartAttempt {
                job,
                generation,
                placement,
                now,
            } => self.start_attempt(*job, *generation, placement, *now),
            Command::ReportProgress {
                job,
                generation,
                step,
                now,
            } => {
                self.check_live_generation(*job, *generation)?;
                let j = self.job_mut(*job)?;
                j.last_progress = Some(Progress {
                    generation: *generation,
                    step: *step,
                    at: *now,
                });
                Ok(vec![])
            }
            Command::ReportRankExit {
                job,
                generation,
                rank,
                exit,
                now,
            } => self.rank_exit(*job, *generation, *rank, exit, *now),
            Command::Tick { now } => Ok(self.tick(*now)),
            Command::CreateToken(token) => {
                self.identities.create(token)?;
                Ok(vec![])
            }
            Command::RevokeToken { id } => {
                self.identities.revoke(id)?;
                Ok(vec![])
            }
            Command::SetCredentialKey { key } => {
                self.identities.set_key(key)?;
                Ok(vec![])
            }
            Command::Configure(config) => {
                if config.heartbeat_timeout == 0 {
                    return Err(ApplyError::InvalidConfig(
                        "heartbeat_timeout = 0 ms: every worker would be lost at once".into(),
                    ));
                }
                self.config = config.clone();
                Ok(vec![])
            }
        }
    }

    fn submit(&mut self, s: &SubmitJob) -> Result<Vec<Effect>, ApplyError> {
        if let Some(&id) = self.requests.get(&s.request_id) {
            // A retry of a submission that was committed but whose answer was lost.
            let job = self.job(id)?;
            if job.spec_text != s.spec_text || job.owner != s.owner {
                return Err(ApplyError::RequestReused {
                    request_id: s.request_id.clone(),
                    job: id,
                });
            }
            return Ok(vec![Effect::JobSubmitted { job: id }]);
        }
        if s.progress_timeout == Some(0) {
            return Err(ApplyError::InvalidSubmit(
                "progress_timeout = 0 ms: must be positive (or none to disable)".into(),
            ));
        }
        if s.world_size == 0 {
            return Err(ApplyError::InvalidSubmit("world_size = 0".into()));
        }
        self.next_job += 1;
        let id = JobId(self.next_job);
        if !s.request_id.is_empty() {
            self.requests.insert(s.request_id.clone(), id);
        }
        self.jobs.insert(
            id,
            Job {
                id,
                name: s.name.clone(),
                spec_text: s.spec_text.clone(),
                request_id: s.request_id.clone(),
                retention: s.retention.clone(),
                init_from: s.init_from.clone(),
                steps: s.steps,
                world_size: s.world_size,
                backend: s.backend,
                priority: s.priority,
                seq: self.next_job,
                submitted_at: s.now,
                state: JobState::Queued,
                max_restarts: s.max_restarts,
                progress_timeout: s.progress_timeout,
                workdir: s.workdir.clone(),
                owner: s.owner.clone(),
                attempts: vec![],
                last_progress: None,
                not_before: 0,
                resumed_after: 0,
            },
        );
        Ok(vec![Effect::JobSubmitted { job: id }])
    }

    fn resume(&mut self, id: JobId) -> Result<Vec<Effect>, ApplyError> {
        let job = self.job_mut(id)?;
        if !matches!(job.state, JobState::Failed { .. } | JobState::Cancelled) {
            return Err(ApplyError::NotResumable {
                job: id,
                state: job.state.clone(),
            });
        }
        job.state = JobState::Queued;
        job.not_before = 0;
        job.resumed_after = job.attempts.len();
        Ok(vec![Effect::JobRequeued {
            job: id,
            generation: job.attempts.last().map_or(0, |a| a.generation),
            reason: "resumed".into(),
        }])
    }

    fn delete(&mut self, id: JobId) -> Result<Vec<Effect>, ApplyError> {
        let job = self.job(id)?;
        if !job.state.is_final() {
            return Err(ApplyError::NotFinished {
                job: id,
                state: job.state.clone(),
            });
        }
        let request_id = job.request_id.clone();
        self.jobs.remove(&id);
        self.requests.remove(&request_id);
        Ok(vec![Effect::JobDeleted { job: id }])
    }

    fn cancel(&mut self, id: JobId, now: Millis) -> Result<Vec<Effect>, ApplyError> {
        let job = self.job_mut(id)?;
        if job.state.is_final() {
            return Err(ApplyError::JobAlreadyFinished {
                job: id,
                state: job.state.clone(),
            });
        }
        let mut effects = vec![];
        let live = if job.state == JobState::Running {
            job.attempts.last_mut().filter(|a| a.is_live())
        } else {
            None
        };
        if let Some(attempt) = live {
            attempt.ended_at = Some(now);
            attempt.outcome = Some(AttemptOutcome::Cancelled);
            let generation = attempt.generation;
            let workers = attempt.workers_with_running_ranks();
            let workers = self.alive_only(workers);
            if !workers.is_empty() {
                effects.push(Effect::StopRanks {
                    job: id,
                    generation,
                    workers,
                });
            }
        }
        let job = self.job_mut(id)?;
        job.state = JobState::Cancelled;
        effects.push(Effect::JobFinished {
            job: id,
            state: JobState::Cancelled,
        });
        Ok(effects)
    }

    fn register(
        &mut self,
        name: &str,
        slots: u32,
        gpus: u32,
        instance: &str,
        now: Millis,
    ) -> Result<Vec<Effect>, ApplyError> {
        if name.trim().is_empty() {
            return Err(ApplyError::InvalidWorker {
                name: name.into(),
                msg: "the name must not be empty".into(),
            });
        }
        // A host name's bounds: it shows in every listing and failure reason.
        if name.len() > 253 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApplyError::InvalidWorker {
                name: name.into(),
                msg: "at most 253 characters, without spaces or control characters".into(),
            });
        }
        if slots == 0 {
            return Err(ApplyError::InvalidWorker {
                name: name.into(),
                msg: "slots = 0: a worker needs at least one slot".into(),
            });
        }
        if let Some(w) = self.workers.values_mut().find(|w| w.name == name) {
            if w.liveness == Liveness::Alive && w.instance != instance {
                return Err(ApplyError::DuplicateWorker {
                    name: name.into(),
                    id: w.id,
                });
            }
            // The same process reconnecting cannot have changed its resources; accepting a
            // change here could leave its running ranks over-committing it.
            if w.liveness == Liveness::Alive && (w.slots != slots || w.gpus != gpus) {
                return Err(ApplyError::InvalidWorker {
                    name: name.into(),
                    msg: format!(
                        "reconnected with {slots} slots and {gpus} GPUs; it registered {} and {}",
                        w.slots, w.gpus
                    ),
                });
            }
            // The same daemon reconnecting, or a lost worker coming back: same id, fresh
            // resources; a cordon and the failure streak stay, since they are about the
            // machine, not the connection.
            w.liveness = Liveness::Alive;
            w.instance = instance.into();
            w.slots = slots;
            w.gpus = gpus;
            w.registered_at = now;
            w.last_heartbeat = now;
            return Ok(vec![Effect::WorkerRegistered { worker: w.id }]);
        }
        self.next_worker += 1;
        let id = WorkerId(self.next_worker);
        self.workers.insert(
            id,
            Worker {
                id,
                name: name.into(),
                slots,
                gpus,
                liveness: Liveness::Alive,
                cordon: None,
                instance: instance.into(),
                registered_at: now,
                last_heartbeat: now,
                consecutive_failures: 0,
            },
        );
        Ok(vec![Effect::WorkerRegistered { worker: id }])
    }

    fn start_attempt(
        &mut self,
        id: JobId,
        generation: u64,
        placement: &[WorkerId],
        now: Millis,
    ) -> Result<Vec<Effect>, ApplyError> {
        let job = self.job(id)?;
        if job.state != JobState::Queued {
            return Err(ApplyError::JobNotQueued {
                job: id,
                state: job.state.clone(),
            });
        }
        if now < job.not_before {
            return Err(ApplyError::Held {
                job: id,
                until: job.not_before,
            });
        }
        let expected = job.next_generation();
        if generation != expected {
            return Err(ApplyError::WrongGeneration {
                job: id,
                got: generation,
                expected,
            });
        }
        if placement.len() != job.world_size {
            return Err(ApplyError::BadPlacement {
                job: id,
                msg: format!(
                    "{} ranks placed; the job's world size is {}",
                    placement.len(),
                    job.world_size
                ),
            });
        }
        let mut wanted: BTreeMap<WorkerId, u32> = BTreeMap::new();
        for w in placement {
            *wanted.entry(*w).or_default() += 1;
        }
        let usage = self.usage();
        for (wid, ranks) in &wanted {
            let w = self.worker(*wid)?;
            if !w.schedulable() {
                return Err(ApplyError::BadPlacement {
                    job: id,
                    msg: format!("{wid} ({}) is lost or cordoned", w.name),
                });
            }
            let free = usage
                .get(wid)
                .copied()
                .unwrap_or_default()
                .free_for(w, job.backend);
            if *ranks > free {
                return Err(ApplyError::BadPlacement {
                    job: id,
                    msg: format!("{ranks} ranks on {wid} ({}), which has {free} free", w.name),
                });
            }
        }
        let job = self.job_mut(id)?;
        job.attempts.push(Attempt {
            generation,
            placement: placement.to_vec(),
            started_at: now,
            ended_at: None,
            outcome: None,
            exits: BTreeMap::new(),
        });
        job.state = JobState::Running;
        Ok(vec![Effect::LaunchRanks {
            job: id,
            generation,
            placement: placement.to_vec(),
        }])
    }

    /// Checks that `generation` is the job's running attempt.
    pub fn check_live_generation(
        &self,
        id: JobId,
        generation: u64,
    ) -> Result<&Attempt, ApplyError> {
        let job = self.job(id)?;
        let Some(last) = job.attempts.last() else {
            return Err(ApplyError::JobNotRunning {
                job: id,
                state: job.state.clone(),
            });
        };
        if generation != last.generation {
            return Err(ApplyError::StaleGeneration {
                job: id,
                got: generation,
                current: last.generation,
            });
        }
        if !last.is_live() {
            return Err(ApplyError::AttemptEnded {
                job: id,
                generation,
            });
        }
        Ok(last)
    }

    fn rank_exit(
        &mut self,
        id: JobId,
        generation: u64,
        rank: usize,
        exit: &RankExit,
        now: Millis,
    ) -> Result<Vec<Effect>, ApplyError> {
        let attempt = self.check_live_generation(id, generation)?;
        if rank >= attempt.placement.len() {
            return Err(ApplyError::RankOutOfRange {
                job: id,
                generation,
                rank,
                world_size: attempt.placement.len(),
            });
        }
        if attempt.exits.contains_key(&rank) {
            return Err(ApplyError::DuplicateExit {
                job: id,
                generation,
                rank,
            });
        }
        let wid = attempt.placement[rank];
        let mut effects = vec![];
        let job = self.job_mut(id)?;
        let world_size = job.world_size;
        let Some(attempt) = job.attempts.last_mut() else {
            return Ok(effects); // unreachable: checked above
        };
        attempt.exits.insert(rank, exit.clone());
        match exit {
            RankExit::Success => {
                if attempt.exits.len() == world_size
                    && attempt.exits.values().all(|e| *e == RankExit::Success)
                {
                    attempt.ended_at = Some(now);
                    attempt.outcome = Some(AttemptOutcome::Succeeded);
                    // Every rank ran every step; progress is logged only now and then, so the
                    // last one logged may be older.
                    job.last_progress = Some(Progress {
                        generation,
                        step: job.steps,
                        at: now,
                    });
                    job.state = JobState::Succeeded;
                    effects.push(Effect::JobFinished {
                        job: id,
                        state: JobState::Succeeded,
                    });
                }
                if let Ok(w) = self.worker_mut(wid) {
                    w.consecutive_failures = 0;
                }
            }
            RankExit::Failure { status, log_tail } => {
                let name = self.workers.get(&wid).map_or("?", |w| w.name.as_str());
                // The reason is one line: the rank's last words (normally its error line);
                // the whole tail stays in the rank's exit record.
                let tail = log_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                let reason = if tail.is_empty() {
                    format!("rank {rank} on {wid} ({name}) exited with status {status}")
                } else {
                    format!("rank {rank} on {wid} ({name}) exited with status {status}: {tail}")
                };
                // The job's own fault (see `EXIT_JOB_ERROR`) fails it at once and says
                // nothing about the worker; anything else counts against the worker.
                if *status == i32::from(convoy_service::EXIT_JOB_ERROR) {
                    let reason = format!("{reason} (an error of the job: not retried)");
                    effects.extend(self.fail_attempt(id, now, reason, Retry::No));
                    return Ok(effects);
                }
                // A rank whose peer failed is the messenger: the peer's worker is charged
                // (by its own rank's exit, or by its loss), not this one.
                let reason = if *status == i32::from(convoy_service::EXIT_PEER_FAILED) {
                    format!("{reason} (a peer failed; {wid} is not blamed)")
                } else {
                    effects.extend(self.charge(wid));
                    reason
                };
                let hold = self.config.restart_delay;
                effects.extend(self.fail_attempt(id, now, reason, Retry::After(hold)));
            }
        }
        Ok(effects)
    }

    /// Counts a failure against worker `wid`, cordoning it when it has failed
    /// `auto_cordon_after` times in a row.
    fn charge(&mut self, wid: WorkerId) -> Vec<Effect> {
        let threshold = self.config.auto_cordon_after;
        let Ok(w) = self.worker_mut(wid) else {
            return vec![];
        };
        w.consecutive_failures += 1;
        if threshold == 0 || w.consecutive_failures < threshold || w.cordon.is_some() {
            return vec![];
        }
        let reason = Cordon::Failures {
            consecutive: w.consecutive_failures,
        };
        w.cordon = Some(reason.clone());
        vec![Effect::WorkerCordoned {
            worker: wid,
            reason,
        }]
    }

    /// Ends the job's live attempt as failed: stops the rest of the gang on alive workers, then
    /// requeues the job (to start no earlier than the hold from now) if it may be retried and
    /// has attempts left, else fails it with `reason`.
    fn fail_attempt(
        &mut self,
        id: JobId,
        now: Millis,
        reason: String,
        retry: Retry,
    ) -> Vec<Effect> {
        let Some(job) = self.jobs.get_mut(&id) else {
            return vec![];
        };
        let Some(attempt) = job.attempts.last_mut().filter(|a| a.is_live()) else {
            return vec![];
        };
        attempt.ended_at = Some(now);
        attempt.outcome = Some(AttemptOutcome::Failed {
            reason: reason.clone(),
        });
        let generation = attempt.generation;
        let running = attempt.workers_with_running_ranks();
        let tries = (job.attempts.len() - job.resumed_after.min(job.attempts.len())) as u64;
        let allowed = u64::from(job.max_restarts) + 1;
        let mut effects = vec![];
        let workers = self.alive_only(running);
        if !workers.is_empty() {
            effects.push(Effect::StopRanks {
                job: id,
                generation,
                workers,
            });
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return effects;
        };
        if let Retry::After(hold) = retry
            && tries < allowed
        {
            job.state = JobState::Queued;
            job.not_before = if hold > 0 {
                now.saturating_add(hold)
            } else {
                0
            };
            effects.push(Effect::JobRequeued {
                job: id,
                generation,
                reason,
            });
        } else {
            let reason = match retry {
                Retry::After(_) => format!("{reason} (attempt {tries} of {allowed})"),
                Retry::No => reason,
            };
            let state = JobState::Failed { reason };
            job.state = state.clone();
            effects.push(Effect::JobFinished { job: id, state });
        }
        effects
    }

    fn alive_only(&self, workers: Vec<WorkerId>) -> Vec<WorkerId> {
        workers
            .into_iter()
            .filter(|w| {
                self.workers
                    .get(w)
                    .is_some_and(|w| w.liveness == Liveness::Alive)
            })
            .collect()
    }

    /// Whether a [`Command::Tick`] at `now` would change anything: lets the I/O loop tick often
    /// without logging a command each time.
    pub fn tick_due(&self, now: Millis) -> bool {
        let timeout = self.config.heartbeat_timeout;
        let silent = self.workers.values().any(|w| {
            w.liveness == Liveness::Alive && now.saturating_sub(w.last_heartbeat) > timeout
        });
        silent || !self.stalled(now).is_empty()
    }

    /// Live attempts past their job's progress timeout: (job, quiet ms, limit ms).
    fn stalled(&self, now: Millis) -> Vec<(JobId, Millis, Millis)> {
        self.jobs
            .values()
            .filter_map(|j| {
                let limit = j.progress_timeout?;
                let a = j.live_attempt()?;
                let since = match j.last_progress {
                    Some(p) if p.generation == a.generation => p.at.max(a.started_at),
                    _ => a.started_at,
                };
                let quiet = now.saturating_sub(since);
                (quiet > limit).then_some((j.id, quiet, limit))
            })
            .collect()
    }

    /// Loses workers silent past the heartbeat timeout (and fails the attempts that had a rank
    /// on them), then fails attempts past their job's progress timeout.
    fn tick(&mut self, now: Millis) -> Vec<Effect> {
        let timeout = self.config.heartbeat_timeout;
        let mut effects = vec![];
        let lost: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|w| {
                w.liveness == Liveness::Alive && now.saturating_sub(w.last_heartbeat) > timeout
            })
            .map(|w| w.id)
            .collect();
        for wid in &lost {
            if let Some(w) = self.workers.get_mut(wid) {
                w.liveness = Liveness::Lost;
            }
            effects.push(Effect::WorkerLost { worker: *wid });
            // Losing the machine is its failure, whatever it ran (its peers' ranks, which
            // noticed first, were not charged).
            effects.extend(self.charge(*wid));
        }
        for wid in &lost {
            let (name, silent) = self.workers.get(wid).map_or(("?".to_string(), 0), |w| {
                (w.name.clone(), now.saturating_sub(w.last_heartbeat))
            });
            let hit: Vec<JobId> = self
                .jobs
                .values()
                .filter(|j| j.live_attempt().is_some_and(|a| a.placement.contains(wid)))
                .map(|j| j.id)
                .collect();
            for jid in hit {
                let reason = format!(
                    "{wid} ({name}) lost: no heartbeat for {silent} ms (timeout {timeout} ms)"
                );
                effects.extend(self.fail_attempt(jid, now, reason, Retry::After(0)));
            }
        }
        for (jid, quiet, limit) in self.stalled(now) {
            let reason = format!("no progress for {quiet} ms (timeout {limit} ms)");
            effects.extend(self.fail_attempt(jid, now, reason, Retry::After(0)));
        }
        effects
    }
}

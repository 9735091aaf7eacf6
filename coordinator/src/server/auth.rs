//! Authentication at the door and authorization in the handlers.
//!
//! Every request of the client, worker and replica APIs passes [`Door::admit`] (a tonic
//! interceptor): the `authorization: Bearer TOKEN` it presents becomes a [`Caller`] in the
//! request's extensions, or the request is refused with one line before it reaches a handler.
//! Each API admits only its kind of caller (people on the client API, machines on the worker
//! API, administrators on the replica API); the handlers then check what this caller may do
//! with the ids the request names ([`Caller`]'s methods here): people act on their own jobs,
//! administrators on all; a worker only as itself and on ranks placed on it; a rank only as
//! its job, attempt and rank.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::{Request, Status};

use crate::identity::{AuthConfig, Caller, Credentials};
use crate::model::{JobId, WorkerId};
use crate::server::clock::now_ms;
use crate::server::request::RankKey;

/// The metadata key tokens travel in (`Bearer TOKEN`).
pub const AUTHORIZATION: &str = "authorization";

/// Which API a door guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `convoy.v1.Convoy`: people.
    Client,
    /// `convoy.v1.WorkerApi`: worker daemons (and machines joining) and ranks.
    Worker,
    /// `convoy.v1.Replicas`: administrators.
    Replicas,
}

/// What every door checks against: the configuration and the published credentials.
#[derive(Clone)]
pub struct Door {
    pub config: Arc<AuthConfig>,
    pub credentials: watch::Receiver<Arc<Credentials>>,
}

impl Door {
    /// Authenticates `req` for `api`, leaving the [`Caller`] in its extensions.
    pub fn admit<T>(&self, api: Api, mut req: Request<T>) -> Result<Request<T>, Status> {
        let caller = self.caller(api, &req)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }

    fn caller<T>(&self, api: Api, req: &Request<T>) -> Result<Caller, Status> {
        if !self.config.required {
            return Ok(Caller::Anyone);
        }
        let Some(value) = req.metadata().get(AUTHORIZATION) else {
            return Err(Status::unauthenticated(match api {
                Api::Worker => {
                    "no credential: this coordinator requires one (a worker registers with the \
                     cluster's join token, --join-token-file)"
                }
                Api::Client | Api::Replicas => {
                    "no token: this coordinator requires one (set CONVOY_TOKEN, or \
                     CONVOY_TOKEN_FILE to a file holding it)"
                }
            }));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not \"Bearer TOKEN\"")
            })?;
        let caller = self
            .credentials
            .borrow()
            .authenticate(&self.config, token.trim(), now_ms())
            .map_err(Status::unauthenticated)?;
        let fits = match api {
            Api::Client => matches!(caller, Caller::User { .. }),
            Api::Worker => matches!(
                caller,
                Caller::Joiner | Caller::Worker(_) | Caller::Rank { .. }
            ),
            Api::Replicas => matches!(caller, Caller::User { admin: true, .. }),
        };
        if !fits {
            return Err(Status::permission_denied(format!(
                "{} may not call the {} API",
                caller.describe(),
                match api {
                    Api::Client => "client",
                    Api::Worker => "worker",
                    Api::Replicas => "replica (administrators only)",
                }
            )));
        }
        Ok(caller)
    }
}

/// The caller the door admitted `req` as.
pub fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::internal("the request passed no authentication"))
}

fn denied(msg: String) -> Status {
    Status::permission_denied(msg)
}

impl Caller {
    /// The user a job submitted now belongs to (empty without authentication).
    pub fn owner_name(&self) -> Result<String, Status> {
        match self {
            Caller::Anyone => Ok(String::new()),
            Caller::User { name, .. } => Ok(name.clone()),
            other => Err(denied(format!("{} cannot own jobs", other.describe()))),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Anyone | Caller::User { admin: true, .. })
    }

    /// Administrators only.
    pub fn must_be_admin(&self, what: &str) -> Result<(), Status> {
        if self.is_admin() {
            return Ok(());
        }
        Err(denied(format!(
            "{} may not {what}: administrators only",
            self.describe()
        )))
    }

    /// The owner of `job` or an administrator.
    pub fn may_act_on(&self, job: JobId, owner: &str) -> Result<(), Status> {
        match self {
            _ if self.is_admin() => Ok(()),
            Caller::User { name, .. } if !owner.is_empty() && name == owner => Ok(()),
            Caller::User { name, .. } => Err(denied(format!(
                "{job} belongs to {}; {name} may act only on their own jobs",
                if owner.is_empty() {
                    "no user (administrators only)"
                } else {
                    owner
                }
            ))),
            other => Err(denied(format!("{} may not act on {job}", other.describe()))),
        }
    }

    /// This worker daemon itself.
    pub fn must_be_worker(&self, worker: WorkerId) -> Result<(), Status> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Worker(w) if *w == worker => Ok(()),
            other => Err(denied(format!(
                "{} may not act as {worker}",
                other.describe()
            ))),
        }
    }

    /// The worker daemon this caller is, if it is one (`None`: checks are off).
    pub fn worker(&self) -> Result<Option<WorkerId>, Status> {
        match self {
            Caller::Anyone => Ok(None),
            Caller::Worker(w) => Ok(Some(*w)),
            other => Err(denied(format!(
                "{} is not a worker daemon",
                other.describe()
            ))),
        }
    }

    /// This rank of this attempt itself.
    pub fn must_be_rank(&self, key: RankKey) -> Result<(), Status> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Rank {
                job,
                generation,
                rank,
            } if *job == key.job && *generation == key.generation && *rank == key.rank => Ok(()),
            other => Err(denied(format!(
                "{} may not act as rank {} of {} attempt {}",
                other.describe(),
                key.rank,
                key.job,
                key.generation
            ))),
        }
    }

    /// The rank this caller is, if it is one (`None`: checks are off).
    pub fn rank(&self) -> Result<Option<RankKey>, Status> {
        match self {
            Caller::Anyone => Ok(None),
            Caller::Rank {
                job,
                generation,
                rank,
            } => Ok(Some(RankKey {
                job: *job,
                generation: *generation,
                rank: *rank,
            })),
            other => Err(denied(format!("{} is not a rank", other.describe()))),
        }
    }
}

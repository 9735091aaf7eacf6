//! Who a request comes from: [`Credentials::authenticate`] turns the token a request presents
//! into a [`Caller`], or into the one line that says why it is refused.

use std::collections::BTreeMap;

use super::ApiToken;
use super::secrets::{self, Presented};
use crate::model::{JobId, Millis, WorkerId};
use crate::state::ClusterState;

/// A coordinator's own authentication settings. Not replicated: every replica is given the
/// same files.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// Off only with `--insecure`: every caller is then an administrator, and no worker or
    /// rank credential is asked for.
    pub required: bool,
    /// SHA-256 of the bootstrap administrator's token (`--admin-token-file`): the one
    /// administrator that exists before any token was created.
    pub admin_hash: Option<Vec<u8>>,
    /// SHA-256 of the cluster's join token (`--join-token-file`), which workers register with.
    pub join_hash: Option<Vec<u8>>,
    /// A worker registers only over TLS with a client certificate signed by the cluster's CA
    /// (`--require-worker-cert`): the join token alone does not make a machine a worker.
    pub require_worker_cert: bool,
}

/// The shortest configured token accepted (the bootstrap administrator's, the join token).
pub const MIN_CONFIGURED_TOKEN: usize = 24;

impl AuthConfig {
    /// Nothing is checked (`--insecure`).
    pub fn insecure() -> AuthConfig {
        AuthConfig::default()
    }

    /// Authentication required, with these configured tokens.
    pub fn with_tokens(admin: &str, join: &str) -> Result<AuthConfig, String> {
        for (what, t) in [("administrator", admin), ("join", join)] {
            if t.len() < MIN_CONFIGURED_TOKEN || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "the {what} token must be at least {MIN_CONFIGURED_TOKEN} printable \
                     characters without spaces (e.g. `openssl rand -hex 32`)"
                ));
            }
        }
        if admin == join {
            return Err(
                "the administrator token and the join token are the same: a worker's machine \
                 would hold an administrator's token"
                    .into(),
            );
        }
        Ok(AuthConfig {
            required: true,
            admin_hash: Some(secrets::hash(admin)),
            join_hash: Some(secrets::hash(join)),
            require_worker_cert: false,
        })
    }
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off (`--insecure`): every check passes.
    Anyone,
    /// A person, by API token (`token` = its id; `None` for the bootstrap administrator).
    User {
        name: String,
        admin: bool,
        token: Option<String>,
    },
    /// A machine presenting the join token: it may register, nothing else.
    Joiner,
    Worker(WorkerId),
    Rank {
        job: JobId,
        generation: u64,
        rank: usize,
    },
}

/// The bootstrap administrator's user name.
pub const BOOTSTRAP_ADMIN: &str = "admin";

impl Caller {
    /// Who this is, for the one line a refusal says.
    pub fn describe(&self) -> String {
        match self {
            Caller::Anyone => "anyone (authentication is off)".into(),
            Caller::User { name, .. } => format!("user {name}"),
            Caller::Joiner => "a machine with the join token".into(),
            Caller::Worker(w) => format!("{w}"),
            Caller::Rank {
                job,
                generation,
                rank,
            } => format!("rank {rank} of {job} attempt {generation}"),
        }
    }
}

/// What requests are checked against: the identity part of the state, published by the
/// event loop whenever its epoch changes.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub epoch: u64,
    key: Vec<u8>,
    tokens: BTreeMap<String, ApiToken>,
    /// Each worker's current daemon instance (its credential names it).
    instances: BTreeMap<WorkerId, String>,
}

impl Credentials {
    pub fn of(state: &ClusterState) -> Credentials {
        Credentials {
            epoch: state.identities.epoch,
            key: state.identities.key.clone(),
            tokens: state.identities.tokens.clone(),
            instances: state
                .workers
                .values()
                .map(|w| (w.id, w.instance.clone()))
                .collect(),
        }
    }

    /// The key machine credentials derive from (empty until the first leader chose one).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Who presents `token` at `now`, or why nobody is.
    pub fn authenticate(
        &self,
        config: &AuthConfig,
        token: &str,
        now: Millis,
    ) -> Result<Caller, String> {
        match Presented::parse(token) {
            Presented::Api { id, secret } => {
                let Some(t) = self.tokens.get(id) else {
                    return Err(format!(
                        "token {id} is not valid (revoked, or never issued by this cluster)"
                    ));
                };
                if !secrets::same(&secrets::hash(secret), &t.hash) {
                    return Err(format!(
                        "token {id} is not valid (its secret does not match)"
                    ));
                }
                if let Some(at) = t.expires_at.filter(|at| *at <= now) {
                    return Err(format!(
                        "token {id} of {} expired {} ago; ask an administrator for a new one",
                        t.user,
                        ago(now - at)
                    ));
                }
                Ok(Caller::User {
                    name: t.user.clone(),
                    admin: t.admin,
                    token: Some(t.id.clone()),
                })
            }
            Presented::Worker { worker, mac } => {
                let valid = !self.key.is_empty()
                    && self
                        .instances
                        .get(&worker)
                        .is_some_and(|i| secrets::worker_mac_matches(&self.key, worker, i, mac));
                if valid {
                    Ok(Caller::Worker(worker))
                } else {
                    Err(format!(
                        "the credential of {worker} is not valid (the worker registered again \
                         since, or it was never issued); register with the join token"
                    ))
                }
            }
            Presented::Rank {
                job,
                generation,
                rank,
                mac,
            } => {
                if !self.key.is_empty()
                    && secrets::rank_mac_matches(&self.key, job, generation, rank, mac)
                {
                    Ok(Caller::Rank {
                        job,
                        generation,
                        rank,
                    })
                } else {
                    Err(format!(
                        "the credential of rank {rank} of {job} attempt {generation} is not \
                         valid"
                    ))
                }
            }
            Presented::Other(text) => {
                let h = secrets::hash(text);
                if config
                    .admin_hash
                    .as_ref()
                    .is_some_and(|a| secrets::same(a, &h))
                {
                    Ok(Caller::User {
                        name: BOOTSTRAP_ADMIN.into(),
                        admin: true,
                        token: None,
                    })
                } else if config
                    .join_hash
                    .as_ref()
                    .is_some_and(|j| secrets::same(j, &h))
                {
                    Ok(Caller::Joiner)
                } else {
                    Err("the token is not valid (not a token of this cluster)".into())
                }
            }
        }
    }
}

fn ago(ms: Millis) -> String {
    match ms / 1000 {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

//! Who may call the coordinator: people with API tokens, worker daemons with the credential
//! their registration earned, and ranks with the credential of their attempt.
//!
//! The state keeps what must survive a restart and replicate with it ([`Identities`]: API
//! tokens as SHA-256 hashes, and the cluster key machine credentials are derived from);
//! [`secrets`] mints and checks the tokens themselves. Everything here is pure: the server's
//! `auth` module applies it to requests.
//!
//! Why derived machine credentials rather than stored ones: a worker's credential is an
//! HMAC of the cluster key over its id and daemon instance, and a rank's over its job,
//! attempt and rank, so the coordinator stores nothing per worker or rank, every replica
//! checks them alike after a failover, and a credential dies with its attempt (or its daemon
//! instance) without a revocation list.

mod caller;
pub mod secrets;

pub use caller::{AuthConfig, Caller, Credentials};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Millis;

/// The longest user name.
pub const MAX_USER_LEN: usize = 64;

/// An API token as the state keeps it: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Public: shown in listings and used to revoke; part of the token's text.
    pub id: String,
    pub user: String,
    pub admin: bool,
    /// SHA-256 of the token's secret part.
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
}

/// The identity part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identities {
    /// By token id.
    pub tokens: BTreeMap<String, ApiToken>,
    /// What worker and rank credentials are derived from (see the module doc); chosen at
    /// random by the first coordinator that serves the cluster.
    #[serde(with = "serde_bytes", default)]
    pub key: Vec<u8>,
    /// Bumped by every change that can make a credential valid or invalid (tokens, the key, a
    /// worker's registration), so the server republishes what it checks requests against
    /// only when something changed.
    pub epoch: u64,
}

impl Identities {
    pub fn create(&mut self, token: &ApiToken) -> Result<(), ApiError> {
        check_user(&token.user).map_err(ApiError::Token)?;
        if token.id.is_empty() || !token.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiError::Token(format!(
                "token id {:?}: letters and digits only",
                token.id
            )));
        }
        if token.hash.len() != secrets::HASH_LEN {
            return Err(ApiError::Token(format!(
                "token {}: a hash of {} bytes, not {}",
                token.id,
                token.hash.len(),
                secrets::HASH_LEN
            )));
        }
        if self.tokens.contains_key(&token.id) {
            return Err(ApiError::Token(format!("token id {} is taken", token.id)));
        }
        self.tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    pub fn revoke(&mut self, id: &str) -> Result<ApiToken, ApiError> {
        self.tokens
            .remove(id)
            .ok_or_else(|| ApiError::UnknownToken(id.to_string()))
    }

    pub fn set_key(&mut self, key: &[u8]) -> Result<(), ApiError> {
        if !self.key.is_empty() {
            return Err(ApiError::Token("the cluster key is already chosen".into()));
        }
        if key.len() < secrets::HASH_LEN {
            return Err(ApiError::Token(format!(
                "a cluster key of {} bytes; at least {}",
                key.len(),
                secrets::HASH_LEN
            )));
        }
        self.key = key.to_vec();
        Ok(())
    }
}

/// Why an identity command was refused (wrapped by [`crate::ApplyError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("no token with id {0:?}")]
    UnknownToken(String),
    #[error("{0}")]
    Token(String),
}

/// A user name: 1 to [`MAX_USER_LEN`] letters, digits, `.`, `_` or `-` (what shows in
/// listings and logs must not carry spaces or escapes).
pub fn check_user(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_USER_LEN {
        return Err(format!(
            "user name {name:?}: 1 to {MAX_USER_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "user name {name:?}: letters, digits, '.', '_' and '-' only"
        ));
    }
    Ok(())
}

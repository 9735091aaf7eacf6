//! The ring handshake's proof that a peer belongs to this attempt: each side sends a fresh
//! random challenge and answers the other's with an HMAC under the attempt's ring secret, so
//! the secret never crosses the wire, a recorded answer is worthless for another connection,
//! and a stray process (or a rank of another job) cannot join a ring. The secret comes from
//! the coordinator with the rank's launch (see `convoy_coordinator::identity::secrets`).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Bytes of a challenge and of an answer.
pub const CHALLENGE_LEN: usize = 32;
pub const ANSWER_LEN: usize = 32;

/// Which side answers: the two answers differ, so one cannot be replayed as the other.
#[derive(Clone, Copy)]
pub enum Side {
    /// The accepting (right) rank.
    Acceptor,
    /// The connecting (left) rank.
    Connector,
}

/// What one connection's answers are computed over.
pub struct Exchange<'a> {
    pub secret: &'a [u8],
    pub generation: u64,
    /// The connecting rank; the acceptor is the next one.
    pub connector: u32,
    pub connector_challenge: [u8; CHALLENGE_LEN],
    pub acceptor_challenge: [u8; CHALLENGE_LEN],
}

pub fn challenge() -> [u8; CHALLENGE_LEN] {
    let mut c = [0u8; CHALLENGE_LEN];
    rand::rng().fill_bytes(&mut c);
    c
}

impl Exchange<'_> {
    fn mac(&self, side: Side) -> Hmac<Sha256> {
        // HMAC takes keys of any length (an empty one too: a ring without a secret).
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(self.secret) else {
            unreachable!("HMAC accepts every key length")
        };
        m.update(match side {
            Side::Acceptor => b"convoy ring acceptor",
            Side::Connector => b"convoy ring connector",
        });
        m.update(&self.generation.to_le_bytes());
        m.update(&self.connector.to_le_bytes());
        m.update(&self.connector_challenge);
        m.update(&self.acceptor_challenge);
        m
    }

    pub fn answer(&self, side: Side) -> [u8; ANSWER_LEN] {
        self.mac(side).finalize().into_bytes().into()
    }

    /// Whether `given` is `side`'s right answer (compared in constant time).
    pub fn check(&self, side: Side, given: &[u8]) -> bool {
        self.mac(side).verify_slice(given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_checks_only_for_its_side_secret_and_challenges() {
        let x = Exchange {
            secret: b"ring secret",
            generation: 3,
            connector: 1,
            connector_challenge: challenge(),
            acceptor_challenge: challenge(),
        };
        let a = x.answer(Side::Acceptor);
        assert!(x.check(Side::Acceptor, &a));
        assert!(!x.check(Side::Connector, &a), "replayed as the other side");
        let other = Exchange {
            secret: b"another secret",
            ..x
        };
        assert!(!other.check(Side::Acceptor, &a));
        let fresh = Exchange {
            acceptor_challenge: challenge(),
            ..x
        };
        assert!(
            !fresh.check(Side::Acceptor, &a),
            "replayed on a new connection"
        );
    }
}

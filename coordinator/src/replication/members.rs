//! Who belongs to a replicated coordinator, and how to reach them.
//!
//! Raft keeps the voters and learners (its `ConfState`); convoy keeps beside it each member's
//! address, in an [`AddressBook`] that changes with the same log entries: a membership change
//! carries the new member's address in its context ([`MemberChange`]), every replica applies
//! it at the same index, stores the book with its Raft storage and sends it with its
//! snapshots. Until the first change is applied the book is the `--peers` list the member was
//! started with; after that the book in the log is authoritative and `--peers` only seeds a
//! member that joins.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};

/// The members and their addresses as this replica has applied them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressBook {
    /// Every member, voters and learners: node id → `http://host:port`.
    pub addresses: BTreeMap<u64, String>,
    /// Members that receive the log without voting (yet).
    pub learners: BTreeSet<u64>,
    /// The log index of the membership change that made this book (0: none yet).
    pub changed_at: u64,
}

impl AddressBook {
    /// The founding book: `members` (node id → `host:port` or URL), all voters.
    pub fn founding(members: &BTreeMap<u64, String>) -> AddressBook {
        AddressBook {
            addresses: members
                .iter()
                .map(|(id, a)| (*id, convoy_client::url(a)))
                .collect(),
            learners: BTreeSet::new(),
            changed_at: 0,
        }
    }

    pub fn voters(&self) -> Vec<u64> {
        self.addresses
            .keys()
            .filter(|id| !self.learners.contains(id))
            .copied()
            .collect()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.addresses.contains_key(&id)
    }

    /// The members as `id=url` joined by commas, in id order, learners marked `~learner`:
    /// what members compare, and what `convoy coordinators` shows.
    pub fn canonical(&self) -> String {
        self.addresses
            .iter()
            .map(|(id, a)| {
                let learner = if self.learners.contains(id) {
                    "~learner"
                } else {
                    ""
                };
                format!("{id}={a}{learner}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `members` as a founding list in its canonical form (see [`AddressBook::canonical`]).
pub fn canonical(members: &BTreeMap<u64, String>) -> String {
    AddressBook::founding(members).canonical()
}

/// What a membership change entry carries besides Raft's own `ConfChange` (in its context):
/// who proposed it, so the proposer can answer its caller, and the new member's address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    pub origin: u64,
    pub seq: u64,
    /// The added member's `http://host:port` (empty for a promotion or a removal).
    pub address: String,
}

/// This replica's identity in the cluster, and the address book it has applied so far,
/// shared by the transport, the checkpoint copies and the status service.
#[derive(Debug)]
pub struct Membership {
    pub cluster_id: String,
    pub secret: String,
    pub node_id: u64,
    /// This replica's storage incarnation (see `PeerMessage.incarnation`).
    pub incarnation: u64,
    book: RwLock<AddressBook>,
    /// `book`'s canonical list, made once per change: every Raft message carries it.
    canonical: RwLock<Arc<str>>,
}

impl Membership {
    pub fn new(
        cluster_id: String,
        secret: String,
        node_id: u64,
        incarnation: u64,
        book: AddressBook,
    ) -> Membership {
        Membership {
            cluster_id,
            secret,
            node_id,
            incarnation,
            canonical: RwLock::new(book.canonical().into()),
            book: RwLock::new(book),
        }
    }

    /// The book as applied now.
    pub fn book(&self) -> RwLockReadGuard<'_, AddressBook> {
        // Writers replace the whole book: a panicking writer cannot leave half of one.
        self.book.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_book(&self, book: AddressBook) {
        *self.canonical.write().unwrap_or_else(|e| e.into_inner()) = book.canonical().into();
        *self.book.write().unwrap_or_else(|e| e.into_inner()) = book;
    }

    /// The book's canonical list (see [`AddressBook::canonical`]).
    pub fn canonical(&self) -> Arc<str> {
        self.canonical
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every member but this one: node id → URL.
    pub fn peers(&self) -> BTreeMap<u64, String> {
        let book = self.book();
        book.addresses
            .iter()
            .filter(|(id, _)| **id != self.node_id)
            .map(|(id, a)| (*id, a.clone()))
            .collect()
    }

    /// Member `id`'s URL, if it is a member.
    pub fn url(&self, id: u64) -> Option<String> {
        self.book().addresses.get(&id).cloned()
    }
}

//! Who serves: a replicated coordinator answers the client and worker APIs only while it is
//! the leader (and has applied everything before its term); every other member refuses at
//! once with a status that names the leader, which clients follow (see `convoy_client`).

use std::sync::Arc;

use tonic::Status;
use tonic::metadata::MetadataValue;

/// What the event loop publishes after each turn and the services read at their door.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    /// This coordinator serves requests (always, when it is the only one).
    pub serving: bool,
    pub node_id: u64,
    /// The leader this member knows of (0: none).
    pub leader: u64,
    /// The leader's client address, from the member list.
    pub leader_url: Option<String>,
    pub members: usize,
    pub term: u64,
    /// "leader", "follower", "candidate", or "single" when not replicated.
    pub role: &'static str,
    pub commit: u64,
    pub applied: u64,
    /// The member list as given (see `replication::canonical`).
    pub member_list: Arc<str>,
}

impl Leadership {
    /// A coordinator that is not replicated: it always serves.
    pub fn single() -> Leadership {
        Leadership {
            serving: true,
            node_id: 1,
            leader: 1,
            leader_url: None,
            members: 1,
            term: 0,
            role: "single",
            commit: 0,
            applied: 0,
            member_list: "".into(),
        }
    }

    /// The refusal a member that does not serve answers with: `UNAVAILABLE` (clients retry),
    /// one line naming the leader, and the leader's address in [`convoy_client::LEADER_HEADER`].
    pub fn refusal(&self) -> Status {
        let me = self.node_id;
        match (&self.leader_url, self.leader) {
            (Some(url), leader) if leader != me => {
                let mut s = Status::unavailable(format!(
                    "coordinator {me} is not the leader; the leader is coordinator {leader} at \
                     {url}"
                ));
                if let Ok(v) = MetadataValue::try_from(url.as_str()) {
                    s.metadata_mut().insert(convoy_client::LEADER_HEADER, v);
                }
                s
            }
            _ if self.leader == me => Status::unavailable(format!(
                "coordinator {me} was just elected leader and is catching up; retry in a moment"
            )),
            _ => Status::unavailable(format!(
                "no leader: coordinator {me} knows of none among the {} coordinators (an \
                 election is under way, or a majority of them is unreachable)",
                self.members
            )),
        }
    }
}

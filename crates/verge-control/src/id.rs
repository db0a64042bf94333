//! Raft node ids: how a verge [`NodeId`] (a string) becomes the `u64` openraft wants.
//!
//! openraft 0.9 needs a `Copy` node id, so every member is known to Raft by the 64-bit FNV-1a hash
//! of its name ([`raft_id`]), and the name itself travels in the membership as a [`ControlNode`].
//! The hash is a pure function of the name, so every node computes the same id for the same peer
//! without any coordination, and a restarted node gets its old id back. Two names that hash alike
//! would be one Raft member, so a set of members where that happens is refused
//! ([`check_distinct`]); with 64 bits it takes a corridor of billions of cabinets to expect one.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use verge_proto::NodeId;

/// A member's id inside openraft: the FNV-1a 64 hash of its [`NodeId`].
pub type RaftId = u64;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The openraft id of `id`: FNV-1a 64 over the name's bytes.
pub fn raft_id(id: &NodeId) -> RaftId {
    id.as_str().bytes().fold(FNV_OFFSET, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// What openraft keeps about each member: its verge id.
///
/// The id is an `Option` only because openraft's storage test suite builds memberships with
/// `Node::default()`; every membership this crate writes names each member, and a member without
/// a name is unreachable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlNode {
    /// The member's verge node id.
    pub id: Option<NodeId>,
}

impl ControlNode {
    /// The membership entry for `id`.
    pub fn new(id: NodeId) -> Self {
        Self { id: Some(id) }
    }
}

impl fmt::Display for ControlNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("(unnamed)"),
        }
    }
}

/// Two node ids that map to the same Raft id, or an id that maps to 0 (which openraft uses for
/// "nobody" in a default vote).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdClash {
    /// Two distinct names hash to the same Raft id.
    #[error("node ids `{a}` and `{b}` map to the same Raft id {raft_id:#018x}; rename one of them")]
    Collision {
        /// The first name.
        a: NodeId,
        /// The second name.
        b: NodeId,
        /// The shared Raft id.
        raft_id: RaftId,
    },
    /// A name hashes to 0.
    #[error("node id `{0}` maps to Raft id 0, which openraft reserves; rename it")]
    Zero(NodeId),
}

/// Maps every id in `ids` to its Raft id, refusing a set where two distinct names collide.
/// Repeated names are fine (they are one member).
pub fn check_distinct<'a>(
    ids: impl IntoIterator<Item = &'a NodeId>,
) -> Result<BTreeMap<RaftId, NodeId>, IdClash> {
    check_distinct_by(ids, raft_id)
}

/// [`check_distinct`] with the hash as a parameter, so the tests can force a collision.
fn check_distinct_by<'a>(
    ids: impl IntoIterator<Item = &'a NodeId>,
    hash: impl Fn(&NodeId) -> RaftId,
) -> Result<BTreeMap<RaftId, NodeId>, IdClash> {
    let mut map: BTreeMap<RaftId, NodeId> = BTreeMap::new();
    for id in ids {
        let rid = hash(id);
        if rid == 0 {
            return Err(IdClash::Zero(id.clone()));
        }
        match map.get(&rid) {
            Some(existing) if existing != id => {
                return Err(IdClash::Collision {
                    a: existing.clone(),
                    b: id.clone(),
                    raft_id: rid,
                });
            }
            Some(_) => {}
            None => {
                map.insert(rid, id.clone());
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Reference values of FNV-1a 64 ("a" and "foobar" from the FNV test suite).
        assert_eq!(raft_id(&id("a")), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(raft_id(&id("foobar")), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn distinct_names_pass_and_repeats_are_one_member() {
        let ids = [id("b1"), id("b2"), id("b3"), id("b1")];
        let map = check_distinct(&ids).expect("no collision");
        assert_eq!(map.len(), 3);
        assert_eq!(map.get(&raft_id(&id("b2"))), Some(&id("b2")));
    }

    #[test]
    fn a_collision_is_refused_naming_both() {
        let ids = [id("b1"), id("b2")];
        let clash = check_distinct_by(&ids, |_| 7).expect_err("forced collision");
        assert_eq!(
            clash,
            IdClash::Collision {
                a: id("b1"),
                b: id("b2"),
                raft_id: 7
            }
        );
        let text = clash.to_string();
        assert!(text.contains("`b1`") && text.contains("`b2`"), "{text}");
        assert_eq!(check_distinct_by(&ids, |_| 0), Err(IdClash::Zero(id("b1"))));
    }
}

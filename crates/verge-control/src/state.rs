//! The replicated state: what every node agrees on, and the commands that change it.
//!
//! [`ControlState`] is a plain value with no IO, clock or randomness: [`ControlState::apply`]
//! takes a [`Command`] and the term of the log entry that carries it and returns a [`Response`]
//! saying what changed. Every replica applies the same entries in the same order, so every
//! replica holds the same state; iteration is over `BTree` collections only, so even debug output
//! is identical everywhere.
//!
//! Commands are safe to retry. A proposal that timed out may still have committed, so a node that
//! retries must not double an effect: setting a drain flag or a model version twice is the same as
//! once, and a cursor only ever moves forward, so resending an advance changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use verge_proto::{NodeId, StreamId};

/// The longest model name, in bytes.
pub const MODEL_NAME_BYTES_MAX: usize = 128;

/// The longest model digest, in bytes (a hex SHA-512 is 128).
pub const MODEL_DIGEST_BYTES_MAX: usize = 160;

/// The most cursors one [`Command::AdvanceCursors`] may carry.
pub const CURSORS_PER_COMMAND_MAX: usize = 4096;

/// A model version as the cluster agrees on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// Monotonic version number.
    pub version: u64,
    /// Content digest of the model file (for instance hex SHA-256).
    pub digest: String,
    /// Size of the model file in bytes.
    pub size: u64,
}

/// The state every member agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// Members that vote (the gateway is one of them), as of the last applied membership entry.
    /// During a joint change this is the union of both configurations.
    pub voters: BTreeSet<NodeId>,
    /// Members that replicate the state without voting.
    pub learners: BTreeSet<NodeId>,
    /// Nodes an operator drained: they give up the gateway role and take no offloaded work.
    pub drained: BTreeSet<NodeId>,
    /// The model each name should run.
    pub models: BTreeMap<String, ModelVersion>,
    /// Per stream, the highest sequence number the cloud has acknowledged.
    pub cursors: BTreeMap<StreamId, u64>,
}

/// A change proposed to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Drain a member (or undrain it with `drained: false`).
    SetDrain {
        /// The member.
        node: NodeId,
        /// Whether it is drained from now on.
        drained: bool,
    },
    /// Record the version of a model every node should run.
    SetModel {
        /// The model's name.
        name: String,
        /// The version; never lower than the one recorded.
        version: u64,
        /// Content digest of the file.
        digest: String,
        /// File size in bytes.
        size: u64,
    },
    /// Advance cloud-sync cursors after the cloud acknowledged everything up to `up_to` in each
    /// stream. All or nothing: if one cursor would move backwards the command changes nothing.
    AdvanceCursors {
        /// The term of the gateway that had the batches acknowledged (`Control::term()` when it
        /// sent them). A command whose term is not the term of the log entry carrying it comes
        /// from a gateway that has since been replaced, and is refused.
        term: u64,
        /// Per stream, the highest acknowledged sequence number.
        cursors: Vec<(StreamId, u64)>,
    },
    /// Changes nothing; commits an entry in the current term (useful to probe leadership).
    Noop,
}

/// One cursor moved by a [`Command::AdvanceCursors`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorMove {
    /// The stream.
    pub stream: StreamId,
    /// Where the cursor was (0 for a stream never synced).
    pub from: u64,
    /// Where it is now.
    pub to: u64,
}

/// A cursor a command would have moved backwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorBehind {
    /// The stream.
    pub stream: StreamId,
    /// The committed cursor.
    pub committed: u64,
    /// The lower value the command carried.
    pub proposed: u64,
}

/// Why a command changed nothing. Every replica refuses the same commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The node is not a voter or learner of the cluster.
    #[error("node `{0}` is not a member of the control plane")]
    UnknownNode(NodeId),
    /// The command's term is not the term of the entry that carried it: the gateway that sent the
    /// batches is no longer the leader.
    #[error(
        "cursor advance from term {command_term} refused: the entry carrying it is from term \
         {entry_term}; the gateway that sent those batches has been replaced"
    )]
    StaleTerm {
        /// The term the command carried.
        command_term: u64,
        /// The term of the log entry.
        entry_term: u64,
    },
    /// One or more cursors would have moved backwards; none moved.
    #[error("{} cursor(s) would move backwards (first: {} at {}, proposed {}); nothing changed",
        .0.len(),
        .0.first().map(|c| c.stream.to_string()).unwrap_or_default(),
        .0.first().map(|c| c.committed).unwrap_or_default(),
        .0.first().map(|c| c.proposed).unwrap_or_default())]
    CursorsBehind(Vec<CursorBehind>),
    /// The same stream appears twice in one command.
    #[error("stream {0} appears more than once in one cursor advance")]
    DuplicateStream(StreamId),
    /// More cursors than [`CURSORS_PER_COMMAND_MAX`].
    #[error("a cursor advance carries {0} cursors, more than {CURSORS_PER_COMMAND_MAX}")]
    TooManyCursors(usize),
    /// A model version lower than the recorded one.
    #[error("model `{name}` is at version {current}; version {proposed} is older")]
    ModelVersionBehind {
        /// The model.
        name: String,
        /// The recorded version.
        current: u64,
        /// The proposed version.
        proposed: u64,
    },
    /// The recorded version with a different digest or size.
    #[error("model `{name}` version {version} is already recorded with another digest or size")]
    ModelConflict {
        /// The model.
        name: String,
        /// The version.
        version: u64,
    },
    /// A model name or digest that is empty or too long.
    #[error(
        "model name must be 1 to {MODEL_NAME_BYTES_MAX} bytes and digest 1 to \
         {MODEL_DIGEST_BYTES_MAX} bytes: {0}"
    )]
    BadModel(String),
}

/// What applying an entry did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A [`Command::Noop`] or openraft's blank entry: nothing changed.
    Noop,
    /// A membership entry: the members now.
    Membership {
        /// Voters after the change.
        voters: BTreeSet<NodeId>,
        /// Learners after the change.
        learners: BTreeSet<NodeId>,
    },
    /// A drain flag was set.
    Drain {
        /// The member.
        node: NodeId,
        /// Its flag now.
        drained: bool,
        /// Whether the flag was different before.
        changed: bool,
    },
    /// A model version was recorded.
    Model {
        /// The model.
        name: String,
        /// The version now recorded.
        version: ModelVersion,
        /// Whether it differs from what was recorded before.
        changed: bool,
    },
    /// Cursors advanced.
    Cursors {
        /// The cursors that moved.
        advanced: Vec<CursorMove>,
        /// How many were already at the proposed value.
        unchanged: usize,
    },
    /// The command was refused and changed nothing.
    Refused(Refusal),
}

impl ControlState {
    /// Whether `node` is drained.
    pub fn is_drained(&self, node: &NodeId) -> bool {
        self.drained.contains(node)
    }

    /// Whether `node` is a voter or learner.
    pub fn is_member(&self, node: &NodeId) -> bool {
        self.voters.contains(node) || self.learners.contains(node)
    }

    /// The committed cursor of `stream` (0: nothing synced yet).
    pub fn cursor(&self, stream: &StreamId) -> u64 {
        self.cursors.get(stream).copied().unwrap_or(0)
    }

    /// Replaces the membership (from an applied membership entry).
    pub fn set_members(
        &mut self,
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
    ) -> Response {
        self.voters = voters;
        // A node promoted to voter is no longer listed as a learner.
        self.learners = learners.difference(&self.voters).cloned().collect();
        Response::Membership {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
        }
    }

    /// Applies `cmd`, carried by a log entry of term `entry_term`.
    pub fn apply(&mut self, cmd: &Command, entry_term: u64) -> Response {
        match cmd {
            Command::Noop => Response::Noop,
            Command::SetDrain { node, drained } => self.set_drain(node, *drained),
            Command::SetModel {
                name,
                version,
                digest,
                size,
            } => self.set_model(name, *version, digest, *size),
            Command::AdvanceCursors { term, cursors } => {
                self.advance_cursors(*term, cursors, entry_term)
            }
        }
    }

    fn set_drain(&mut self, node: &NodeId, drained: bool) -> Response {
        if !self.is_member(node) {
            return Response::Refused(Refusal::UnknownNode(node.clone()));
        }
        let changed = if drained {
            self.drained.insert(node.clone())
        } else {
            self.drained.remove(node)
        };
        Response::Drain {
            node: node.clone(),
            drained,
            changed,
        }
    }

    fn set_model(&mut self, name: &str, version: u64, digest: &str, size: u64) -> Response {
        if let Err(refusal) = check_model(name, digest) {
            return Response::Refused(refusal);
        }
        let proposed = ModelVersion {
            version,
            digest: digest.to_owned(),
            size,
        };
        let changed = match self.models.get(name) {
            Some(current) if current.version > version => {
                return Response::Refused(Refusal::ModelVersionBehind {
                    name: name.to_owned(),
                    current: current.version,
                    proposed: version,
                });
            }
            Some(current) if current.version == version => {
                if *current != proposed {
                    return Response::Refused(Refusal::ModelConflict {
                        name: name.to_owned(),
                        version,
                    });
                }
                false
            }
            _ => true,
        };
        if changed {
            self.models.insert(name.to_owned(), proposed.clone());
        }
        Response::Model {
            name: name.to_owned(),
            version: proposed,
            changed,
        }
    }

    fn advance_cursors(
        &mut self,
        term: u64,
        cursors: &[(StreamId, u64)],
        entry_term: u64,
    ) -> Response {
        if term != entry_term {
            return Response::Refused(Refusal::StaleTerm {
                command_term: term,
                entry_term,
            });
        }
        if let Err(refusal) = check_cursors(cursors) {
            return Response::Refused(refusal);
        }
        let behind: Vec<CursorBehind> = cursors
            .iter()
            .filter_map(|(stream, up_to)| {
                let committed = self.cursor(stream);
                (*up_to < committed).then(|| CursorBehind {
                    stream: stream.clone(),
                    committed,
                    proposed: *up_to,
                })
            })
            .collect();
        if !behind.is_empty() {
            return Response::Refused(Refusal::CursorsBehind(behind));
        }
        let mut advanced = Vec::new();
        let mut unchanged = 0;
        for (stream, up_to) in cursors {
            let from = self.cursor(stream);
            if *up_to == from {
                unchanged += 1;
                continue;
            }
            self.cursors.insert(stream.clone(), *up_to);
            advanced.push(CursorMove {
                stream: stream.clone(),
                from,
                to: *up_to,
            });
        }
        Response::Cursors {
            advanced,
            unchanged,
        }
    }
}

/// Checks a model's name and digest; shared by the state machine and by `Control::propose`,
/// which refuses a bad command before it reaches the log.
pub(crate) fn check_model(name: &str, digest: &str) -> Result<(), Refusal> {
    if name.is_empty() || name.len() > MODEL_NAME_BYTES_MAX {
        return Err(Refusal::BadModel(format!("name of {} bytes", name.len())));
    }
    if digest.is_empty() || digest.len() > MODEL_DIGEST_BYTES_MAX {
        return Err(Refusal::BadModel(format!(
            "digest of {} bytes for `{name}`",
            digest.len()
        )));
    }
    Ok(())
}

/// Checks a cursor list's shape (count, no repeated stream).
pub(crate) fn check_cursors(cursors: &[(StreamId, u64)]) -> Result<(), Refusal> {
    if cursors.len() > CURSORS_PER_COMMAND_MAX {
        return Err(Refusal::TooManyCursors(cursors.len()));
    }
    let mut seen = BTreeSet::new();
    for (stream, _) in cursors {
        if !seen.insert(stream) {
            return Err(Refusal::DuplicateStream(stream.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("valid id")
    }

    fn stream(s: &str) -> StreamId {
        s.parse().expect("valid stream id")
    }

    fn cluster() -> ControlState {
        let mut s = ControlState::default();
        s.set_members(
            [id("b1"), id("b2"), id("b3")].into(),
            [id("b4"), id("b1")].into(),
        );
        s
    }

    #[test]
    fn membership_lists_a_promoted_learner_once() {
        let s = cluster();
        assert_eq!(s.voters.len(), 3);
        assert_eq!(s.learners, [id("b4")].into());
    }

    #[test]
    fn drain_is_idempotent_and_only_for_members() {
        let mut s = cluster();
        let drain = |drained| Command::SetDrain {
            node: id("b2"),
            drained,
        };
        assert!(matches!(
            s.apply(&drain(true), 1),
            Response::Drain { changed: true, .. }
        ));
        assert!(matches!(
            s.apply(&drain(true), 1),
            Response::Drain { changed: false, .. }
        ));
        assert!(s.is_drained(&id("b2")));
        assert!(matches!(
            s.apply(&drain(false), 1),
            Response::Drain { changed: true, .. }
        ));
        assert!(!s.is_drained(&id("b2")));
        let stranger = Command::SetDrain {
            node: id("zz"),
            drained: true,
        };
        assert_eq!(
            s.apply(&stranger, 1),
            Response::Refused(Refusal::UnknownNode(id("zz")))
        );
    }

    #[test]
    fn cursors_only_move_forward_and_all_or_nothing() {
        let mut s = cluster();
        let a = stream("b1/aggregates/north");
        let b = stream("b2/aggregates/south");
        let adv = |term, cursors: Vec<(StreamId, u64)>| Command::AdvanceCursors { term, cursors };

        let r = s.apply(&adv(3, vec![(a.clone(), 10), (b.clone(), 5)]), 3);
        assert_eq!(
            r,
            Response::Cursors {
                advanced: vec![
                    CursorMove {
                        stream: a.clone(),
                        from: 0,
                        to: 10
                    },
                    CursorMove {
                        stream: b.clone(),
                        from: 0,
                        to: 5
                    },
                ],
                unchanged: 0
            }
        );
        // A retry of the same advance changes nothing and is not an error.
        let r = s.apply(&adv(3, vec![(a.clone(), 10), (b.clone(), 5)]), 3);
        assert_eq!(
            r,
            Response::Cursors {
                advanced: vec![],
                unchanged: 2
            }
        );

        // One cursor going backwards refuses the whole command: `a` does not move either.
        let r = s.apply(&adv(3, vec![(a.clone(), 20), (b.clone(), 4)]), 3);
        assert_eq!(
            r,
            Response::Refused(Refusal::CursorsBehind(vec![CursorBehind {
                stream: b.clone(),
                committed: 5,
                proposed: 4
            }]))
        );
        assert_eq!(s.cursor(&a), 10);
        assert_eq!(s.cursor(&b), 5);
    }

    #[test]
    fn a_cursor_advance_from_a_replaced_gateway_is_refused() {
        let mut s = cluster();
        let a = stream("b1/aggregates/north");
        let cmd = Command::AdvanceCursors {
            term: 3,
            cursors: vec![(a.clone(), 10)],
        };
        assert_eq!(
            s.apply(&cmd, 4),
            Response::Refused(Refusal::StaleTerm {
                command_term: 3,
                entry_term: 4
            })
        );
        assert_eq!(s.cursor(&a), 0);
    }

    #[test]
    fn malformed_cursor_lists_are_refused() {
        let mut s = cluster();
        let a = stream("b1/aggregates/north");
        let dup = Command::AdvanceCursors {
            term: 1,
            cursors: vec![(a.clone(), 1), (a.clone(), 2)],
        };
        assert_eq!(
            s.apply(&dup, 1),
            Response::Refused(Refusal::DuplicateStream(a))
        );
    }

    #[test]
    fn model_versions_never_go_back_and_never_change_content() {
        let mut s = cluster();
        let set = |version, digest: &str| Command::SetModel {
            name: "queue-lstm".into(),
            version,
            digest: digest.into(),
            size: 1000,
        };
        assert!(matches!(
            s.apply(&set(2, "aa"), 1),
            Response::Model { changed: true, .. }
        ));
        assert!(matches!(
            s.apply(&set(2, "aa"), 1),
            Response::Model { changed: false, .. }
        ));
        assert!(matches!(
            s.apply(&set(2, "bb"), 1),
            Response::Refused(Refusal::ModelConflict { .. })
        ));
        assert!(matches!(
            s.apply(&set(1, "aa"), 1),
            Response::Refused(Refusal::ModelVersionBehind {
                current: 2,
                proposed: 1,
                ..
            })
        ));
        assert!(matches!(
            s.apply(&set(3, ""), 1),
            Response::Refused(Refusal::BadModel(_))
        ));
        assert_eq!(s.models["queue-lstm"].version, 2);
    }

    #[test]
    fn refusals_read_well() {
        let r = Refusal::CursorsBehind(vec![CursorBehind {
            stream: stream("b1/aggregates/north"),
            committed: 5,
            proposed: 4,
        }]);
        assert_eq!(
            r.to_string(),
            "1 cursor(s) would move backwards (first: b1/aggregates/north at 5, proposed 4); \
             nothing changed"
        );
    }

    proptest::proptest! {
        /// Whatever advances arrive, in whatever order, a cursor never decreases and ends at the
        /// highest value of the commands that were accepted.
        #[test]
        fn cursors_are_monotonic(cmds in proptest::collection::vec(
            proptest::collection::vec((0usize..3, 0u64..50), 1..4), 1..40)
        ) {
            let streams = [stream("b1/aggregates/a"), stream("b1/aggregates/b"), stream("b2/aggregates/c")];
            let mut s = cluster();
            let mut highest = [0u64; 3];
            for cmd in cmds {
                let before = s.cursors.clone();
                let cursors: Vec<(StreamId, u64)> =
                    cmd.iter().map(|(i, n)| (streams[*i].clone(), *n)).collect();
                let r = s.apply(&Command::AdvanceCursors { term: 1, cursors }, 1);
                for (stream, v) in &before {
                    proptest::prop_assert!(s.cursor(stream) >= *v);
                }
                match r {
                    Response::Cursors { .. } => {
                        for (i, n) in &cmd {
                            highest[*i] = highest[*i].max(*n);
                        }
                    }
                    Response::Refused(_) => proptest::prop_assert_eq!(&s.cursors, &before),
                    other => proptest::prop_assert!(false, "unexpected {:?}", other),
                }
            }
            for (i, st) in streams.iter().enumerate() {
                proptest::prop_assert_eq!(s.cursor(st), highest[i]);
            }
        }
    }
}

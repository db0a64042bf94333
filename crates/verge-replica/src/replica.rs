//! The replica role: keeping copies of neighbours' streams.
//!
//! A [`Replica`] holds, per copied stream, how far the local store has it (head) and how far on
//! disk (durable), and per owner the newest incarnation (`epoch`) it has heard from. It is fed
//! the messages owners send ([`ToReplica`]) and the store's flush results, and answers with
//! [`ReplicaAction`]s: what to append to the store, what to send back. It does no IO and reads
//! no clock: the driver (the node's store actor) owns the store and the connections.
//!
//! Rules it keeps:
//! - Only a stream's owner appends to it or asks for its head (the sender comes from the
//!   connection's certificate, never from the message).
//! - Records are taken only if they follow on from the head; re-delivered ones are skipped; a gap
//!   is answered with a [`ToOwner::Nack`] carrying the head, so the owner resends from there.
//! - An [`ToOwner::Ack`] is sent only for what is durable.
//! - After answering an owner's [`ToReplica::HwmQuery`] (or taking an append) from incarnation
//!   `e`, appends from incarnations older than `e` are dropped: a crashed owner's messages still in
//!   flight must not land after its successor has counted what this node holds.
//!
//! It does not decide placement, retention or reads for people; the owner and the store do.

use std::collections::BTreeMap;

use verge_proto::replication::{Append, ToOwner, ToReplica};
use verge_proto::{NodeId, Record, StreamId};

use crate::config::ReplicaConfig;
use crate::error::{ConfigError, ProtocolError};

/// One stream copy as the local store holds it when the replica core starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCopy {
    /// The stream (owned by another node).
    pub stream: StreamId,
    /// The highest sequence number stored.
    pub head: u64,
    /// The highest sequence number stored durably.
    pub durable: u64,
}

/// What happens to a replica.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaEvent {
    /// A message from `from`, the node named by the connection's certificate.
    Received {
        /// The sender.
        from: NodeId,
        /// The message.
        msg: ToReplica,
    },
    /// A flush made the stream durable up to `up_to` (the store's durable head).
    LocalDurable {
        /// The stream.
        stream: StreamId,
        /// The store's durable head for it.
        up_to: u64,
    },
}

/// What the driver must do for a replica, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaAction {
    /// Drop the copy's records and continue it at `next_seq`: the owner no longer retains what
    /// lies between this copy's head and `next_seq`. Always followed by an [`ReplicaAction::Store`]
    /// starting at `next_seq`.
    Reset {
        /// The stream.
        stream: StreamId,
        /// The next sequence number the copy will hold.
        next_seq: u64,
    },
    /// Append `records` to the store as `first_seq, first_seq + 1, …` (`first_seq` is always the
    /// copy's head + 1). They become durable with a later flush, which the driver reports as
    /// [`ReplicaEvent::LocalDurable`]. If the store fails, rebuild the core from the store.
    Store {
        /// The stream.
        stream: StreamId,
        /// The first record's sequence number.
        first_seq: u64,
        /// The records.
        records: Vec<Record>,
    },
    /// Send `msg` to `to`.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: ToOwner,
    },
    /// Read up to `count` records of `stream` from `from_seq` and send them to `to` as a
    /// [`ToOwner::FetchReply`] with this `head`.
    SendFetched {
        /// The asker.
        to: NodeId,
        /// The stream.
        stream: StreamId,
        /// The first sequence number asked for (records before the store's first retained one
        /// are simply missing; `first_seq` of the reply says where the records start).
        from_seq: u64,
        /// The most records to send.
        count: u32,
        /// The copy's head, for the reply.
        head: u64,
    },
    /// A peer broke the protocol; the message was ignored. Log and count it.
    Refused {
        /// The error, naming the peer.
        error: ProtocolError,
    },
}

#[derive(Debug, Clone)]
struct Copy {
    head: u64,
    durable: u64,
    /// An append arrived whose records are not all durable yet: acknowledge at the next flush.
    ack_owed: bool,
}

/// The replica state machine of one node, for all the streams it copies.
#[derive(Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    copies: BTreeMap<StreamId, Copy>,
    /// The newest incarnation heard from, per owner. Volatile on purpose: a restart of this node
    /// ends every connection, so no message from before it can arrive afterwards.
    epochs: BTreeMap<NodeId, u64>,
}

impl Replica {
    /// A replica core for the copies the local store holds.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] if the configuration is invalid.
    pub fn new(
        cfg: ReplicaConfig,
        stored: impl IntoIterator<Item = StoredCopy>,
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let copies = stored
            .into_iter()
            .map(|c| {
                let copy = Copy {
                    head: c.head,
                    durable: c.durable.min(c.head),
                    ack_owed: false,
                };
                (c.stream, copy)
            })
            .collect();
        Ok(Self {
            cfg,
            copies,
            epochs: BTreeMap::new(),
        })
    }

    /// The copy's head and durable head, if this node holds a copy of `stream`.
    pub fn copy(&self, stream: &StreamId) -> Option<(u64, u64)> {
        self.copies.get(stream).map(|c| (c.head, c.durable))
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, event: ReplicaEvent) -> Vec<ReplicaAction> {
        let mut out = Vec::new();
        match event {
            ReplicaEvent::Received { from, msg } => {
                if let Err(error) = self.on_message(from, msg, &mut out) {
                    out.push(ReplicaAction::Refused { error });
                }
            }
            ReplicaEvent::LocalDurable { stream, up_to } => {
                if let Some(c) = self.copies.get_mut(&stream) {
                    c.durable = c.durable.max(up_to.min(c.head));
                    if c.ack_owed {
                        if c.durable >= c.head {
                            c.ack_owed = false;
                        }
                        out.push(ReplicaAction::Send {
                            to: stream.owner.clone(),
                            msg: ToOwner::Ack {
                                durable: c.durable,
                                stream,
                            },
                        });
                    }
                }
            }
        }
        out
    }

    /// Records `epoch` for `owner`; false if it is older than one already heard from.
    fn admit_epoch(&mut self, owner: &NodeId, epoch: u64) -> bool {
        match self.epochs.get_mut(owner) {
            Some(e) if *e > epoch => false,
            Some(e) => {
                *e = epoch;
                true
            }
            None => {
                self.epochs.insert(owner.clone(), epoch);
                true
            }
        }
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: ToReplica,
        out: &mut Vec<ReplicaAction>,
    ) -> Result<(), ProtocolError> {
        match msg {
            ToReplica::Append(a) => self.on_append(from, a, out),
            ToReplica::HwmQuery { stream, epoch } => {
                if stream.owner != from {
                    return Err(ProtocolError::NotOwner {
                        from,
                        stream,
                        what: "a high-water mark query",
                    });
                }
                // Answer even a query from an older incarnation (it is harmless: the owner drops
                // answers to epochs it no longer is), but never lower the fence.
                self.admit_epoch(&from, epoch);
                let (head, durable) = self.copy(&stream).unwrap_or((0, 0));
                out.push(ReplicaAction::Send {
                    to: from,
                    msg: ToOwner::HwmReply {
                        stream,
                        epoch,
                        head,
                        durable,
                    },
                });
                Ok(())
            }
            ToReplica::Fetch {
                stream,
                from_seq,
                count,
            } => {
                // Any peer may read a copy: reads are open inside the cluster.
                let head = self.copy(&stream).map_or(0, |(h, _)| h);
                let from_seq = from_seq.max(1);
                let count = count.min(self.cfg.fetch_records_max);
                if head < from_seq || count == 0 {
                    out.push(ReplicaAction::Send {
                        to: from,
                        msg: ToOwner::FetchReply {
                            stream,
                            first_seq: from_seq,
                            records: Vec::new(),
                            head,
                        },
                    });
                } else {
                    out.push(ReplicaAction::SendFetched {
                        to: from,
                        stream,
                        from_seq,
                        count,
                        head,
                    });
                }
                Ok(())
            }
        }
    }

    fn on_append(
        &mut self,
        from: NodeId,
        a: Append,
        out: &mut Vec<ReplicaAction>,
    ) -> Result<(), ProtocolError> {
        let Append {
            stream,
            epoch,
            first_seq,
            start_seq,
            mut records,
        } = a;
        if stream.owner != from {
            return Err(ProtocolError::NotOwner {
                from,
                stream,
                what: "an append",
            });
        }
        if records.len() > self.cfg.append_records_max {
            return Err(ProtocolError::TooManyRecords {
                from,
                count: records.len(),
                max: self.cfg.append_records_max,
            });
        }
        if first_seq == 0 {
            return Err(ProtocolError::ZeroSeq { from, stream });
        }
        if !self.admit_epoch(&from, epoch) {
            // A message from a crashed incarnation of the owner, overtaken by its successor.
            return Ok(());
        }
        if !self.copies.contains_key(&stream) && self.copies.len() >= self.cfg.streams_max {
            return Err(ProtocolError::TooManyStreams {
                from,
                stream,
                max: self.cfg.streams_max,
            });
        }
        let copy = self.copies.entry(stream.clone()).or_insert(Copy {
            head: 0,
            durable: 0,
            ack_owed: false,
        });
        let last = first_seq
            .saturating_add(records.len() as u64)
            .saturating_sub(1);
        if first_seq > copy.head + 1 {
            if first_seq != start_seq {
                out.push(ReplicaAction::Send {
                    to: from,
                    msg: ToOwner::Nack {
                        stream,
                        head: copy.head,
                    },
                });
                return Ok(());
            }
            // The owner no longer has what lies between our head and `first_seq`.
            copy.head = first_seq - 1;
            out.push(ReplicaAction::Reset {
                stream: stream.clone(),
                next_seq: first_seq,
            });
        }
        let skip = usize::try_from(copy.head + 1 - first_seq).unwrap_or(usize::MAX);
        if skip < records.len() {
            let fresh = records.split_off(skip);
            let at = copy.head + 1;
            copy.head += fresh.len() as u64;
            out.push(ReplicaAction::Store {
                stream: stream.clone(),
                first_seq: at,
                records: fresh,
            });
        }
        if copy.durable >= last {
            // All of it was already durable (a re-delivery): say so at once.
            out.push(ReplicaAction::Send {
                to: from,
                msg: ToOwner::Ack {
                    stream,
                    durable: copy.durable,
                },
            });
        } else {
            copy.ack_owed = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_proto::StreamKind;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    fn stream() -> StreamId {
        StreamId::new(id("b1"), StreamKind::Raw, "s").expect("id")
    }

    fn recs(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                ts_ms: i as i64,
                values: vec![i as f64],
            })
            .collect()
    }

    fn append(epoch: u64, first_seq: u64, n: usize) -> ReplicaEvent {
        ReplicaEvent::Received {
            from: id("b1"),
            msg: ToReplica::Append(Append {
                stream: stream(),
                epoch,
                first_seq,
                start_seq: 1,
                records: recs(n),
            }),
        }
    }

    fn replica() -> Replica {
        Replica::new(ReplicaConfig::default(), []).expect("valid")
    }

    #[test]
    fn stores_then_acks_only_when_durable() {
        let mut r = replica();
        let a = r.handle(append(1, 1, 3));
        assert_eq!(
            a,
            vec![ReplicaAction::Store {
                stream: stream(),
                first_seq: 1,
                records: recs(3)
            }]
        );
        let a = r.handle(ReplicaEvent::LocalDurable {
            stream: stream(),
            up_to: 3,
        });
        assert_eq!(
            a,
            vec![ReplicaAction::Send {
                to: id("b1"),
                msg: ToOwner::Ack {
                    stream: stream(),
                    durable: 3
                }
            }]
        );
        // Nothing owed any more: a later flush says nothing.
        assert!(
            r.handle(ReplicaEvent::LocalDurable {
                stream: stream(),
                up_to: 3
            })
            .is_empty()
        );
    }

    #[test]
    fn a_gap_is_answered_with_the_head() {
        let mut r = replica();
        r.handle(append(1, 1, 2));
        let a = r.handle(append(1, 5, 2));
        assert_eq!(
            a,
            vec![ReplicaAction::Send {
                to: id("b1"),
                msg: ToOwner::Nack {
                    stream: stream(),
                    head: 2
                }
            }]
        );
    }

    #[test]
    fn a_redelivery_stores_only_the_new_part_and_a_durable_one_is_acked_at_once() {
        let mut r = replica();
        r.handle(append(1, 1, 3));
        r.handle(ReplicaEvent::LocalDurable {
            stream: stream(),
            up_to: 3,
        });
        let a = r.handle(append(1, 2, 4));
        assert_eq!(
            a,
            vec![ReplicaAction::Store {
                stream: stream(),
                first_seq: 4,
                records: recs(4)[2..].to_vec()
            }]
        );
        let a = r.handle(append(1, 1, 2));
        assert!(matches!(
            &a[..],
            [ReplicaAction::Send {
                msg: ToOwner::Ack { durable: 3, .. },
                ..
            }]
        ));
    }

    #[test]
    fn only_the_owner_may_append_or_query() {
        let mut r = replica();
        let a = r.handle(ReplicaEvent::Received {
            from: id("b2"),
            msg: ToReplica::HwmQuery {
                stream: stream(),
                epoch: 1,
            },
        });
        assert!(matches!(
            &a[..],
            [ReplicaAction::Refused {
                error: ProtocolError::NotOwner { .. }
            }]
        ));
        assert!(r.copy(&stream()).is_none());
    }

    #[test]
    fn a_query_fences_older_incarnations() {
        let mut r = replica();
        r.handle(append(1, 1, 2));
        let a = r.handle(ReplicaEvent::Received {
            from: id("b1"),
            msg: ToReplica::HwmQuery {
                stream: stream(),
                epoch: 2,
            },
        });
        assert!(matches!(
            &a[..],
            [ReplicaAction::Send {
                msg: ToOwner::HwmReply {
                    head: 2,
                    durable: 0,
                    epoch: 2,
                    ..
                },
                ..
            }]
        ));
        // The crashed incarnation's append, still in flight, is dropped.
        assert!(r.handle(append(1, 3, 2)).is_empty());
        assert_eq!(r.copy(&stream()), Some((2, 0)));
        assert_eq!(r.handle(append(2, 3, 1)).len(), 1);
    }

    #[test]
    fn an_append_at_the_owners_first_retained_seq_restarts_the_copy() {
        let mut r = replica();
        r.handle(append(1, 1, 2));
        let a = r.handle(ReplicaEvent::Received {
            from: id("b1"),
            msg: ToReplica::Append(Append {
                stream: stream(),
                epoch: 1,
                first_seq: 100,
                start_seq: 100,
                records: recs(1),
            }),
        });
        assert_eq!(
            a,
            vec![
                ReplicaAction::Reset {
                    stream: stream(),
                    next_seq: 100
                },
                ReplicaAction::Store {
                    stream: stream(),
                    first_seq: 100,
                    records: recs(1)
                }
            ]
        );
    }

    #[test]
    fn fetches_are_clamped_and_empty_when_nothing_is_held() {
        let mut r = Replica::new(
            ReplicaConfig {
                fetch_records_max: 10,
                ..ReplicaConfig::default()
            },
            [StoredCopy {
                stream: stream(),
                head: 50,
                durable: 40,
            }],
        )
        .expect("valid");
        let a = r.handle(ReplicaEvent::Received {
            from: id("b1"),
            msg: ToReplica::Fetch {
                stream: stream(),
                from_seq: 41,
                count: 1000,
            },
        });
        assert_eq!(
            a,
            vec![ReplicaAction::SendFetched {
                to: id("b1"),
                stream: stream(),
                from_seq: 41,
                count: 10,
                head: 50
            }]
        );
        let a = r.handle(ReplicaEvent::Received {
            from: id("b1"),
            msg: ToReplica::Fetch {
                stream: stream(),
                from_seq: 51,
                count: 10,
            },
        });
        let empty_reply = matches!(
            &a[..],
            [ReplicaAction::Send {
                msg: ToOwner::FetchReply { records, head: 50, .. },
                ..
            }] if records.is_empty()
        );
        assert!(empty_reply, "{a:?}");
    }

    #[test]
    fn oversize_and_zero_seq_appends_are_refused() {
        let mut r = Replica::new(
            ReplicaConfig {
                append_records_max: 2,
                ..ReplicaConfig::default()
            },
            [],
        )
        .expect("valid");
        assert!(matches!(
            &r.handle(append(1, 1, 3))[..],
            [ReplicaAction::Refused {
                error: ProtocolError::TooManyRecords { .. }
            }]
        ));
        assert!(matches!(
            &r.handle(append(1, 0, 1))[..],
            [ReplicaAction::Refused {
                error: ProtocolError::ZeroSeq { .. }
            }]
        ));
    }
}

//! Messages of the replication protocol between a stream's owner and its replicas.
//!
//! Every stream has one writer, its owner. The owner pushes records to the stream's replicas
//! ([`ToReplica::Append`]); a replica answers with its durable high-water mark
//! ([`ToOwner::Ack`]) once the records are on its disk, or with its head ([`ToOwner::Nack`]) when
//! an append does not follow on from what it holds, so the owner resends from there. A restarted
//! owner first asks every node that may hold records of its stream for its head
//! ([`ToReplica::HwmQuery`], answered by [`ToOwner::HwmReply`]) and pulls back whatever its own
//! disk lost ([`ToReplica::Fetch`], answered by [`ToOwner::FetchReply`]) before it numbers a new
//! record. The decisions live in `verge-replica`; this module only says what crosses the wire.
//!
//! The sender's node id is never inside a message: it is the node id of the certificate that
//! authenticated the connection the message arrived on, and the receiver checks it (only a
//! stream's owner may append to it).
//!
//! Sequence numbers are dense from 1; 0 means "nothing" (an empty stream's head).

use serde::{Deserialize, Serialize};

use crate::{Record, StreamId};

/// The most records one [`ToReplica::Append`] or [`ToOwner::FetchReply`] may carry. With the
/// widest records (64 values) such a message stays near 2 MiB, well inside the default frame bound.
pub const RECORDS_PER_MESSAGE_MAX: usize = 4096;

/// One replication message, in either direction.
///
/// The split into [`ToReplica`] and [`ToOwner`] lets a node route a message to the right state
/// machine by its type: requests go to the node's replica role, replies to its owner role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReplicationMessage {
    /// From a stream's owner to a node holding (or about to hold) a copy.
    ToReplica(ToReplica),
    /// From a replica back to the stream's owner.
    ToOwner(ToOwner),
}

/// What a stream's owner sends to its replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToReplica {
    /// Records of the owner's stream, to be stored after what the replica holds.
    Append(Append),
    /// "What do you hold of this stream?" Sent by a restarted owner before it numbers new records,
    /// and by a running owner when a replica (re)appears.
    ///
    /// Receiving it also fences the owner's earlier incarnations: from now on the replica refuses
    /// appends with an older `epoch`, so a message the crashed incarnation left in flight cannot
    /// land after the new one has counted what the replica holds.
    HwmQuery {
        /// The stream asked about; its owner must be the sender.
        stream: StreamId,
        /// The sender's incarnation.
        epoch: u64,
    },
    /// "Send me your records of this stream from `from_seq`." Used by a restarting owner to pull
    /// back the tail its own disk lost.
    Fetch {
        /// The stream to read.
        stream: StreamId,
        /// The first sequence number wanted (at least 1).
        from_seq: u64,
        /// The most records wanted; the replica may send fewer.
        count: u32,
    },
}

/// A run of consecutive records of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Append {
    /// The stream; its owner must be the sender.
    pub stream: StreamId,
    /// The sender's incarnation, strictly greater after each restart of the owner. A replica
    /// refuses an append from an incarnation older than one it has already heard from.
    pub epoch: u64,
    /// The sequence number of `records[0]` (at least 1).
    pub first_seq: u64,
    /// The first sequence number the owner still retains. When `first_seq` is beyond the
    /// replica's head + 1 and equals `start_seq`, the records in between are gone everywhere
    /// (retention dropped them), so the replica restarts its copy at `first_seq` instead of
    /// asking for records that no longer exist.
    pub start_seq: u64,
    /// At most [`RECORDS_PER_MESSAGE_MAX`] records, numbered from `first_seq`.
    pub records: Vec<Record>,
}

/// What a replica sends back to a stream's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToOwner {
    /// "I hold everything up to `durable` on disk." Cumulative; sent once appended records are
    /// durable, and again for a re-delivered append.
    Ack {
        /// The stream.
        stream: StreamId,
        /// The replica's durable high-water mark.
        durable: u64,
    },
    /// "That append does not follow on from what I hold: send from `head + 1`."
    Nack {
        /// The stream.
        stream: StreamId,
        /// The highest sequence number the replica holds, durable or not.
        head: u64,
    },
    /// The answer to [`ToReplica::HwmQuery`].
    HwmReply {
        /// The stream.
        stream: StreamId,
        /// The `epoch` of the query answered, so the owner can tell answers to its current
        /// incarnation from late answers to an older one.
        epoch: u64,
        /// The highest sequence number held, durable or not (0 if none).
        head: u64,
        /// The highest sequence number held durably (0 if none).
        durable: u64,
    },
    /// The answer to [`ToReplica::Fetch`].
    FetchReply {
        /// The stream.
        stream: StreamId,
        /// The sequence number of `records[0]`; with retention this may be later than asked.
        first_seq: u64,
        /// At most [`RECORDS_PER_MESSAGE_MAX`] consecutive records, possibly none.
        records: Vec<Record>,
        /// The replica's head when it answered.
        head: u64,
    },
}

impl ToReplica {
    /// The stream the message is about.
    pub fn stream(&self) -> &StreamId {
        match self {
            ToReplica::Append(a) => &a.stream,
            ToReplica::HwmQuery { stream, .. } | ToReplica::Fetch { stream, .. } => stream,
        }
    }
}

impl ToOwner {
    /// The stream the message is about.
    pub fn stream(&self) -> &StreamId {
        match self {
            ToOwner::Ack { stream, .. }
            | ToOwner::Nack { stream, .. }
            | ToOwner::HwmReply { stream, .. }
            | ToOwner::FetchReply { stream, .. } => stream,
        }
    }
}

impl From<ToReplica> for ReplicationMessage {
    fn from(m: ToReplica) -> Self {
        ReplicationMessage::ToReplica(m)
    }
}

impl From<ToOwner> for ReplicationMessage {
    fn from(m: ToOwner) -> Self {
        ReplicationMessage::ToOwner(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FRAME_BYTES_MAX_DEFAULT, FrameDecoder, NodeId, StreamKind, encode_frame};
    use proptest::prelude::*;

    fn stream() -> StreamId {
        StreamId::new(NodeId::new("b1").expect("id"), StreamKind::Raw, "e1_A1_0").expect("id")
    }

    fn round_trip(m: &ReplicationMessage) -> ReplicationMessage {
        let mut dec = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
        dec.extend(&encode_frame(m, FRAME_BYTES_MAX_DEFAULT).expect("encodes"));
        dec.next_frame::<ReplicationMessage>()
            .expect("decodes")
            .expect("one frame")
    }

    #[test]
    fn every_message_round_trips() {
        let records = vec![
            Record {
                ts_ms: 1,
                values: vec![1.0, 2.5],
            },
            Record {
                ts_ms: 2,
                values: vec![-0.0, f64::MAX],
            },
        ];
        let msgs: Vec<ReplicationMessage> = vec![
            ToReplica::Append(Append {
                stream: stream(),
                epoch: 3,
                first_seq: 10,
                start_seq: 1,
                records: records.clone(),
            })
            .into(),
            ToReplica::HwmQuery {
                stream: stream(),
                epoch: 3,
            }
            .into(),
            ToReplica::Fetch {
                stream: stream(),
                from_seq: 5,
                count: 100,
            }
            .into(),
            ToOwner::Ack {
                stream: stream(),
                durable: 11,
            }
            .into(),
            ToOwner::Nack {
                stream: stream(),
                head: 4,
            }
            .into(),
            ToOwner::HwmReply {
                stream: stream(),
                epoch: 3,
                head: 12,
                durable: 11,
            }
            .into(),
            ToOwner::FetchReply {
                stream: stream(),
                first_seq: 5,
                records,
                head: 12,
            }
            .into(),
        ];
        for m in &msgs {
            assert_eq!(&round_trip(m), m);
        }
    }

    #[test]
    fn the_largest_append_of_the_widest_records_fits_a_default_frame() {
        let m: ReplicationMessage = ToReplica::Append(Append {
            stream: stream(),
            epoch: u64::MAX,
            first_seq: u64::MAX,
            start_seq: u64::MAX,
            records: vec![
                Record {
                    ts_ms: i64::MIN,
                    values: vec![f64::MIN_POSITIVE; 64],
                };
                RECORDS_PER_MESSAGE_MAX
            ],
        })
        .into();
        let frame = encode_frame(&m, FRAME_BYTES_MAX_DEFAULT).expect("fits");
        assert!(frame.len() < FRAME_BYTES_MAX_DEFAULT / 2 + FRAME_BYTES_MAX_DEFAULT / 4);
    }

    proptest! {
        #[test]
        fn appends_round_trip(
            epoch in any::<u64>(),
            first_seq in 1u64..,
            rows in proptest::collection::vec(
                (any::<i64>(), proptest::collection::vec(-1e12f64..1e12, 0..8)), 0..32),
        ) {
            let records: Vec<Record> =
                rows.into_iter().map(|(ts_ms, values)| Record { ts_ms, values }).collect();
            let m: ReplicationMessage = ToReplica::Append(Append {
                stream: stream(),
                epoch,
                first_seq,
                start_seq: 1,
                records,
            })
            .into();
            prop_assert_eq!(round_trip(&m), m);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut dec = FrameDecoder::new(4096);
            dec.extend(&bytes);
            while let Ok(Some(_)) = dec.next_frame::<ReplicationMessage>() {}
        }
    }
}

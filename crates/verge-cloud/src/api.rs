//! The cloud API: what a gateway sends, what the cloud answers, and the checks a batch must pass.
//!
//! These are JSON bodies over HTTPS under versioned paths ([`PATH_BATCHES`], [`PATH_WINDOWS`],
//! [`PATH_SUMMARY`]). They derive `Serialize` here rather than in `verge-proto` because this is a
//! different boundary: the cloud speaks JSON to whatever sits behind it, not the mesh's bincode
//! frames, and DESIGN.md gives the cloud crate its own API types. A change that breaks a body
//! gets a new path (`/v2/...`), never a silent reinterpretation: unknown fields are refused.

use serde::{Deserialize, Serialize};
use verge_proto::id::validate_label;
use verge_proto::{IdError, NodeId, Record, StreamId, StreamIdError};

/// `POST` a [`Batch`]; answered with a [`BatchAck`] or an [`ErrorBody`].
/// `GET ?cluster=C[&after=N][&limit=N]`: the cluster's batch log, answered with a
/// [`BatchesPage`].
pub const PATH_BATCHES: &str = "/v1/batches";
/// `GET ?stream=S[&cluster=C][&from=F][&to=T][&limit=N]`; answered with a [`WindowsPage`].
pub const PATH_WINDOWS: &str = "/v1/windows";
/// `GET`; answered with a [`Summary`].
pub const PATH_SUMMARY: &str = "/v1/summary";
/// `GET`; `ok` while the server runs and its store accepts writes. Needs no token.
pub const PATH_HEALTH: &str = "/healthz";
/// `GET`; Prometheus text. Needs no token.
pub const PATH_METRICS: &str = "/metrics";
/// `GET` the [`Fault`] in force, `POST` a new one; only on a cloud started with fault injection
/// on (`verge cloud serve --faults`), answered 403 otherwise. Same credentials as batches.
pub const PATH_FAULTS: &str = "/v1/faults";

/// How long `delay` holds each batch when the request names no `delay_ms`.
pub const FAULT_DELAY_MS_DEFAULT: u64 = 10_000;
/// The longest `delay_ms` accepted: five minutes, long past any client's timeout.
pub const FAULT_DELAY_MS_MAX: u64 = 300_000;

/// The most windows one batch may carry (the body limit usually bites first).
pub const WINDOWS_PER_BATCH_MAX: usize = 100_000;
/// The most values (columns) one window may carry.
pub const VALUES_PER_WINDOW_MAX: usize = 256;
/// The most windows one `GET /v1/windows` answers with; the page says where to go on.
pub const WINDOWS_PAGE_MAX: usize = 100_000;
/// The page size when the query names none.
pub const WINDOWS_PAGE_DEFAULT: usize = 10_000;
/// The most batch records one `GET /v1/batches` answers with.
pub const BATCHES_PAGE_MAX: usize = 10_000;
/// The batch log's page size when the query names none.
pub const BATCHES_PAGE_DEFAULT: usize = 1000;

/// A run of one stream's records, dense from `first_seq` to `last_seq`, sent by the gateway of
/// `cluster` during Raft term `term`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The cluster (a DNS label, as in its CA) whose gateway sends the batch; terms are
    /// compared within a cluster only.
    pub cluster: String,
    /// The sender's Raft term: the cloud refuses a term lower than the highest it has accepted
    /// for the cluster, which fences a deposed gateway.
    pub term: u64,
    /// The sending gateway's node id (kept for the record; the term is what fences).
    pub gateway: String,
    /// The stream, as `owner/kind/sensor`.
    pub stream: String,
    /// The first sequence number in the batch (sequence numbers start at 1).
    pub first_seq: u64,
    /// The last sequence number in the batch, inclusive.
    pub last_seq: u64,
    /// The records `first_seq..=last_seq`, in order, one per sequence number.
    pub windows: Vec<Window>,
}

/// One record of a stream, with its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// The record's sequence number in its stream.
    pub seq: u64,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The record's values, one per column of the stream.
    pub values: Vec<f64>,
}

/// What identifies a batch: the cloud keeps each key once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchKey {
    /// The sending cluster.
    pub cluster: String,
    /// The stream, as text.
    pub stream: String,
    /// First sequence number.
    pub first_seq: u64,
    /// Last sequence number, inclusive.
    pub last_seq: u64,
}

impl std::fmt::Display for BatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} [{}..={}]",
            self.cluster, self.stream, self.first_seq, self.last_seq
        )
    }
}

/// Why a batch is refused as malformed (HTTP 400). Each names what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// The body is not a JSON batch.
    #[error("the body is not a batch: {0}")]
    Json(String),
    /// The cluster is not a DNS label.
    #[error("cluster: {0}")]
    Cluster(IdError),
    /// The gateway is not a node id.
    #[error("gateway: {0}")]
    Gateway(IdError),
    /// The stream is not `owner/kind/sensor`.
    #[error("stream: {0}")]
    Stream(StreamIdError),
    /// Sequence numbers start at 1.
    #[error("first_seq is 0; sequence numbers start at 1")]
    FirstSeqZero,
    /// The range runs backwards.
    #[error("last_seq {last} is below first_seq {first}")]
    Reversed {
        /// `first_seq`.
        first: u64,
        /// `last_seq`.
        last: u64,
    },
    /// No windows.
    #[error("the batch holds no windows")]
    Empty,
    /// More windows than a batch may carry.
    #[error("the batch holds {0} windows, more than the {WINDOWS_PER_BATCH_MAX} a batch may")]
    TooMany(usize),
    /// The number of windows does not match the range.
    #[error("the range {first}..={last} needs {expected} windows but the batch holds {got}")]
    Count {
        /// `first_seq`.
        first: u64,
        /// `last_seq`.
        last: u64,
        /// `last - first + 1`.
        expected: u64,
        /// `windows.len()`.
        got: usize,
    },
    /// A window's sequence number is not the next one.
    #[error(
        "window {index} has seq {got}, expected {expected} (windows must be dense and in order)"
    )]
    NotDense {
        /// Position in `windows`.
        index: usize,
        /// The sequence number it should have had.
        expected: u64,
        /// The one it had.
        got: u64,
    },
    /// A value is NaN or infinite.
    #[error("window seq {seq}: value {column} is not a finite number")]
    NotFinite {
        /// The window.
        seq: u64,
        /// The column.
        column: usize,
    },
    /// Windows of one stream carry different numbers of values.
    #[error("window seq {seq} has {got} values but the first window has {expected}")]
    Columns {
        /// The window.
        seq: u64,
        /// The first window's count.
        expected: usize,
        /// This window's count.
        got: usize,
    },
    /// Too many values in a window.
    #[error("window seq {seq} has {got} values, more than the {VALUES_PER_WINDOW_MAX} allowed")]
    TooManyValues {
        /// The window.
        seq: u64,
        /// Its count.
        got: usize,
    },
}

impl Batch {
    /// Builds a batch from a stream's records, numbering them from `first_seq`.
    pub fn from_records(
        cluster: &str,
        term: u64,
        gateway: &NodeId,
        stream: &StreamId,
        first_seq: u64,
        records: &[Record],
    ) -> Self {
        let windows: Vec<Window> = (first_seq..)
            .zip(records)
            .map(|(seq, r)| Window {
                seq,
                ts_ms: r.ts_ms,
                values: r.values.clone(),
            })
            .collect();
        let last_seq = (first_seq + windows.len() as u64).saturating_sub(1);
        Self {
            cluster: cluster.to_owned(),
            term,
            gateway: gateway.to_string(),
            stream: stream.to_string(),
            first_seq,
            last_seq,
            windows,
        }
    }

    /// The batch's key.
    pub fn key(&self) -> BatchKey {
        BatchKey {
            cluster: self.cluster.clone(),
            stream: self.stream.clone(),
            first_seq: self.first_seq,
            last_seq: self.last_seq,
        }
    }

    /// Parses and checks a JSON body: the only way the server accepts a batch.
    pub fn from_json(body: &[u8]) -> Result<Self, BatchError> {
        let batch: Batch =
            serde_json::from_slice(body).map_err(|e| BatchError::Json(e.to_string()))?;
        batch.check()?;
        Ok(batch)
    }

    /// Checks that the batch is consistent: names that parse, a dense range that matches its
    /// windows, finite values, the same number of columns in every window.
    pub fn check(&self) -> Result<(), BatchError> {
        validate_label(&self.cluster).map_err(BatchError::Cluster)?;
        NodeId::new(self.gateway.as_str()).map_err(BatchError::Gateway)?;
        self.stream
            .parse::<StreamId>()
            .map_err(BatchError::Stream)?;
        if self.first_seq == 0 {
            return Err(BatchError::FirstSeqZero);
        }
        if self.last_seq < self.first_seq {
            return Err(BatchError::Reversed {
                first: self.first_seq,
                last: self.last_seq,
            });
        }
        if self.windows.is_empty() {
            return Err(BatchError::Empty);
        }
        if self.windows.len() > WINDOWS_PER_BATCH_MAX {
            return Err(BatchError::TooMany(self.windows.len()));
        }
        let expected = self.last_seq - self.first_seq + 1;
        if expected != self.windows.len() as u64 {
            return Err(BatchError::Count {
                first: self.first_seq,
                last: self.last_seq,
                expected,
                got: self.windows.len(),
            });
        }
        let columns = self.windows[0].values.len();
        for (index, (w, seq)) in self.windows.iter().zip(self.first_seq..).enumerate() {
            if w.seq != seq {
                return Err(BatchError::NotDense {
                    index,
                    expected: seq,
                    got: w.seq,
                });
            }
            if w.values.len() > VALUES_PER_WINDOW_MAX {
                return Err(BatchError::TooManyValues {
                    seq,
                    got: w.values.len(),
                });
            }
            if w.values.len() != columns {
                return Err(BatchError::Columns {
                    seq,
                    expected: columns,
                    got: w.values.len(),
                });
            }
            if let Some(column) = w.values.iter().position(|v| !v.is_finite()) {
                return Err(BatchError::NotFinite { seq, column });
            }
        }
        Ok(())
    }
}

/// The cloud's answer to a batch it accepted (HTTP 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum BatchAck {
    /// The key was new: `stored` windows were new and stored, `duplicates` were already held
    /// (from a batch cut differently) and were not stored again.
    Stored {
        /// Windows stored now.
        stored: u64,
        /// Windows the cloud already held.
        duplicates: u64,
    },
    /// The key was already stored; nothing was stored again.
    Duplicate,
}

/// The body of every refusal: what went wrong, and for a fencing refusal (HTTP 409) the terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// For a stale term: the term the batch carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
    /// For a stale term: the highest term the cloud has accepted for the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest: Option<u64>,
}

/// What the cloud holds, per cluster, node and stream (`GET /v1/summary`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// One entry per cluster, by name.
    pub clusters: Vec<ClusterSummary>,
    /// One entry per (cluster, stream owner), by cluster then node.
    pub nodes: Vec<NodeSummary>,
    /// One entry per (cluster, stream), by cluster then stream.
    pub streams: Vec<StreamSummary>,
}

/// A cluster's totals and fencing term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// The cluster.
    pub cluster: String,
    /// The highest term accepted from its gateways.
    pub highest_term: u64,
    /// Batch keys stored.
    pub batches: u64,
    /// Windows stored.
    pub windows: u64,
}

/// The totals of the streams one node owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The cluster.
    pub cluster: String,
    /// The stream owner.
    pub node: String,
    /// Streams it owns that the cloud holds.
    pub streams: u64,
    /// Windows stored across them.
    pub windows: u64,
    /// Batch keys stored across them.
    pub batches: u64,
}

/// One stream's holdings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSummary {
    /// The cluster.
    pub cluster: String,
    /// The stream's owner.
    pub node: String,
    /// The stream.
    pub stream: String,
    /// Windows stored (each sequence number at most once).
    pub windows: u64,
    /// The lowest sequence number stored.
    pub first_seq: u64,
    /// The highest sequence number stored.
    pub last_seq: u64,
    /// Sequence numbers between `first_seq` and `last_seq` the cloud does not hold; 0 when the
    /// stream is held without a gap.
    pub missing: u64,
    /// Batch keys stored.
    pub batches: u64,
}

/// A page of one stream's windows in sequence order (`GET /v1/windows`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowsPage {
    /// The cluster the windows belong to; `None` when no cluster holds the stream.
    pub cluster: Option<String>,
    /// The stream.
    pub stream: String,
    /// The windows, by sequence number.
    pub windows: Vec<Window>,
    /// When the page was cut by its limit, the `from` that continues it.
    pub next_from: Option<u64>,
}

/// One batch the cloud accepted and stored, as its batch log shows it (`GET /v1/batches`).
/// Batches acknowledged as duplicates are not in the log: nothing new was stored for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedBatch {
    /// The sending cluster.
    pub cluster: String,
    /// The stream.
    pub stream: String,
    /// The batch key's first sequence number.
    pub first_seq: u64,
    /// The batch key's last sequence number, inclusive.
    pub last_seq: u64,
    /// The term the batch carried.
    pub term: u64,
    /// The gateway the batch named as its sender.
    pub gateway: String,
    /// Windows it stored.
    pub stored: u64,
    /// Its windows the cloud already held.
    pub duplicates: u64,
    /// Its place in the order the cloud accepted batches: from 1, increasing by one per
    /// stored batch across all clusters (so a cluster's log may skip numbers). 0 for a batch
    /// stored by a cloud too old to number them (such batches are not listed).
    pub accepted: u64,
}

/// A page of a cluster's batch log in acceptance order (`GET /v1/batches`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchesPage {
    /// The batches, by `accepted`.
    pub batches: Vec<AcceptedBatch>,
    /// When the page was cut by its limit, the `after` that continues it.
    pub next_after: Option<u64>,
}

/// How the reference cloud misbehaves towards `POST /v1/batches` (fault injection, for tests
/// and simulations). Every other endpoint, `/v1/faults` included, answers normally in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// No fault: batches are handled normally.
    None,
    /// HTTP 500 with an [`ErrorBody`]; nothing is stored.
    Error,
    /// The batch is handled normally (stored if it would have been, refused if it would have
    /// been), but the answer is replaced by HTTP 200 with a body that is not a [`BatchAck`]: the
    /// worst case, where the client cannot know the batch is held and must retry, and the retry
    /// is deduplicated.
    Garbage,
    /// The request is held for `delay_ms`, then handled normally. A client whose timeout is
    /// shorter gives up first; whether the batch is then stored depends on whether its
    /// connection is still readable when the delay ends, and a retry is deduplicated either way.
    Delay,
    /// The connection is closed without an HTTP answer, before the body is read; nothing is
    /// stored. Like a cloud that is down, as far as the batch is concerned.
    Down,
    /// The term fence is off: a batch whose term is below the cluster's highest is stored (with
    /// its own term, leaving the highest as it was) and acknowledged instead of refused with
    /// 409. Everything else is handled normally. A deliberately broken cloud, for showing that
    /// a checker of the fencing guarantee catches it.
    #[serde(rename = "accept-stale")]
    AcceptStale,
}

impl FaultMode {
    /// The name used on the wire, on the command line and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::None => "none",
            FaultMode::Error => "error",
            FaultMode::Garbage => "garbage",
            FaultMode::Delay => "delay",
            FaultMode::Down => "down",
            FaultMode::AcceptStale => "accept-stale",
        }
    }
}

impl std::fmt::Display for FaultMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of `POST /v1/faults`, and the answer to both `GET` and `POST` (the fault now in
/// force, with `delay_ms` filled in for `delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// What the cloud does to batches.
    pub mode: FaultMode,
    /// For `delay` only: how long each batch is held, in milliseconds, at most
    /// [`FAULT_DELAY_MS_MAX`]; [`FAULT_DELAY_MS_DEFAULT`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// Why a [`Fault`] is refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// `delay_ms` was given for a mode that does not delay.
    #[error("delay_ms applies to mode `delay` only, not `{0}`")]
    DelayWithoutDelayMode(FaultMode),
    /// `delay_ms` is above [`FAULT_DELAY_MS_MAX`].
    #[error("delay_ms {0} is more than the {FAULT_DELAY_MS_MAX} allowed")]
    DelayTooLong(u64),
}

impl Fault {
    /// No fault.
    pub const NONE: Fault = Fault {
        mode: FaultMode::None,
        delay_ms: None,
    };

    /// Checks a requested fault and fills in the default delay: the fault the cloud will apply.
    pub fn checked(self) -> Result<Fault, FaultError> {
        match (self.mode, self.delay_ms) {
            (FaultMode::Delay, Some(ms)) if ms > FAULT_DELAY_MS_MAX => {
                Err(FaultError::DelayTooLong(ms))
            }
            (FaultMode::Delay, ms) => Ok(Fault {
                mode: FaultMode::Delay,
                delay_ms: Some(ms.unwrap_or(FAULT_DELAY_MS_DEFAULT)),
            }),
            (mode, Some(_)) => Err(FaultError::DelayWithoutDelayMode(mode)),
            (mode, None) => Ok(Fault {
                mode,
                delay_ms: None,
            }),
        }
    }

    /// How long a batch is held before it is handled: `delay_ms` in mode `delay`, else nothing.
    pub fn delay(&self) -> Option<std::time::Duration> {
        match self.mode {
            FaultMode::Delay => Some(std::time::Duration::from_millis(
                self.delay_ms.unwrap_or(FAULT_DELAY_MS_DEFAULT),
            )),
            _ => None,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.delay() {
            Some(d) => write!(f, "{} ({} ms)", self.mode, d.as_millis()),
            None => write!(f, "{}", self.mode),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_checked_and_the_delay_filled_in() {
        let f: Fault = serde_json::from_str(r#"{"mode":"delay"}"#).expect("json");
        assert_eq!(
            f.checked(),
            Ok(Fault {
                mode: FaultMode::Delay,
                delay_ms: Some(FAULT_DELAY_MS_DEFAULT)
            })
        );
        let f: Fault = serde_json::from_str(r#"{"mode":"delay","delay_ms":250}"#).expect("json");
        assert_eq!(
            f.checked().expect("ok").delay(),
            Some(std::time::Duration::from_millis(250))
        );
        let f: Fault = serde_json::from_str(r#"{"mode":"error","delay_ms":250}"#).expect("json");
        assert_eq!(
            f.checked(),
            Err(FaultError::DelayWithoutDelayMode(FaultMode::Error))
        );
        let f = Fault {
            mode: FaultMode::Delay,
            delay_ms: Some(FAULT_DELAY_MS_MAX + 1),
        };
        assert!(matches!(f.checked(), Err(FaultError::DelayTooLong(_))));
        assert!(serde_json::from_str::<Fault>(r#"{"mode":"flaky"}"#).is_err());
        let f: Fault = serde_json::from_str(r#"{"mode":"accept-stale"}"#).expect("json");
        assert_eq!(f.checked().expect("ok").mode, FaultMode::AcceptStale);
        assert_eq!(
            serde_json::to_string(&f).expect("json"),
            r#"{"mode":"accept-stale"}"#
        );
        assert!(serde_json::from_str::<Fault>(r#"{"mode":"none","x":1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Fault::NONE).expect("json"),
            r#"{"mode":"none"}"#
        );
    }

    fn batch(first: u64, n: u64) -> Batch {
        Batch {
            cluster: "c1".into(),
            term: 1,
            gateway: "b1".into(),
            stream: "b1/aggregates/north".into(),
            first_seq: first,
            last_seq: first + n - 1,
            windows: (first..first + n)
                .map(|seq| Window {
                    seq,
                    ts_ms: seq as i64 * 10_000,
                    values: vec![1.0, 2.0],
                })
                .collect(),
        }
    }

    #[test]
    fn a_consistent_batch_passes() {
        batch(1, 10).check().expect("ok");
        let json = serde_json::to_vec(&batch(5, 3)).expect("json");
        assert_eq!(Batch::from_json(&json).expect("parses"), batch(5, 3));
    }

    #[test]
    fn inconsistent_batches_name_what_is_wrong() {
        let mut b = batch(1, 3);
        b.windows[1].seq = 7;
        assert!(matches!(
            b.check(),
            Err(BatchError::NotDense { index: 1, .. })
        ));
        let mut b = batch(1, 3);
        b.last_seq = 4;
        assert!(matches!(b.check(), Err(BatchError::Count { .. })));
        let mut b = batch(1, 3);
        b.first_seq = 0;
        assert_eq!(b.check(), Err(BatchError::FirstSeqZero));
        let mut b = batch(3, 1);
        b.last_seq = 2;
        assert!(matches!(b.check(), Err(BatchError::Reversed { .. })));
        let mut b = batch(1, 1);
        b.windows.clear();
        assert!(matches!(
            b.check(),
            Err(BatchError::Count { .. }) | Err(BatchError::Empty)
        ));
        let mut b = batch(1, 2);
        b.windows[1].values[0] = f64::INFINITY;
        assert_eq!(b.check(), Err(BatchError::NotFinite { seq: 2, column: 0 }));
        let mut b = batch(1, 2);
        b.windows[1].values.push(3.0);
        assert!(matches!(b.check(), Err(BatchError::Columns { .. })));
        let mut b = batch(1, 2);
        b.stream = "b1/cooked/x".into();
        assert!(
            b.check()
                .expect_err("bad kind")
                .to_string()
                .contains("cooked")
        );
        let mut b = batch(1, 2);
        b.gateway = "B 1".into();
        assert!(matches!(b.check(), Err(BatchError::Gateway(_))));
        let mut b = batch(1, 2);
        b.cluster = String::new();
        assert!(matches!(b.check(), Err(BatchError::Cluster(_))));
    }

    #[test]
    fn bodies_that_are_not_batches_are_refused() {
        assert!(matches!(Batch::from_json(b"{"), Err(BatchError::Json(_))));
        let mut v = serde_json::to_value(batch(1, 1)).expect("json");
        v["extra"] = 1.into();
        let err = Batch::from_json(v.to_string().as_bytes()).expect_err("unknown field");
        assert!(err.to_string().contains("extra"), "{err}");
        // JSON has no NaN; a number too big for f64 is refused by the parser.
        let text = serde_json::to_string(&batch(1, 1))
            .expect("json")
            .replace("1.0,", "1e999,");
        assert!(matches!(
            Batch::from_json(text.as_bytes()),
            Err(BatchError::Json(_))
        ));
    }

    #[test]
    fn acks_have_the_documented_shape() {
        let stored = BatchAck::Stored {
            stored: 3,
            duplicates: 1,
        };
        assert_eq!(
            serde_json::to_string(&stored).expect("json"),
            r#"{"status":"stored","stored":3,"duplicates":1}"#
        );
        assert_eq!(
            serde_json::to_string(&BatchAck::Duplicate).expect("json"),
            r#"{"status":"duplicate"}"#
        );
    }

    #[test]
    fn from_records_numbers_densely() {
        let recs = vec![
            Record {
                ts_ms: 1,
                values: vec![1.0],
            };
            4
        ];
        let b = Batch::from_records(
            "c1",
            2,
            &NodeId::new("b1").expect("id"),
            &"b2/aggregates/a".parse().expect("stream"),
            10,
            &recs,
        );
        assert_eq!((b.first_seq, b.last_seq), (10, 13));
        b.check().expect("consistent");
    }
}

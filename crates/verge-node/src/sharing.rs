//! Result sharing: a node reads its upstream neighbours' prediction streams (`[sharing.feeds]`)
//! and hands each new record to its predictor, which uses them as the model's upstream features.
//!
//! One task per feed polls the stream: the neighbour that owns it first, then this node's own
//! copy, then every other peer (any holder serves a range). [`Subscription`] keeps the stream's
//! order: it takes only the record that continues from the last one seen, so a neighbour's
//! restart, a partition or a switch to another holder resumes the stream with no gap and no
//! duplicate. What was skipped is counted in `verge_shared_refused_total{kind}`, what was taken in
//! `verge_shared_records_total{stream}`.

use std::time::Duration;

use actix::Addr;
use tracing::{debug, info, warn};
use verge_proto::peer::{PeerReply, PeerRequest};
use verge_proto::{NodeId, Record, StreamId};

use crate::links::PeerLinks;
use crate::metrics::Metrics;
use crate::storage::{ReadRange, StoreActor, UpstreamPredictions};

/// The most records one read asks for.
const READ_LIMIT: u32 = 1024;
/// How long a peer may take to answer a read.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// What [`Subscription::accept`] made of a read.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    /// The records that continue the stream, in order.
    pub fresh: Vec<(u64, Record)>,
    /// Records already taken (a holder answered from before the last one seen).
    pub duplicates: u64,
    /// Records left because one before them was missing (`(expected, got)`); read again next.
    pub gap: Option<(u64, u64)>,
}

/// One upstream stream's position: the next sequence number it must continue with.
#[derive(Debug, Clone)]
pub struct Subscription {
    stream: StreamId,
    /// The next sequence number; `None` until the first record (which may be past 1, if the
    /// holder's retention dropped the oldest).
    next: Option<u64>,
    received: u64,
}

impl Subscription {
    /// A subscription to `stream` from its start.
    pub fn new(stream: StreamId) -> Self {
        Self {
            stream,
            next: None,
            received: 0,
        }
    }

    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The first sequence number to ask for.
    pub fn from(&self) -> u64 {
        self.next.unwrap_or(1)
    }

    /// Records taken so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes what a holder answered for `from()..`: the records that continue the stream, in
    /// order; duplicates and anything after a gap are left.
    pub fn accept(&mut self, records: Vec<(u64, Record)>) -> Accepted {
        let mut out = Accepted::default();
        for (seq, r) in records {
            match self.next {
                Some(next) if seq < next => out.duplicates += 1,
                Some(next) if seq > next => {
                    out.gap = Some((next, seq));
                    break;
                }
                _ => {
                    self.next = Some(seq + 1);
                    self.received += 1;
                    out.fresh.push((seq, r));
                }
            }
        }
        out
    }
}

/// What the feed tasks need.
#[derive(Debug, Clone)]
pub struct SharingDeps {
    /// This node.
    pub me: NodeId,
    /// Requests to peers.
    pub links: PeerLinks,
    /// This node's store (its own copies, and the predictor).
    pub store: Addr<StoreActor>,
    /// Metrics.
    pub metrics: Metrics,
    /// How often each feed is read.
    pub poll: Duration,
}

/// Starts one task per feed stream.
pub fn spawn(deps: SharingDeps, streams: impl IntoIterator<Item = StreamId>) {
    for stream in streams {
        let deps = deps.clone();
        tokio::spawn(follow(deps, Subscription::new(stream)));
    }
}

async fn follow(deps: SharingDeps, mut sub: Subscription) {
    info!(stream = %sub.stream(), "following an upstream neighbour's predictions");
    let label = sub.stream().to_string();
    let mut last_source: Option<String> = None;
    loop {
        tokio::time::sleep(deps.poll).await;
        // Read until caught up: a neighbour back from a partition may be many records ahead.
        loop {
            let Some((source, records)) = read(&deps, &sub).await else {
                break;
            };
            if last_source.as_deref() != Some(source.as_str()) {
                debug!(stream = %sub.stream(), from = %source, "reading upstream predictions");
                last_source = Some(source);
            }
            let full = records.len() >= READ_LIMIT as usize;
            let accepted = sub.accept(records);
            if accepted.duplicates > 0 {
                deps.metrics
                    .shared_refused("duplicate", accepted.duplicates);
            }
            if let Some((expected, got)) = accepted.gap {
                deps.metrics.shared_refused("gap", 1);
                warn!(stream = %sub.stream(), expected, got, "a holder skipped upstream predictions; reading again");
            }
            let n = accepted.fresh.len();
            if n > 0 {
                deps.metrics.shared_records(&label, n as u64);
                deps.store.do_send(UpstreamPredictions {
                    stream: sub.stream().clone(),
                    records: accepted.fresh,
                });
            }
            if !full || n == 0 {
                break;
            }
        }
    }
}

/// Reads the stream from `sub.from()` at the first holder that has anything new: the owner, this
/// node's copy, then the other peers. `None` if nobody has.
async fn read(deps: &SharingDeps, sub: &Subscription) -> Option<(String, Vec<(u64, Record)>)> {
    let stream = sub.stream();
    let from = sub.from();
    let owner = &stream.owner;
    let ask = |peer: NodeId| {
        let req = PeerRequest::Read {
            stream: stream.clone(),
            from,
            to: u64::MAX,
            limit: READ_LIMIT,
        };
        let links = deps.links.clone();
        async move {
            match links.request(&peer, req, READ_TIMEOUT).await {
                Ok(PeerReply::Records(r)) if !r.is_empty() => Some((peer.to_string(), r)),
                _ => None,
            }
        }
    };
    if *owner != deps.me
        && let Some(got) = ask(owner.clone()).await
    {
        return Some(got);
    }
    let local = deps
        .store
        .send(ReadRange {
            stream: stream.clone(),
            from,
            to: u64::MAX,
            limit: READ_LIMIT,
        })
        .await;
    if let Ok(Ok(r)) = local
        && !r.is_empty()
    {
        return Some((deps.me.to_string(), r));
    }
    for peer in deps.links.peers() {
        if peer == owner {
            continue;
        }
        if let Some(got) = ask(peer.clone()).await {
            return Some(got);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> (u64, Record) {
        (
            seq,
            Record {
                ts_ms: seq as i64 * 1000,
                values: vec![seq as f64],
            },
        )
    }

    #[test]
    fn a_subscription_takes_each_record_once_and_in_order() {
        let mut sub = Subscription::new("b1/results/all".parse().expect("id"));
        assert_eq!(sub.from(), 1);
        // The holder's retention dropped 1..=4: the stream starts where it has records.
        let a = sub.accept(vec![rec(5), rec(6)]);
        assert_eq!(a.fresh, vec![rec(5), rec(6)]);
        assert_eq!(sub.from(), 7);
        // Another holder (a lagging copy) answers from before: duplicates are left.
        let a = sub.accept(vec![rec(6), rec(7)]);
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.fresh, vec![rec(7)]);
        // A holder that skipped a record: nothing after the gap is taken.
        let a = sub.accept(vec![rec(9), rec(10)]);
        assert_eq!(a.gap, Some((8, 9)));
        assert!(a.fresh.is_empty());
        assert_eq!(sub.from(), 8);
        let a = sub.accept(vec![rec(8), rec(9)]);
        assert_eq!(a.fresh, vec![rec(8), rec(9)]);
        assert_eq!(sub.received(), 5);
    }
}

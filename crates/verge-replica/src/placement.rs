//! Where a stream's copies live: rendezvous (highest-random-weight) hashing over the owner's
//! neighbours.
//!
//! Every (stream, node) pair gets a weight from a fixed hash; a stream's replicas are the
//! neighbours with the highest weights. Nothing here is random or depends on the process: the
//! hash is FNV-1a 64 over a canonical encoding followed by a 64-bit finaliser (`fmix64` from
//! MurmurHash3), so every node, every build and every run computes the same placement. When a
//! neighbour leaves, only the streams it held move (to their next-ranked neighbour); when one
//! joins, only the streams where it outranks a current replica move to it.
//!
//! This module does not decide *when* placement is recomputed or who counts as live; the
//! [`Owner`](crate::Owner) state machine does (a replica that is briefly unreachable stays
//! eligible until `replace_after_ms`).

use verge_proto::{NodeId, StreamId};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Separates fields in the hashed encoding. `0xff` never occurs in UTF-8, so no two different
/// (stream, node) pairs encode to the same bytes.
const SEP: u8 = 0xff;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: FNV-1a alone mixes its last bytes poorly into the high bits.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The rendezvous weight of `node` for `stream`: stable across processes, builds and platforms.
pub fn weight(stream: &StreamId, node: &NodeId) -> u64 {
    let mut h = FNV_OFFSET;
    h = fnv1a(h, stream.owner.as_str().as_bytes());
    h = fnv1a(h, &[SEP]);
    h = fnv1a(h, stream.kind.as_str().as_bytes());
    h = fnv1a(h, &[SEP]);
    h = fnv1a(h, stream.sensor.as_bytes());
    h = fnv1a(h, &[SEP]);
    h = fnv1a(h, node.as_str().as_bytes());
    fmix64(h)
}

/// `candidates` in rendezvous order for `stream`, best first, without `owner` and without
/// duplicates. Equal weights (vanishingly rare) are broken by node id so the order is total.
pub fn rank<'a>(
    stream: &StreamId,
    owner: &NodeId,
    candidates: impl IntoIterator<Item = &'a NodeId>,
) -> Vec<NodeId> {
    let mut scored: Vec<(u64, &NodeId)> = candidates
        .into_iter()
        .filter(|n| *n != owner)
        .map(|n| (weight(stream, n), n))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, n)| n.clone()).collect()
}

/// The replicas of `stream` besides its owner: the `r_minus_1` best-ranked of
/// `live_neighbours` (fewer if there are not that many), best first.
pub fn replicas(
    stream: &StreamId,
    owner: &NodeId,
    live_neighbours: &[NodeId],
    r_minus_1: usize,
) -> Vec<NodeId> {
    let mut ranked = rank(stream, owner, live_neighbours);
    ranked.truncate(r_minus_1);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use verge_proto::StreamKind;

    fn node(i: usize) -> NodeId {
        NodeId::new(format!("n{i}")).expect("valid id")
    }

    fn stream(i: usize) -> StreamId {
        StreamId::new(node(0), StreamKind::Raw, format!("s{i}")).expect("valid id")
    }

    #[test]
    fn weights_are_pinned() {
        // These numbers are part of the cluster's contract (and were checked against an
        // independent implementation when written): every node must compute the same placement.
        // If this test fails, the hash changed and nodes of different versions would disagree on
        // where streams live.
        let s: StreamId = "b1/raw/e1_A1_0".parse().expect("id");
        let b2: NodeId = "b2".parse().expect("id");
        let b3: NodeId = "b3".parse().expect("id");
        assert_eq!(weight(&s, &b2), 0xaae7_94f6_708b_7f7a);
        assert_eq!(weight(&s, &b3), 0xa401_1efd_6009_25dd);
    }

    #[test]
    fn the_owner_is_never_its_own_replica_and_duplicates_count_once() {
        let s = stream(1);
        let owner = node(0);
        let live = vec![node(0), node(1), node(1), node(2)];
        let r = replicas(&s, &owner, &live, 5);
        assert_eq!(r.len(), 2);
        assert!(!r.contains(&owner));
    }

    #[test]
    fn fewer_neighbours_than_wanted_gives_them_all() {
        let s = stream(7);
        assert_eq!(replicas(&s, &node(0), &[node(3)], 2), vec![node(3)]);
        assert!(replicas(&s, &node(0), &[], 2).is_empty());
    }

    #[test]
    fn streams_spread_evenly() {
        let live: Vec<NodeId> = (1..=5).map(node).collect();
        let mut counts = [0usize; 6];
        for i in 0..5000 {
            for r in replicas(&stream(i), &node(0), &live, 1) {
                let idx: usize = r.as_str()[1..].parse().expect("index");
                counts[idx] += 1;
            }
        }
        for c in &counts[1..] {
            assert!((800..1200).contains(c), "uneven spread: {counts:?}");
        }
    }

    const STREAMS: usize = 600;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A departing node moves only the streams it held, about (R-1)/N of them.
        #[test]
        fn a_departure_moves_only_its_streams(
            n in 3usize..12,
            r1 in 1usize..3,
            gone in 0usize..12,
        ) {
            let before: Vec<NodeId> = (1..=n).map(node).collect();
            let gone = node(1 + gone % n);
            let after: Vec<NodeId> = before.iter().filter(|x| **x != gone).cloned().collect();
            let mut moved = 0;
            for i in 0..STREAMS {
                let s = stream(i);
                let a = replicas(&s, &node(0), &before, r1);
                let b = replicas(&s, &node(0), &after, r1);
                if a != b {
                    moved += 1;
                    prop_assert!(a.contains(&gone), "{s}: {a:?} -> {b:?} without {gone}");
                    // The survivors keep their order; the next-ranked node fills the gap.
                    let kept: Vec<&NodeId> = a.iter().filter(|x| **x != gone).collect();
                    prop_assert_eq!(kept, b.iter().take(a.len() - 1).collect::<Vec<_>>());
                }
            }
            let expected = STREAMS as f64 * r1.min(n) as f64 / n as f64;
            let bound = expected * 1.3 + 20.0;
            prop_assert!(moved as f64 <= bound, "moved {moved}, expected ~{expected}");
        }

        /// A joining node takes only streams where it outranks a current replica, about
        /// (R-1)/(N+1) of them, and displaces exactly the lowest-ranked one.
        #[test]
        fn a_joiner_takes_only_streams_it_outranks(n in 2usize..12, r1 in 1usize..3) {
            let before: Vec<NodeId> = (1..=n).map(node).collect();
            let joiner = node(n + 1);
            let mut after = before.clone();
            after.push(joiner.clone());
            let mut moved = 0;
            for i in 0..STREAMS {
                let s = stream(i);
                let a = replicas(&s, &node(0), &before, r1);
                let b = replicas(&s, &node(0), &after, r1);
                if a != b {
                    moved += 1;
                    prop_assert!(b.contains(&joiner), "{s}: {a:?} -> {b:?} without the joiner");
                    let lowest = a.last().map(|x| weight(&s, x)).unwrap_or(0);
                    prop_assert!(a.len() < r1 || weight(&s, &joiner) > lowest);
                    let mut kept: Vec<&NodeId> = b.iter().filter(|x| **x != joiner).collect();
                    kept.sort();
                    let mut olds: Vec<&NodeId> = a.iter().take(b.len() - 1).collect();
                    olds.sort();
                    prop_assert_eq!(kept, olds);
                }
            }
            let expected = STREAMS as f64 * r1.min(n + 1) as f64 / (n + 1) as f64;
            let bound = expected * 1.3 + 20.0;
            prop_assert!(moved as f64 <= bound, "moved {moved}, expected ~{expected}");
        }
    }
}

//! Detector ids of the SUMO grid and what they tell: the traffic light and the approach.
//!
//! # The rules
//!
//! - A detector id is `e1_<tls>_<lane>` (induction loop) or `e2_<tls>_<lane>` (lane-area
//!   detector), as `simulations/sumo/gen_detectors.py` writes them. The traffic-light id is the
//!   second `_`-separated field and contains no `_`; the lane id is everything after it and may
//!   contain `_` (`e1_A1_A0A1_0` is light `A1`, lane `A0A1_0`).
//! - A lane id is `<edge>_<index>`; the detector's **approach** is its incoming edge, the lane id
//!   without the trailing `_<index>` (`A0A1`). All lanes of one incoming edge form one approach,
//!   the grouping [`crate::window::WindowConfig::approaches`] takes.
//! - An id that does not follow the pattern has no light and no approach (`None`); nothing here
//!   guesses.

use std::collections::BTreeMap;

/// The two kinds of SUMO detector Verge reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DetectorKind {
    /// An induction loop (a point detector): counts vehicles passing it.
    E1,
    /// A lane-area detector over the last metres of a lane: sees queues.
    E2,
}

impl DetectorKind {
    /// The id prefix, `e1` or `e2`.
    pub fn prefix(self) -> &'static str {
        match self {
            DetectorKind::E1 => "e1",
            DetectorKind::E2 => "e2",
        }
    }
}

/// The parts of a detector id `e?_<tls>_<lane>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorId<'a> {
    /// E1 or E2, from the prefix.
    pub kind: DetectorKind,
    /// The traffic-light id.
    pub tls: &'a str,
    /// The lane id (`<edge>_<index>`).
    pub lane: &'a str,
}

impl<'a> DetectorId<'a> {
    /// Splits `id`, or `None` if it does not follow `e1_<tls>_<lane>` / `e2_<tls>_<lane>` with
    /// non-empty parts.
    pub fn parse(id: &'a str) -> Option<Self> {
        let (prefix, rest) = id.split_once('_')?;
        let kind = match prefix {
            "e1" => DetectorKind::E1,
            "e2" => DetectorKind::E2,
            _ => return None,
        };
        let (tls, lane) = rest.split_once('_')?;
        if tls.is_empty() || lane.is_empty() {
            return None;
        }
        Some(Self { kind, tls, lane })
    }

    /// The incoming edge: the lane id without its trailing `_<index>`, or `None` if the lane id
    /// has no such suffix.
    pub fn approach(&self) -> Option<&'a str> {
        let (edge, index) = self.lane.rsplit_once('_')?;
        if edge.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(edge)
    }
}

/// The traffic light of detector `id` (`e1_A1_A0A1_0` → `A1`), if the id follows the pattern.
pub fn tls_of(id: &str) -> Option<&str> {
    DetectorId::parse(id).map(|d| d.tls)
}

/// The approach (incoming edge) of detector `id` (`e1_A1_A0A1_0` → `A0A1`).
pub fn approach_of(id: &str) -> Option<&str> {
    DetectorId::parse(id).and_then(|d| d.approach())
}

/// Whether detector `id` belongs to traffic light `tls`.
pub fn belongs_to(id: &str, tls: &str) -> bool {
    tls_of(id) == Some(tls)
}

/// The approaches of intersection `tls`: approach (incoming edge) to its detectors, sorted and
/// without duplicates, built from `detectors` (any iterator of ids; those of other lights and
/// those that do not follow the pattern are left out). The result is what
/// [`crate::window::WindowConfig::approaches`] takes.
pub fn approaches_for<'a, I>(tls: &str, detectors: I) -> BTreeMap<String, Vec<String>>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in detectors {
        let Some(d) = DetectorId::parse(id) else {
            continue;
        };
        if d.tls != tls {
            continue;
        }
        if let Some(approach) = d.approach() {
            out.entry(approach.to_owned())
                .or_default()
                .push(id.to_owned());
        }
    }
    for list in out.values_mut() {
        list.sort();
        list.dedup();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowConfig;

    #[test]
    fn ids_split_into_kind_light_lane_and_approach() {
        let d = DetectorId::parse("e1_A1_A0A1_0").expect("valid");
        assert_eq!(
            (d.kind, d.tls, d.lane, d.approach()),
            (DetectorKind::E1, "A1", "A0A1_0", Some("A0A1"))
        );
        assert_eq!(tls_of("e2_C2_top2C2_1"), Some("C2"));
        assert_eq!(approach_of("e2_C2_top2C2_1"), Some("top2C2"));
        // Lane ids with more underscores keep them in the edge.
        assert_eq!(approach_of("e1_X_a_b_c_12"), Some("a_b_c"));
        for bad in ["e3_A1_A0A1_0", "e1_A1", "e1__A0A1_0", "syn0", "e1_A1_"] {
            assert_eq!(tls_of(bad), None, "{bad}");
        }
        assert_eq!(approach_of("e1_A1_lane"), None);
        assert!(belongs_to("e1_A1_A0A1_0", "A1") && !belongs_to("e1_A1_A0A1_0", "A"));
        assert_eq!(DetectorKind::E2.prefix(), "e2");
    }

    #[test]
    fn approaches_group_an_intersections_detectors_by_incoming_edge() {
        let ids = [
            "e1_A1_A0A1_1",
            "e1_A1_A0A1_0",
            "e2_A1_A0A1_0",
            "e1_A1_B1A1_0",
            "e1_B1_A1B1_0",
            "junk",
        ];
        let a = approaches_for("A1", ids);
        assert_eq!(a.len(), 2);
        assert_eq!(
            a["A0A1"],
            vec!["e1_A1_A0A1_0", "e1_A1_A0A1_1", "e2_A1_A0A1_0"]
        );
        assert_eq!(a["B1A1"], vec!["e1_A1_B1A1_0"]);
        let cfg = WindowConfig {
            approaches: a,
            ..WindowConfig::default()
        };
        cfg.validate().expect("a valid window config");
    }
}

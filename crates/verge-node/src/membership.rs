//! The membership table and its failure detector, without IO.
//!
//! Each configured peer has a phi-accrual detector (Hayashibara et al., as in Akka and Cassandra)
//! fed with the arrival times of its heartbeats. Phi is the suspicion that the peer is dead given
//! how late the next heartbeat now is, measured against the intervals seen so far; a peer is
//! suspect at `phi_suspect` and down at `phi_down`. Time is passed in (`now`, a `Duration` since
//! an arbitrary origin), so the table is tested with a virtual clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use verge_proto::NodeId;
use verge_proto::admin::{MemberState, MemberView};

/// How many inter-arrival intervals a detector remembers.
const INTERVALS_MAX: usize = 200;
/// Weight of a new round-trip sample in the smoothed RTT.
const RTT_ALPHA: f64 = 0.2;

/// Detector tuning.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// The expected heartbeat interval, used to seed a fresh history.
    pub heartbeat: Duration,
    /// Extra silence tolerated on top of the mean interval.
    pub acceptable_pause: Duration,
    /// Floor for the interval's standard deviation, so a perfectly regular history does not make
    /// the detector jump at the first late heartbeat.
    pub min_std_dev: Duration,
    /// Suspect at or above this phi.
    pub phi_suspect: f64,
    /// Down at or above this phi.
    pub phi_down: f64,
}

/// A phi-accrual failure detector for one peer.
#[derive(Debug, Clone)]
pub struct PhiAccrual {
    intervals_ms: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Duration>,
}

impl PhiAccrual {
    fn new() -> Self {
        Self {
            intervals_ms: VecDeque::with_capacity(INTERVALS_MAX),
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        }
    }

    fn push_interval(&mut self, ms: f64) {
        if self.intervals_ms.len() == INTERVALS_MAX
            && let Some(old) = self.intervals_ms.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.intervals_ms.push_back(ms);
        self.sum += ms;
        self.sum_sq += ms * ms;
    }

    /// Records a heartbeat at `now`.
    pub fn heartbeat(&mut self, now: Duration, cfg: &DetectorConfig) {
        match self.last {
            None => {
                // Seed with the expected interval, as Akka does, so phi is defined at once.
                let hb = cfg.heartbeat.as_secs_f64() * 1e3;
                self.push_interval(hb - hb / 4.0);
                self.push_interval(hb + hb / 4.0);
            }
            Some(last) if now > last => {
                self.push_interval((now - last).as_secs_f64() * 1e3);
            }
            Some(_) => {}
        }
        self.last = Some(now);
    }

    /// Forgets the history (used when a peer comes back after being down, so the long gap does
    /// not teach the detector to wait that long next time).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Suspicion at `now`; `None` if never heard from.
    pub fn phi(&self, now: Duration, cfg: &DetectorConfig) -> Option<f64> {
        let last = self.last?;
        let n = self.intervals_ms.len().max(1) as f64;
        let mean = self.sum / n;
        let var = (self.sum_sq / n - mean * mean).max(0.0);
        let min_sd = cfg.min_std_dev.as_secs_f64() * 1e3;
        let sd = var.sqrt().max(min_sd);
        let mean = mean + cfg.acceptable_pause.as_secs_f64() * 1e3;
        let elapsed = now.saturating_sub(last).as_secs_f64() * 1e3;
        Some(phi(elapsed, mean, sd))
    }

    /// Time of the last heartbeat.
    pub fn last(&self) -> Option<Duration> {
        self.last
    }
}

/// Phi for `elapsed` given a normal distribution of intervals, with the logistic approximation of
/// the normal CDF used by Akka (accurate to about 1e-4 and cheap).
fn phi(elapsed: f64, mean: f64, sd: f64) -> f64 {
    let y = (elapsed - mean) / sd;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    // p underflows to 0 far past the mean: that is certainty, capped to stay finite.
    // `+ 0.0` turns a negative zero into zero for display.
    (-p.max(1e-300).log10()).max(0.0) + 0.0
}

/// A change of a peer's state, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The peer.
    pub id: NodeId,
    /// Its state before.
    pub from: MemberState,
    /// Its state now.
    pub to: MemberState,
    /// Time since its last heartbeat, if it ever sent one.
    pub silent_for: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Member {
    addr: String,
    state: MemberState,
    detector: PhiAccrual,
    rtt_ms: Option<f64>,
}

/// The membership table of one node.
#[derive(Debug, Clone)]
pub struct Membership {
    me: NodeId,
    my_addr: String,
    cfg: DetectorConfig,
    members: BTreeMap<NodeId, Member>,
}

impl Membership {
    /// A table of `peers` (id, address), all down until heard from.
    pub fn new(
        me: NodeId,
        my_addr: String,
        peers: impl IntoIterator<Item = (NodeId, String)>,
        cfg: DetectorConfig,
    ) -> Self {
        let members = peers
            .into_iter()
            .map(|(id, addr)| {
                let m = Member {
                    addr,
                    state: MemberState::Down,
                    detector: PhiAccrual::new(),
                    rtt_ms: None,
                };
                (id, m)
            })
            .collect();
        Self {
            me,
            my_addr,
            cfg,
            members,
        }
    }

    /// True if `id` is a configured peer.
    pub fn knows(&self, id: &NodeId) -> bool {
        self.members.contains_key(id)
    }

    /// Records evidence that `id` is alive at `now` (a heartbeat, or its answer), with a round
    /// trip if one was measured. A peer that was down or suspect is alive again at once.
    pub fn heard(
        &mut self,
        id: &NodeId,
        now: Duration,
        rtt: Option<Duration>,
    ) -> Option<Transition> {
        let cfg = self.cfg.clone();
        let m = self.members.get_mut(id)?;
        if let Some(rtt) = rtt {
            let sample = rtt.as_secs_f64() * 1e3;
            m.rtt_ms = Some(match m.rtt_ms {
                Some(old) => old + RTT_ALPHA * (sample - old),
                None => sample,
            });
        }
        let silent_for = m.detector.last().map(|l| now.saturating_sub(l));
        if m.state == MemberState::Down {
            m.detector.reset();
        }
        m.detector.heartbeat(now, &cfg);
        if m.state == MemberState::Alive {
            return None;
        }
        let from = std::mem::replace(&mut m.state, MemberState::Alive);
        Some(Transition {
            id: id.clone(),
            from,
            to: MemberState::Alive,
            silent_for,
        })
    }

    /// Re-evaluates every peer at `now` and returns the changes.
    pub fn tick(&mut self, now: Duration) -> Vec<Transition> {
        let mut out = Vec::new();
        for (id, m) in &mut self.members {
            let Some(phi) = m.detector.phi(now, &self.cfg) else {
                continue;
            };
            let next = if phi >= self.cfg.phi_down {
                MemberState::Down
            } else if phi >= self.cfg.phi_suspect {
                MemberState::Suspect
            } else {
                MemberState::Alive
            };
            // Only heartbeats make a peer alive again; the clock only makes it worse.
            let worse = matches!(
                (m.state, next),
                (MemberState::Alive, MemberState::Suspect | MemberState::Down)
                    | (MemberState::Suspect, MemberState::Down)
            );
            if worse {
                out.push(Transition {
                    id: id.clone(),
                    from: m.state,
                    to: next,
                    silent_for: m.detector.last().map(|l| now.saturating_sub(l)),
                });
                m.state = next;
            }
        }
        out
    }

    /// Peers per state: (alive, suspect, down).
    pub fn counts(&self) -> (u32, u32, u32) {
        let mut c = (0, 0, 0);
        for m in self.members.values() {
            match m.state {
                MemberState::Alive => c.0 += 1,
                MemberState::Suspect => c.1 += 1,
                MemberState::Down => c.2 += 1,
            }
        }
        c
    }

    /// The state of one peer.
    pub fn state(&self, id: &NodeId) -> Option<MemberState> {
        self.members.get(id).map(|m| m.state)
    }

    /// The table as `verge ctl members` shows it: this node first, then peers by id.
    pub fn view(&self, now: Duration) -> Vec<MemberView> {
        let me = MemberView {
            id: self.me.clone(),
            addr: self.my_addr.clone(),
            state: MemberState::Alive,
            last_seen_ms: Some(0),
            rtt_ms: Some(0.0),
            phi: 0.0,
            is_self: true,
            load: None,
        };
        let peers = self.members.iter().map(|(id, m)| MemberView {
            id: id.clone(),
            addr: m.addr.clone(),
            state: m.state,
            last_seen_ms: m
                .detector
                .last()
                .map(|l| now.saturating_sub(l).as_millis() as u64),
            rtt_ms: m.rtt_ms,
            phi: m.detector.phi(now, &self.cfg).unwrap_or(0.0),
            is_self: false,
            load: None,
        });
        std::iter::once(me).chain(peers).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            heartbeat: Duration::from_millis(200),
            acceptable_pause: Duration::from_millis(600),
            min_std_dev: Duration::from_millis(100),
            phi_suspect: 3.0,
            phi_down: 8.0,
        }
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    fn table() -> Membership {
        Membership::new(
            id("a"),
            "127.0.0.1:1".into(),
            [(id("b"), "127.0.0.1:2".into())],
            cfg(),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Heartbeats every 200 ms (as two nodes exchange them) until `until`.
    fn beat(t: &mut Membership, until: u64) {
        let mut now = 0;
        while now <= until {
            t.heard(&id("b"), ms(now), Some(ms(1)));
            now += 200;
        }
    }

    #[test]
    fn a_silent_peer_goes_suspect_then_down_within_the_budget() {
        let mut t = table();
        beat(&mut t, 10_000);
        let last = 10_000;
        let mut suspect_at = None;
        let mut down_at = None;
        for step in 1..=300 {
            let now = last + step * 10;
            for tr in t.tick(ms(now)) {
                match tr.to {
                    MemberState::Suspect => suspect_at = Some(now - last),
                    MemberState::Down => down_at = Some(now - last),
                    MemberState::Alive => panic!("the clock alone never revives a peer"),
                }
            }
        }
        let suspect_at = suspect_at.expect("suspected");
        let down_at = down_at.expect("down");
        assert!(suspect_at > 600, "suspected too early: {suspect_at} ms");
        assert!(down_at <= 2_000, "down too late: {down_at} ms");
        assert!(suspect_at < down_at);
    }

    #[test]
    fn regular_heartbeats_with_jitter_never_raise_suspicion() {
        let mut t = table();
        let mut now = 0;
        for i in 0..500u64 {
            // ±60 ms of jitter around 200 ms.
            now += 140 + (i * 37 % 120);
            t.heard(&id("b"), ms(now), None);
            assert!(t.tick(ms(now + 100)).is_empty());
        }
    }

    #[test]
    fn a_returning_peer_is_alive_at_once_and_its_gap_is_forgotten() {
        let mut t = table();
        beat(&mut t, 2_000);
        assert_eq!(t.tick(ms(10_000)).len(), 1);
        assert_eq!(t.state(&id("b")), Some(MemberState::Down));
        let tr = t.heard(&id("b"), ms(10_000), None).expect("transition");
        assert_eq!((tr.from, tr.to), (MemberState::Down, MemberState::Alive));
        // After the reset, the same silence as before is judged against 200 ms heartbeats, not
        // against the 8 s gap.
        for i in 1..=10 {
            t.heard(&id("b"), ms(10_000 + i * 200), None);
        }
        let down = t
            .tick(ms(12_000 + 2_000))
            .into_iter()
            .any(|tr| tr.to == MemberState::Down);
        assert!(down);
    }

    #[test]
    fn unknown_peers_are_ignored_and_never_heard_is_down() {
        let mut t = table();
        assert!(t.heard(&id("zz"), ms(0), None).is_none());
        assert!(t.tick(ms(100_000)).is_empty());
        let view = t.view(ms(0));
        assert_eq!(view.len(), 2);
        assert!(view[0].is_self);
        assert_eq!(view[1].state, MemberState::Down);
        assert_eq!(view[1].last_seen_ms, None);
        assert_eq!(t.counts(), (0, 0, 1));
    }

    #[test]
    fn phi_grows_with_silence() {
        let a = phi(100.0, 200.0, 50.0);
        let b = phi(300.0, 200.0, 50.0);
        let c = phi(600.0, 200.0, 50.0);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(c.is_finite());
    }
}

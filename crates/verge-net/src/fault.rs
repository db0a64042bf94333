//! The fault layer: a UDP socket wrapper under quinn that counts datagrams and, when a test or a
//! simulation asks, drops them to and from chosen addresses (a partition) or at random (loss),
//! or holds every outgoing datagram for a while before sending it (delay).
//!
//! It sits below QUIC, so a partition looks to both nodes exactly like a cut cable: no close, no
//! error, just silence. With no faults set it only counts, at the cost of one atomic add and one
//! uncontended read lock per datagram. Nodes accept fault commands only when their config enables
//! them (`[faults] enabled = true`), which only simulations and tests do.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Counters of the fault layer, readable at any time.
#[derive(Debug, Default)]
pub struct FaultStats {
    /// Datagrams received from the socket (before any drop).
    pub datagrams_in: AtomicU64,
    /// Datagrams handed to the socket.
    pub datagrams_out: AtomicU64,
    /// Datagrams dropped by an injected fault, either way.
    pub datagrams_dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct FaultState {
    blocked: RwLock<BTreeSet<SocketAddr>>,
    /// Random loss, in datagrams per million.
    loss_ppm: AtomicU32,
    /// State of a small xorshift generator for loss decisions (not security-relevant).
    rng: AtomicU64,
    /// How long each outgoing datagram is held before it is sent, in milliseconds (0: none).
    delay_ms: AtomicU32,
}

/// The longest send delay [`FaultLayer::set_delay_ms`] sets, in milliseconds: longer would only
/// look like a partition (QUIC's idle timeout is a few seconds) while piling up held datagrams.
pub const DELAY_MS_MAX: u32 = 10_000;

/// A handle to set faults on one endpoint. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct FaultLayer {
    state: Arc<FaultState>,
    stats: Arc<FaultStats>,
}

impl FaultLayer {
    /// Drops every datagram to and from `addrs` from now on (replacing the previous set).
    pub fn partition(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut b = self
            .state
            .blocked
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *b = addrs.into_iter().collect();
    }

    /// Drops each datagram with probability `ppm` per million (0 turns loss off).
    pub fn set_loss_ppm(&self, ppm: u32) {
        self.state
            .loss_ppm
            .store(ppm.min(1_000_000), Ordering::Relaxed);
        self.state
            .rng
            .store(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    }

    /// Holds every outgoing datagram for `ms` milliseconds before sending it (0 turns the delay
    /// off; more than [`DELAY_MS_MAX`] is capped to it). Datagrams a partition or loss drops are
    /// dropped first, never delayed.
    pub fn set_delay_ms(&self, ms: u32) {
        self.state
            .delay_ms
            .store(ms.min(DELAY_MS_MAX), Ordering::Relaxed);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.partition([]);
        self.set_loss_ppm(0);
        self.set_delay_ms(0);
    }

    /// The addresses currently cut off.
    pub fn blocked(&self) -> Vec<SocketAddr> {
        self.state
            .blocked
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// The current loss rate, per million.
    pub fn loss_ppm(&self) -> u32 {
        self.state.loss_ppm.load(Ordering::Relaxed)
    }

    /// The current send delay, in milliseconds.
    pub fn delay_ms(&self) -> u32 {
        self.state.delay_ms.load(Ordering::Relaxed)
    }

    /// The counters.
    pub fn stats(&self) -> &FaultStats {
        &self.stats
    }

    fn drops(&self, addr: &SocketAddr) -> bool {
        let ppm = self.state.loss_ppm.load(Ordering::Relaxed);
        if ppm > 0 {
            // xorshift64: a racy update only perturbs the sequence, which loss does not mind.
            let mut x = self.state.rng.load(Ordering::Relaxed);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state.rng.store(x, Ordering::Relaxed);
            if (x % 1_000_000) < u64::from(ppm) {
                return true;
            }
        }
        let blocked = self
            .state
            .blocked
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !blocked.is_empty() && blocked.contains(addr)
    }

    /// Wraps `inner` so that this layer sees every datagram.
    pub(crate) fn wrap(&self, inner: Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(FaultSocket {
            inner,
            layer: self.clone(),
        })
    }
}

/// An outgoing datagram held by the send delay: a [`Transmit`] with its contents owned.
struct HeldTransmit {
    destination: SocketAddr,
    ecn: Option<EcnCodepoint>,
    contents: Vec<u8>,
    segment_size: Option<usize>,
    src_ip: Option<std::net::IpAddr>,
}

impl HeldTransmit {
    fn transmit(&self) -> Transmit<'_> {
        Transmit {
            destination: self.destination,
            ecn: self.ecn,
            contents: &self.contents,
            segment_size: self.segment_size,
            src_ip: self.src_ip,
        }
    }
}

struct FaultSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    layer: FaultLayer,
}

impl fmt::Debug for FaultSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultSocket").finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for FaultSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let segments = transmit
            .segment_size
            .map_or(1, |s| transmit.contents.len().div_ceil(s.max(1)));
        if self.layer.drops(&transmit.destination) {
            // A cut cable swallows the datagram; the sender cannot tell.
            self.layer
                .stats
                .datagrams_dropped
                .fetch_add(segments as u64, Ordering::Relaxed);
            return Ok(());
        }
        let delay_ms = self.layer.delay_ms();
        if delay_ms > 0
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // quinn lends the transmit only for this call: keep an owned copy for later.
            let held = HeldTransmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: transmit.contents.to_vec(),
                segment_size: transmit.segment_size,
                src_ip: transmit.src_ip,
            };
            let inner = Arc::clone(&self.inner);
            let stats = Arc::clone(&self.layer.stats);
            runtime.spawn(async move {
                tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
                // A full socket buffer now loses the datagram, as a congested link would; QUIC
                // retransmits it. It counts as dropped, since quinn was told it went out.
                let counter = match inner.try_send(&held.transmit()) {
                    Ok(()) => &stats.datagrams_out,
                    Err(_) => &stats.datagrams_dropped,
                };
                counter.fetch_add(segments as u64, Ordering::Relaxed);
            });
            return Ok(());
        }
        self.inner.try_send(transmit)?;
        self.layer
            .stats
            .datagrams_out
            .fetch_add(segments as u64, Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let mut kept = 0;
            for i in 0..n {
                let m = meta[i];
                let segments = (m.len / m.stride.max(1)).max(1) as u64;
                self.layer
                    .stats
                    .datagrams_in
                    .fetch_add(segments, Ordering::Relaxed);
                if self.layer.drops(&m.addr) {
                    self.layer
                        .stats
                        .datagrams_dropped
                        .fetch_add(segments, Ordering::Relaxed);
                    continue;
                }
                if kept != i {
                    // Move the kept datagram down so the first `kept` entries are contiguous.
                    let (head, tail) = bufs.split_at_mut(i);
                    head[kept][..m.len].copy_from_slice(&tail[0][..m.len]);
                    meta[kept] = m;
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was dropped: poll again so the task stays registered for wake-ups.
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

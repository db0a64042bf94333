//! Batching of prediction requests: a decision without IO or clock.
//!
//! The inference actor pushes each request with the time it arrived and asks, whenever it wakes
//! (a request came, or the deadline the batcher gave passed), whether a batch is due. A batch is
//! due when `max_batch` requests wait (it is cut at `max_batch`) or when the oldest request has
//! waited `max_wait`; then everything waiting, up to `max_batch`, goes. Requests leave in arrival
//! order. The queue is bounded by `queue_max`: a push beyond it is refused and the request handed
//! back, so the caller can shed it or offload it rather than grow a queue without end.
//!
//! Time is a `Duration` since any origin the caller picks (the actor's start, a simulation's
//! zero); it must not go backwards, and if it does the batcher treats it as no time passing.

use std::collections::VecDeque;
use std::time::Duration;

/// The limits of a [`Batcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    /// The most requests in one batch (at least 1).
    pub max_batch: usize,
    /// The longest a request waits for others to join its batch.
    pub max_wait: Duration,
    /// The most requests waiting at once (at least `max_batch`).
    pub queue_max: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_wait: Duration::from_millis(2),
            queue_max: 4096,
        }
    }
}

/// Why a batcher configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatcherError {
    /// `max_batch` is 0.
    #[error("max_batch must be at least 1")]
    MaxBatch,
    /// `queue_max` is below `max_batch`: a full batch could never gather.
    #[error("queue_max ({queue_max}) must be at least max_batch ({max_batch})")]
    QueueMax {
        /// The configured queue bound.
        queue_max: usize,
        /// The configured batch size.
        max_batch: usize,
    },
}

/// A push refused because `queue_max` requests already wait; the request is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the batch queue is full ({queue_max} requests wait)")]
pub struct QueueFull<T> {
    /// The request that was not queued.
    pub request: T,
    /// The bound that was reached.
    pub queue_max: usize,
}

/// A batch to run: the requests in arrival order and why it was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<T> {
    /// The requests, oldest first.
    pub requests: Vec<T>,
    /// `true` if the batch was cut because it was full, `false` if its oldest request had waited
    /// `max_wait` (or it was flushed).
    pub full: bool,
    /// How long its oldest request waited.
    pub oldest_wait: Duration,
}

/// Gathers requests into batches. See the module docs.
#[derive(Debug)]
pub struct Batcher<T> {
    cfg: BatcherConfig,
    queue: VecDeque<(Duration, T)>,
}

impl<T> Batcher<T> {
    /// A batcher with limits `cfg`.
    ///
    /// # Errors
    ///
    /// [`BatcherError`] if a limit is impossible.
    pub fn new(cfg: BatcherConfig) -> Result<Self, BatcherError> {
        if cfg.max_batch == 0 {
            return Err(BatcherError::MaxBatch);
        }
        if cfg.queue_max < cfg.max_batch {
            return Err(BatcherError::QueueMax {
                queue_max: cfg.queue_max,
                max_batch: cfg.max_batch,
            });
        }
        Ok(Self {
            cfg,
            queue: VecDeque::new(),
        })
    }

    /// The limits.
    pub fn config(&self) -> &BatcherConfig {
        &self.cfg
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `request`, arrived at `now`.
    ///
    /// # Errors
    ///
    /// [`QueueFull`] with the request if `queue_max` requests already wait.
    pub fn push(&mut self, now: Duration, request: T) -> Result<(), QueueFull<T>> {
        if self.queue.len() >= self.cfg.queue_max {
            return Err(QueueFull {
                request,
                queue_max: self.cfg.queue_max,
            });
        }
        // Arrival times never go backwards in the queue, even if the caller's clock does.
        let at = self.queue.back().map_or(now, |(last, _)| now.max(*last));
        self.queue.push_back((at, request));
        Ok(())
    }

    /// When the oldest request's wait runs out: the caller should call [`Batcher::poll`] then at
    /// the latest. `None` when nothing waits.
    pub fn deadline(&self) -> Option<Duration> {
        self.queue
            .front()
            .map(|(at, _)| at.saturating_add(self.cfg.max_wait))
    }

    /// The batch due at `now`, if any: a full one if `max_batch` requests wait, else everything
    /// waiting if the oldest request has waited `max_wait`. Call it again while it returns a
    /// batch: more than one may be due.
    pub fn poll(&mut self, now: Duration) -> Option<Batch<T>> {
        let (oldest, _) = self.queue.front()?;
        let waited = now.saturating_sub(*oldest);
        if self.queue.len() >= self.cfg.max_batch {
            return Some(self.cut(true, waited));
        }
        if waited >= self.cfg.max_wait {
            return Some(self.cut(false, waited));
        }
        None
    }

    /// Everything waiting (up to `max_batch`) now, due or not: for shutdown or a drain.
    pub fn flush(&mut self, now: Duration) -> Option<Batch<T>> {
        let (oldest, _) = self.queue.front()?;
        let waited = now.saturating_sub(*oldest);
        let full = self.queue.len() >= self.cfg.max_batch;
        Some(self.cut(full, waited))
    }

    fn cut(&mut self, full: bool, oldest_wait: Duration) -> Batch<T> {
        let n = self.queue.len().min(self.cfg.max_batch);
        Batch {
            requests: self.queue.drain(..n).map(|(_, r)| r).collect(),
            full,
            oldest_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn batcher(max_batch: usize, wait_ms: u64, queue_max: usize) -> Batcher<u32> {
        Batcher::new(BatcherConfig {
            max_batch,
            max_wait: ms(wait_ms),
            queue_max,
        })
        .expect("valid")
    }

    #[test]
    fn impossible_limits_are_refused() {
        assert_eq!(
            Batcher::<u32>::new(BatcherConfig {
                max_batch: 0,
                ..BatcherConfig::default()
            })
            .err(),
            Some(BatcherError::MaxBatch)
        );
        assert!(matches!(
            Batcher::<u32>::new(BatcherConfig {
                max_batch: 8,
                max_wait: ms(1),
                queue_max: 4
            }),
            Err(BatcherError::QueueMax { .. })
        ));
    }

    #[test]
    fn a_full_batch_goes_at_once_and_is_cut_at_max_batch() {
        let mut b = batcher(3, 10, 100);
        for i in 0..4 {
            b.push(ms(1), i).expect("room");
        }
        let batch = b.poll(ms(1)).expect("full");
        assert_eq!(batch.requests, vec![0, 1, 2]);
        assert!(batch.full);
        assert_eq!(b.poll(ms(1)), None, "one request left, not due");
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_partial_batch_goes_when_its_oldest_request_waited_max_wait() {
        let mut b = batcher(8, 5, 100);
        assert_eq!(b.deadline(), None);
        b.push(ms(10), 1).expect("room");
        b.push(ms(12), 2).expect("room");
        assert_eq!(b.deadline(), Some(ms(15)));
        assert_eq!(b.poll(ms(14)), None);
        let batch = b.poll(ms(15)).expect("due");
        assert_eq!(
            batch,
            Batch {
                requests: vec![1, 2],
                full: false,
                oldest_wait: ms(5)
            }
        );
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn the_queue_is_bounded_and_hands_the_request_back() {
        let mut b = batcher(2, 5, 2);
        b.push(ms(0), 1).expect("room");
        b.push(ms(0), 2).expect("room");
        let e = b.push(ms(0), 3).expect_err("full");
        assert_eq!((e.request, e.queue_max), (3, 2));
    }

    #[test]
    fn a_clock_going_backwards_counts_as_no_time() {
        let mut b = batcher(8, 5, 100);
        b.push(ms(10), 1).expect("room");
        b.push(ms(3), 2).expect("room");
        assert_eq!(b.poll(ms(2)), None);
        assert_eq!(b.deadline(), Some(ms(15)));
        assert_eq!(b.flush(ms(2)).map(|b| b.requests), Some(vec![1, 2]));
    }

    proptest! {
        /// Whatever the arrivals and polls: every request leaves exactly once, in arrival order;
        /// no batch exceeds max_batch; a partial batch only leaves once its oldest waited
        /// max_wait; and a request never waits past its deadline when polled at the deadline.
        #[test]
        fn batches_preserve_order_and_respect_the_limits(
            steps in proptest::collection::vec((0u64..4, 0usize..5), 1..100),
            max_batch in 1usize..6,
            wait in 0u64..5,
        ) {
            let mut b = batcher(max_batch, wait, 1000);
            let mut now = 0u64;
            let mut next = 0u32;
            let mut out = Vec::new();
            let mut arrivals = Vec::new();
            for (dt, pushes) in steps {
                now += dt;
                for _ in 0..pushes {
                    b.push(ms(now), next).expect("room");
                    arrivals.push(now);
                    next += 1;
                }
                while let Some(batch) = b.poll(ms(now)) {
                    prop_assert!(!batch.requests.is_empty());
                    prop_assert!(batch.requests.len() <= max_batch);
                    if !batch.full {
                        prop_assert!(batch.oldest_wait >= ms(wait));
                    }
                    out.extend(batch.requests);
                }
                // Whatever is left is not due yet.
                if let Some(d) = b.deadline() {
                    prop_assert!(d > ms(now));
                    prop_assert!(b.len() < max_batch);
                }
            }
            while let Some(batch) = b.flush(ms(now)) {
                out.extend(batch.requests);
            }
            prop_assert_eq!(out, (0..next).collect::<Vec<_>>());
        }
    }
}

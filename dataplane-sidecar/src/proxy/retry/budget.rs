//! [`RetryBudget`]: retries limited to a ratio of requests over a sliding window, plus a
//! floor of retries per second so low-traffic routes can still retry.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::proxy::clock::{Clock, SystemClock};

/// The window is kept as this many slots that expire one at a time.
const SLOTS: u32 = 10;

/// Budget settings (Linkerd's `retryBudget`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request in the window, on top of the floor (0.2 = 20 %).
    pub retry_ratio: f64,
    /// Retries allowed per second even without requests.
    pub min_retries_per_second: u32,
    /// How long requests and retries count.
    pub ttl: Duration,
}

impl Default for RetryBudgetConfig {
    /// Linkerd's defaults: 20 %, 10 per second, 10 s.
    fn default() -> Self {
        Self {
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// The budget's window now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetCounts {
    /// Requests deposited in the window.
    pub requests: u64,
    /// Retries withdrawn in the window.
    pub retries: u64,
    /// Retries refused since the budget was made.
    pub refused: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
struct Window {
    slots: [Slot; SLOTS as usize],
    current: usize,
    current_start: Instant,
    refused: u64,
}

/// A retry budget shared by the requests of one route or cluster: a retry is allowed while
/// `retries + 1 <= min_retries_per_second * ttl + retry_ratio * requests`, both counted over
/// the last `ttl`.
#[derive(Debug)]
pub struct RetryBudget<C = SystemClock> {
    config: RetryBudgetConfig,
    slot_len: Duration,
    reserve: f64,
    clock: C,
    window: Mutex<Window>,
}

impl RetryBudget {
    /// A budget on the system clock.
    pub fn new(config: RetryBudgetConfig) -> Self {
        Self::with_clock(config, SystemClock)
    }
}

impl<C: Clock> RetryBudget<C> {
    /// A budget reading time from `clock`.
    pub fn with_clock(config: RetryBudgetConfig, clock: C) -> Self {
        let ttl = config.ttl.max(Duration::from_millis(SLOTS.into()));
        let now = clock.now();
        Self {
            slot_len: ttl / SLOTS,
            reserve: f64::from(config.min_retries_per_second) * ttl.as_secs_f64(),
            config,
            clock,
            window: Mutex::new(Window {
                slots: [Slot::default(); SLOTS as usize],
                current: 0,
                current_start: now,
                refused: 0,
            }),
        }
    }

    /// Counts one request (call once per request, not per attempt).
    pub fn deposit(&self) {
        self.with_window(|w| w.slots[w.current].requests += 1);
    }

    /// Takes a retry if the budget allows one.
    pub fn try_withdraw(&self) -> bool {
        let ratio = self.config.retry_ratio.max(0.0);
        let reserve = self.reserve;
        self.with_window(|w| {
            let (requests, retries) = w.totals();
            let allowed = reserve + ratio * requests as f64;
            let ok = (retries + 1) as f64 <= allowed;
            if ok {
                w.slots[w.current].retries += 1;
            } else {
                w.refused += 1;
            }
            ok
        })
    }

    /// The window now.
    pub fn counts(&self) -> BudgetCounts {
        self.with_window(|w| {
            let (requests, retries) = w.totals();
            BudgetCounts {
                requests,
                retries,
                refused: w.refused,
            }
        })
    }

    fn with_window<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let now = self.clock.now();
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.expire(now, self.slot_len);
        f(&mut w)
    }
}

impl Window {
    /// Moves to the slot `now` falls in, clearing the slots that expired on the way.
    fn expire(&mut self, now: Instant, slot_len: Duration) {
        let elapsed = now.saturating_duration_since(self.current_start);
        let steps = elapsed.as_nanos() / slot_len.as_nanos().max(1);
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(u128::from(SLOTS)) {
            self.current = (self.current + 1) % SLOTS as usize;
            self.slots[self.current] = Slot::default();
        }
        // steps <= elapsed / slot_len, so this stays within `elapsed`
        let steps = u32::try_from(steps).unwrap_or(u32::MAX);
        self.current_start += slot_len.saturating_mul(steps);
    }

    fn totals(&self) -> (u64, u64) {
        self.slots
            .iter()
            .fold((0, 0), |(req, ret), s| (req + s.requests, ret + s.retries))
    }
}

//! Whether a failed attempt may be retried: Envoy's `retry_on` conditions (by their Envoy
//! names), a maximum count, and a [`RetryBudget`] that keeps retries to a share of requests
//! (Linkerd's and Finagle's retry budget), plus Envoy's jittered backoff.
//!
//! It owns the decision only. The caller runs attempts, enforces the per-try timeout (and
//! reports it as [`AttemptOutcome::PerTryTimeout`]), holds a
//! [`CircuitBreaker`](super::circuit::CircuitBreaker) retry slot for each retry, and never
//! retries a request whose body it could not keep for replay or whose response it already
//! started forwarding.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

use super::clock::Clock;

mod budget;

pub use budget::{BudgetCounts, RetryBudget, RetryBudgetConfig};

/// One `retry_on` condition, named as in Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// `5xx`: any 5xx response, a reset, a connect failure or a per-try timeout.
    FiveXx,
    /// `gateway-error`: 502, 503 or 504, a reset, a connect failure or a per-try timeout.
    GatewayError,
    /// `reset`: no response at all (disconnect, reset, connect failure, per-try timeout).
    Reset,
    /// `connect-failure`: no connection to the endpoint.
    ConnectFailure,
    /// `refused-stream`: the server refused the HTTP/2 stream (`REFUSED_STREAM`).
    RefusedStream,
    /// `retriable-4xx`: 409 Conflict.
    Retriable4xx,
    /// `retriable-status-codes`: a status in [`RetryPolicy::retriable_status_codes`].
    RetriableStatusCodes,
    /// gRPC `cancelled` (status 1).
    Cancelled,
    /// gRPC `deadline-exceeded` (status 4).
    DeadlineExceeded,
    /// gRPC `resource-exhausted` (status 8).
    ResourceExhausted,
    /// gRPC `internal` (status 13).
    Internal,
    /// gRPC `unavailable` (status 14).
    Unavailable,
}

impl RetryOn {
    /// Every condition.
    pub const ALL: [RetryOn; 12] = [
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Retriable4xx,
        RetryOn::RetriableStatusCodes,
        RetryOn::Cancelled,
        RetryOn::DeadlineExceeded,
        RetryOn::ResourceExhausted,
        RetryOn::Internal,
        RetryOn::Unavailable,
    ];

    /// The Envoy name.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::ResourceExhausted => "resource-exhausted",
            RetryOn::Internal => "internal",
            RetryOn::Unavailable => "unavailable",
        }
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `retry_on` name this proxy does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown retry_on condition(s): {}; known: 5xx, gateway-error, reset, connect-failure, refused-stream, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, resource-exhausted, internal, unavailable",
    .unknown.join(", ")
)]
pub struct UnknownRetryOn {
    /// Every unknown name in the list.
    pub unknown: Vec<String>,
}

impl FromStr for RetryOn {
    type Err = UnknownRetryOn;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RetryOn::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownRetryOn {
                unknown: vec![s.to_string()],
            })
    }
}

/// A set of [`RetryOn`] conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RetryConditions(u16);

impl RetryConditions {
    /// No condition: nothing is retried.
    pub const NONE: RetryConditions = RetryConditions(0);

    /// The set plus `condition`.
    #[must_use]
    pub fn with(self, condition: RetryOn) -> Self {
        Self(self.0 | condition.bit())
    }

    /// Whether `condition` is in the set.
    pub fn contains(self, condition: RetryOn) -> bool {
        self.0 & condition.bit() != 0
    }

    /// Parses a comma-separated Envoy list (`"5xx,reset"`; blanks around names ignored),
    /// reporting every unknown name at once.
    pub fn parse(list: &str) -> Result<Self, UnknownRetryOn> {
        let mut set = Self::NONE;
        let mut unknown = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.parse::<RetryOn>() {
                Ok(c) => set = set.with(c),
                Err(_) => unknown.push(name.to_string()),
            }
        }
        if unknown.is_empty() {
            Ok(set)
        } else {
            Err(UnknownRetryOn { unknown })
        }
    }
}

impl FromIterator<RetryOn> for RetryConditions {
    fn from_iter<I: IntoIterator<Item = RetryOn>>(iter: I) -> Self {
        iter.into_iter().fold(Self::NONE, Self::with)
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Response headers arrived. `grpc_status` is the `grpc-status` of a trailers-only
    /// response (the only place the caller can see it before forwarding the body).
    Response {
        /// HTTP status code.
        status: u16,
        /// gRPC status code, if the headers carry one.
        grpc_status: Option<u32>,
    },
    /// No connection could be made to the endpoint.
    ConnectFailure,
    /// The connection or stream was closed or reset before response headers.
    Reset,
    /// The server refused the HTTP/2 stream before processing it.
    RefusedStream,
    /// The caller's per-try timeout fired before response headers.
    PerTryTimeout,
}

/// Why a request is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The outcome matches no configured condition (a success, say).
    NotRetriable,
    /// [`RetryPolicy::num_retries`] retries were made already.
    MaxRetries,
    /// The [`RetryBudget`] has no retry left.
    BudgetExhausted,
}

/// The answer of [`RetryPolicy::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Retry (the budget has been charged).
    Retry,
    /// Return this outcome to the client.
    Stop(StopReason),
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Conditions that allow a retry.
    pub retry_on: RetryConditions,
    /// Most retries per request (not counting the first attempt).
    pub num_retries: u32,
    /// Statuses retried under [`RetryOn::RetriableStatusCodes`].
    pub retriable_status_codes: Vec<u16>,
}

impl Default for RetryPolicy {
    /// No condition and one retry (Envoy's default count once `retry_on` is set).
    fn default() -> Self {
        Self {
            retry_on: RetryConditions::NONE,
            num_retries: 1,
            retriable_status_codes: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Whether `outcome` matches a configured condition (regardless of counts and budget).
    pub fn is_retriable(&self, outcome: &AttemptOutcome) -> bool {
        let on = |c| self.retry_on.contains(c);
        match *outcome {
            AttemptOutcome::Response {
                status,
                grpc_status,
            } => {
                (on(RetryOn::FiveXx) && (500..600).contains(&status))
                    || (on(RetryOn::GatewayError) && matches!(status, 502..=504))
                    || (on(RetryOn::Retriable4xx) && status == 409)
                    || (on(RetryOn::RetriableStatusCodes)
                        && self.retriable_status_codes.contains(&status))
                    || grpc_status.is_some_and(|g| match g {
                        1 => on(RetryOn::Cancelled),
                        4 => on(RetryOn::DeadlineExceeded),
                        8 => on(RetryOn::ResourceExhausted),
                        13 => on(RetryOn::Internal),
                        14 => on(RetryOn::Unavailable),
                        _ => false,
                    })
            }
            AttemptOutcome::ConnectFailure => on(RetryOn::ConnectFailure) || Self::no_response(on),
            AttemptOutcome::RefusedStream => on(RetryOn::RefusedStream) || Self::no_response(on),
            AttemptOutcome::Reset | AttemptOutcome::PerTryTimeout => Self::no_response(on),
        }
    }

    /// The conditions that cover "the upstream did not respond at all".
    fn no_response(on: impl Fn(RetryOn) -> bool) -> bool {
        on(RetryOn::FiveXx) || on(RetryOn::GatewayError) || on(RetryOn::Reset)
    }

    /// Decides after an attempt, `retries_done` retries into the request: the outcome must be
    /// retriable, the count not reached, and `budget` must grant a retry (charged only then).
    pub fn decide<C: Clock>(
        &self,
        outcome: &AttemptOutcome,
        retries_done: u32,
        budget: &RetryBudget<C>,
    ) -> RetryDecision {
        if !self.is_retriable(outcome) {
            RetryDecision::Stop(StopReason::NotRetriable)
        } else if retries_done >= self.num_retries {
            RetryDecision::Stop(StopReason::MaxRetries)
        } else if !budget.try_withdraw() {
            RetryDecision::Stop(StopReason::BudgetExhausted)
        } else {
            RetryDecision::Retry
        }
    }
}

/// Envoy's fully jittered exponential backoff before retry number `retry` (1 for the first):
/// uniform in `[0, min((2^retry - 1) * base, max)]`. Envoy's defaults are 25 ms and 250 ms.
pub fn backoff(retry: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let factor = (1u32 << retry.clamp(1, 16)) - 1;
    let ceiling = base.saturating_mul(factor).min(max);
    let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=ceiling_ns))
}

#[cfg(test)]
mod tests;

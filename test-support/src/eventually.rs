//! Polling assertions: wait for a condition instead of sleeping a fixed time.
//!
//! Both helpers use `tokio::time`, so they work with paused time (the clock auto-advances
//! while the test is idle) as well as real time.

use std::future::Future;
use std::time::Duration;

/// How long [`assert_eventually!`](crate::assert_eventually) waits when no timeout is given.
pub const DEFAULT_EVENTUALLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often conditions are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `f` every 50 ms until it returns `Some(value)` and returns that value.
///
/// # Panics
/// When `timeout` passes first, with a message naming `what`.
pub async fn eventually<F, Fut, T>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Asserts that a boolean expression (which may contain `.await`) becomes true, polling it
/// every 50 ms.
///
/// ```no_run
/// # use std::time::Duration;
/// # use switchyard_test_support::{assert_eventually, Envoy};
/// # async fn demo(envoy: &Envoy) {
/// assert_eventually!(envoy.stat("cluster_manager.active_clusters").await == Some(3));
/// assert_eventually!(
///     timeout = Duration::from_secs(30),
///     envoy.server_state().await.is_ok_and(|s| s == "LIVE"),
///     "envoy not live\n{}",
///     envoy.log_tail()
/// );
/// # }
/// ```
/// The default timeout is [`DEFAULT_EVENTUALLY_TIMEOUT`]. The optional message arguments
/// are formatted only on failure, after the last poll, so they may show the latest state.
#[macro_export]
macro_rules! assert_eventually {
    (timeout = $timeout:expr, $cond:expr $(,)?) => {
        $crate::assert_eventually!(timeout = $timeout, $cond, "{}", ::core::stringify!($cond))
    };
    (timeout = $timeout:expr, $cond:expr, $($arg:tt)+) => {{
        let __timeout: ::std::time::Duration = $timeout;
        let __deadline = $crate::__private::tokio::time::Instant::now() + __timeout;
        loop {
            if $cond {
                break;
            }
            if $crate::__private::tokio::time::Instant::now() >= __deadline {
                ::core::panic!(
                    "condition `{}` not true within {:?}: {}",
                    ::core::stringify!($cond),
                    __timeout,
                    ::core::format_args!($($arg)+)
                );
            }
            $crate::__private::tokio::time::sleep($crate::eventually::POLL_INTERVAL).await;
        }
    }};
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!(timeout = $crate::DEFAULT_EVENTUALLY_TIMEOUT, $cond)
    };
    ($cond:expr, $($arg:tt)+) => {
        $crate::assert_eventually!(timeout = $crate::DEFAULT_EVENTUALLY_TIMEOUT, $cond, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn eventually_returns_first_some() {
        let calls = AtomicU32::new(0);
        let got = eventually(Duration::from_secs(1), "third call", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out after 1s waiting for nothing")]
    async fn eventually_panics_with_what() {
        eventually(Duration::from_secs(1), "nothing", || async { None::<()> }).await;
    }

    #[tokio::test(start_paused = true)]
    async fn assert_eventually_polls_async_condition() {
        let calls = AtomicU32::new(0);
        let bump = || async { calls.fetch_add(1, Ordering::SeqCst) + 1 };
        crate::assert_eventually!(bump().await >= 5);
        crate::assert_eventually!(
            timeout = Duration::from_secs(1),
            bump().await >= 7,
            "n={:?}",
            calls
        );
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "condition `false` not true within 200ms: never 42")]
    async fn assert_eventually_panics_with_message() {
        crate::assert_eventually!(timeout = Duration::from_millis(200), false, "never {}", 42);
    }
}

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::proxy::clock::ManualClock;

fn response(status: u16) -> AttemptOutcome {
    AttemptOutcome::Response {
        status,
        grpc_status: None,
    }
}

fn grpc(code: u32) -> AttemptOutcome {
    AttemptOutcome::Response {
        status: 200,
        grpc_status: Some(code),
    }
}

fn policy(retry_on: &str) -> RetryPolicy {
    RetryPolicy {
        retry_on: RetryConditions::parse(retry_on).expect("valid retry_on"),
        num_retries: 2,
        retriable_status_codes: vec![429],
    }
}

fn budget(ratio: f64, min_per_second: u32, clock: &ManualClock) -> RetryBudget<ManualClock> {
    RetryBudget::with_clock(
        RetryBudgetConfig {
            retry_ratio: ratio,
            min_retries_per_second: min_per_second,
            ttl: Duration::from_secs(10),
        },
        clock.clone(),
    )
}

#[test]
fn retry_on_lists_parse_with_every_unknown_name_reported() {
    let set = RetryConditions::parse(" 5xx, reset ,,unavailable").expect("valid");
    assert_eq!(
        set,
        [RetryOn::FiveXx, RetryOn::Reset, RetryOn::Unavailable]
            .into_iter()
            .collect()
    );
    assert!(!set.contains(RetryOn::GatewayError));
    assert_eq!(
        RetryConditions::parse("").expect("empty"),
        RetryConditions::NONE
    );
    let err = RetryConditions::parse("5xx,bogus,retriable-headers").expect_err("unknown");
    assert_eq!(err.unknown, ["bogus", "retriable-headers"]);
    assert!(
        err.to_string()
            .starts_with("unknown retry_on condition(s): bogus, retriable-headers;")
    );
    for c in RetryOn::ALL {
        assert_eq!(c.as_str().parse::<RetryOn>(), Ok(c));
    }
}

#[test]
fn conditions_match_envoy_semantics() {
    use AttemptOutcome::*;
    let no_response = [ConnectFailure, Reset, RefusedStream, PerTryTimeout];
    let cases: Vec<(&str, Vec<AttemptOutcome>, Vec<AttemptOutcome>)> = vec![
        (
            "5xx",
            [
                vec![response(500), response(503), response(599)],
                no_response.to_vec(),
            ]
            .concat(),
            vec![
                response(200),
                response(404),
                response(409),
                response(429),
                grpc(14),
            ],
        ),
        (
            "gateway-error",
            [
                vec![response(502), response(503), response(504)],
                no_response.to_vec(),
            ]
            .concat(),
            vec![response(500), response(501), response(505), grpc(14)],
        ),
        ("reset", no_response.to_vec(), vec![response(503)]),
        (
            "connect-failure",
            vec![ConnectFailure],
            vec![Reset, RefusedStream, PerTryTimeout, response(503)],
        ),
        (
            "refused-stream",
            vec![RefusedStream],
            vec![Reset, ConnectFailure, response(503)],
        ),
        (
            "retriable-4xx",
            vec![response(409)],
            vec![response(429), response(500)],
        ),
        (
            "retriable-status-codes",
            vec![response(429)],
            vec![response(409), response(503)],
        ),
        ("cancelled", vec![grpc(1)], vec![grpc(14), response(503)]),
        ("deadline-exceeded", vec![grpc(4)], vec![grpc(1)]),
        ("resource-exhausted", vec![grpc(8)], vec![grpc(13)]),
        ("internal", vec![grpc(13)], vec![grpc(14)]),
        (
            "unavailable",
            vec![grpc(14)],
            vec![grpc(0), grpc(13), Reset],
        ),
        (
            "",
            vec![],
            vec![response(503), Reset, ConnectFailure, grpc(14)],
        ),
    ];
    for (retry_on, yes, no) in cases {
        let p = policy(retry_on);
        for o in yes {
            assert!(p.is_retriable(&o), "{retry_on}: {o:?} should be retried");
        }
        for o in no {
            assert!(
                !p.is_retriable(&o),
                "{retry_on}: {o:?} should not be retried"
            );
        }
    }
}

#[test]
fn decisions_respect_the_count_and_the_budget() {
    let clock = ManualClock::new();
    let budget = budget(0.5, 0, &clock);
    let p = policy("5xx");
    for _ in 0..4 {
        budget.deposit();
    }
    let failed = response(503);
    assert_eq!(
        p.decide(&response(200), 0, &budget),
        RetryDecision::Stop(StopReason::NotRetriable)
    );
    assert_eq!(p.decide(&failed, 0, &budget), RetryDecision::Retry);
    assert_eq!(p.decide(&failed, 1, &budget), RetryDecision::Retry);
    assert_eq!(
        p.decide(&failed, 2, &budget),
        RetryDecision::Stop(StopReason::MaxRetries)
    );
    // 4 requests * 0.5 = 2 retries, both taken
    assert_eq!(
        p.decide(&failed, 0, &budget),
        RetryDecision::Stop(StopReason::BudgetExhausted)
    );
    assert_eq!(
        budget.counts(),
        BudgetCounts {
            requests: 4,
            retries: 2,
            refused: 1
        }
    );
}

#[test]
fn the_budget_window_slides() {
    let clock = ManualClock::new();
    let budget = budget(0.2, 0, &clock);
    for _ in 0..10 {
        budget.deposit();
    }
    clock.advance(Duration::from_secs(5));
    for _ in 0..10 {
        budget.deposit();
    }
    // 20 requests in the window: 4 retries
    assert!((0..4).all(|_| budget.try_withdraw()));
    assert!(!budget.try_withdraw());
    // the first 10 requests expire; the 4 retries still count against the last 10 requests
    clock.advance(Duration::from_secs(5));
    assert_eq!(budget.counts().requests, 10);
    assert!(!budget.try_withdraw());
    // everything expires
    clock.advance(Duration::from_secs(5));
    assert_eq!((budget.counts().requests, budget.counts().retries), (0, 0));
    for _ in 0..5 {
        budget.deposit();
    }
    assert!(budget.try_withdraw());
    assert!(!budget.try_withdraw());
}

#[test]
fn the_floor_allows_retries_without_requests() {
    let clock = ManualClock::new();
    let budget = budget(0.2, 1, &clock);
    // 1 per second over 10 s
    assert_eq!((0..20).filter(|_| budget.try_withdraw()).count(), 10);
    clock.advance(Duration::from_secs(60));
    assert!(
        budget.try_withdraw(),
        "expired retries free the floor again"
    );
}

#[test]
fn backoff_is_fully_jittered_and_capped() {
    let mut rng = StdRng::seed_from_u64(7);
    let base = Duration::from_millis(25);
    let max = Duration::from_millis(250);
    for (retry, ceiling) in [(1, 25), (2, 75), (3, 175), (4, 250), (40, 250)] {
        let samples: Vec<_> = (0..200)
            .map(|_| backoff(retry, base, max, &mut rng))
            .collect();
        let top = samples.iter().max().copied().unwrap_or_default();
        assert!(
            top <= Duration::from_millis(ceiling),
            "retry {retry}: {top:?}"
        );
        assert!(
            top >= Duration::from_millis(ceiling) * 8 / 10,
            "retry {retry}: jitter spans the range"
        );
    }
}

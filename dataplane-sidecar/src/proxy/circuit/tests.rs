use super::*;

fn limits(n: u32) -> CircuitLimits {
    CircuitLimits {
        max_connections: n,
        max_pending_requests: n,
        max_requests: n,
        max_retries: n,
        retry_budget: None,
    }
}

#[test]
fn slots_are_refused_at_the_limit_and_freed_on_drop() {
    let breaker = CircuitBreaker::new(limits(2));
    for resource in Resource::ALL {
        let a = breaker.try_acquire(resource).expect("first");
        let _b = breaker.try_acquire(resource).expect("second");
        let refused = breaker.try_acquire(resource).expect_err("third");
        assert_eq!(refused, Overloaded { resource, limit: 2 });
        drop(a);
        let _c = breaker.try_acquire(resource).expect("freed by drop");
    }
    let snap = breaker.snapshot();
    for counts in [
        snap.connections,
        snap.pending_requests,
        snap.requests,
        snap.retries,
    ] {
        assert_eq!(
            counts,
            ResourceCounts {
                limit: 2,
                active: 0,
                refused: 1
            }
        );
    }
}

#[test]
fn resources_are_counted_separately() {
    let breaker = CircuitBreaker::new(limits(1));
    let _conn = breaker.try_connection().expect("connection");
    let _req = breaker.try_request().expect("request");
    let _pending = breaker.try_pending_request().expect("pending");
    let _retry = breaker.try_retry().expect("retry");
    assert_eq!(
        breaker.try_retry().expect_err("second retry").resource,
        Resource::Retries
    );
    assert_eq!(breaker.snapshot().requests.active, 1);
}

#[test]
fn a_lower_limit_refuses_until_enough_guards_drop() {
    let breaker = CircuitBreaker::new(limits(3));
    let guards: Vec<_> = (0..3)
        .map(|_| breaker.try_request().expect("request"))
        .collect();
    breaker.set_limits(limits(1));
    let mut guards = guards.into_iter();
    drop(guards.next());
    assert!(breaker.try_request().is_err(), "2 active >= 1");
    drop(guards.next());
    assert!(breaker.try_request().is_err(), "1 active >= 1");
    drop(guards.next());
    let _g = breaker.try_request().expect("0 active < 1");
}

#[test]
fn a_zero_limit_refuses_everything() {
    let breaker = CircuitBreaker::new(CircuitLimits {
        max_retries: 0,
        ..CircuitLimits::default()
    });
    let refusal = breaker.try_retry().expect_err("no retries allowed");
    assert_eq!(refusal.reason(), "max-retries");
    assert_eq!(
        refusal.to_string(),
        "upstream overloaded: max-retries reached its limit of 0"
    );
}

#[test]
fn clones_share_counters_across_threads() {
    let breaker = CircuitBreaker::new(limits(1000));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = breaker.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    let _g = b.try_request().expect("below the limit");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(breaker.snapshot().requests.active, 0);
    assert_eq!(breaker.snapshot().requests.refused, 0);
}

#[test]
fn a_retry_budget_follows_the_requests_in_flight_and_replaces_max_retries() {
    let budget = RetryBudgetLimit {
        budget_percent: 50.0,
        min_retry_concurrency: 1,
    };
    let breaker = CircuitBreaker::new(CircuitLimits {
        max_retries: 0,
        retry_budget: Some(budget),
        ..limits(100)
    });
    // nothing in flight: the floor, although max_retries is 0
    let first = breaker.try_retry().expect("the floor allows one");
    let refused = breaker.try_retry().expect_err("over the floor");
    assert_eq!((refused.resource, refused.limit), (Resource::Retries, 1));

    // 4 requests in flight and 2 pending: 50 % of 6 = 3 retries in flight
    let requests: Vec<_> = (0..4).map(|_| breaker.try_request().unwrap()).collect();
    let pending: Vec<_> = (0..2)
        .map(|_| breaker.try_pending_request().unwrap())
        .collect();
    assert_eq!(breaker.snapshot().retries.limit, 3);
    let more: Vec<_> = (0..2).map(|_| breaker.try_retry().unwrap()).collect();
    assert_eq!(breaker.try_retry().expect_err("3 in flight").limit, 3);

    // fewer requests: the limit shrinks and retries in flight stay until dropped
    drop((requests, pending));
    assert_eq!(breaker.snapshot().retries.limit, 1);
    drop((first, more));
    let again = breaker.try_retry().expect("the floor again");

    // without the budget, max_retries applies again
    breaker.set_limits(CircuitLimits {
        max_retries: 0,
        ..limits(100)
    });
    drop(again);
    assert_eq!(breaker.try_retry().expect_err("max_retries 0").limit, 0);
}

#[test]
fn a_cluster_retry_budget_reaches_the_limits() {
    let config = crate::config::cluster::CircuitBreakers {
        retry_budget: Some(crate::config::cluster::RetryBudget {
            budget_percent: 25.0,
            min_retry_concurrency: 2,
        }),
        ..Default::default()
    };
    let limits = CircuitLimits::from(&config);
    let budget = limits.retry_budget.expect("the budget");
    assert_eq!(budget.limit(0), 2);
    assert_eq!(budget.limit(100), 25);
    assert_eq!(budget.limit(9), 2);
}

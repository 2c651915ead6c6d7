use super::*;

fn limits(n: u32) -> CircuitLimits {
    CircuitLimits {
        max_connections: n,
        max_pending_requests: n,
        max_requests: n,
        max_retries: n,
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

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::proxy::clock::ManualClock;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 244, 0, n], 8080))
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

fn balancer(n: u8, outlier: OutlierConfig) -> (Balancer<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let b = Balancer::with_clock(
        BalancerConfig {
            outlier,
            ..BalancerConfig::default()
        },
        clock.clone(),
    );
    let specs: Vec<_> = (1..=n).map(|i| EndpointSpec::new(addr(i))).collect();
    b.set_endpoints(&specs);
    (b, clock)
}

/// Picks, waits `rtt` on the clock, records `outcome`.
fn request(
    b: &Balancer<ManualClock>,
    clock: &ManualClock,
    rng: &mut StdRng,
    rtt_ms: u64,
    outcome: Outcome,
) -> SocketAddr {
    let mut p = b.pick(rng).expect("non-empty");
    clock.advance(Duration::from_millis(rtt_ms));
    p.record(outcome);
    p.addr()
}

/// `times` picks of `target`, each recorded as `outcome`.
fn fail(b: &Balancer<ManualClock>, target: SocketAddr, outcome: Outcome, times: usize) {
    for _ in 0..times {
        b.pick_addr(target)
            .expect("target in the set")
            .record(outcome);
    }
}

/// One successful request to `target` taking `rtt_ms`.
fn succeed(b: &Balancer<ManualClock>, clock: &ManualClock, target: SocketAddr, rtt_ms: u64) {
    let mut p = b.pick_addr(target).expect("target in the set");
    clock.advance(Duration::from_millis(rtt_ms));
    p.record(Outcome::Success);
}

fn status(b: &Balancer<ManualClock>, a: SocketAddr) -> EndpointStatus {
    b.endpoints()
        .into_iter()
        .find(|s| s.addr == a)
        .expect("endpoint in the set")
}

#[test]
fn empty_and_single_endpoint_sets() {
    let (b, _) = balancer(0, OutlierConfig::default());
    assert!(b.is_empty());
    assert!(b.pick(&mut rng()).is_none());
    b.set_endpoints(&[EndpointSpec::new(addr(1))]);
    assert_eq!(b.len(), 1);
    let mut r = rng();
    assert!((0..100).all(|_| b.pick(&mut r).map(|p| p.addr()) == Some(addr(1))));
}

#[test]
fn the_faster_endpoint_wins() {
    let (b, clock) = balancer(2, OutlierConfig::default());
    let mut r = rng();
    succeed(&b, &clock, addr(1), 200);
    succeed(&b, &clock, addr(2), 5);
    for _ in 0..50 {
        assert_eq!(request(&b, &clock, &mut r, 5, Outcome::Success), addr(2));
    }
    assert!(status(&b, addr(1)).rtt_estimate > Duration::from_millis(150));
}

#[test]
fn pending_requests_raise_the_cost() {
    let (b, _) = balancer(2, OutlierConfig::default());
    let mut r = rng();
    let first = b.pick(&mut r).expect("pick");
    // equal estimates: the busy endpoint costs twice as much
    for _ in 0..20 {
        assert_ne!(b.pick(&mut r).expect("pick").addr(), first.addr());
    }
    assert_eq!(status(&b, first.addr()).pending, 1);
    drop(first);
    assert!(b.endpoints().iter().all(|s| s.pending == 0));
}

#[test]
fn a_peak_is_forgotten_as_it_decays_while_the_other_endpoint_is_measured() {
    let (b, clock) = balancer(2, OutlierConfig::default());
    let mut r = rng();
    succeed(&b, &clock, addr(1), 1_000);
    succeed(&b, &clock, addr(2), 10);
    // addr(2) keeps getting traffic every second; addr(1)'s peak decays with nothing to renew
    // it until it costs less (after about tau * ln(100) = 46 s)
    let mut probed_after = None;
    for second in 1..=120 {
        clock.advance(Duration::from_millis(990));
        if request(&b, &clock, &mut r, 10, Outcome::Success) == addr(1) {
            probed_after = Some(second);
            break;
        }
    }
    let probed_after = probed_after.expect("the slow endpoint is tried again");
    assert!((30..=60).contains(&probed_after), "{probed_after}");
}

#[test]
fn weights_bias_the_candidates() {
    let clock = ManualClock::new();
    let b = Balancer::with_clock(BalancerConfig::default(), clock);
    let mut specs: Vec<_> = (2..=10).map(|i| EndpointSpec::new(addr(i))).collect();
    specs.push(EndpointSpec::weighted(addr(1), 9));
    b.set_endpoints(&specs);
    let mut r = rng();
    let n = 20_000;
    let heavy = (0..n)
        .filter(|_| b.pick(&mut r).expect("pick").addr() == addr(1))
        .count();
    // equal costs: the first drawn wins, and it is the heavy one 9 times in 18
    let share = heavy as f64 / f64::from(n);
    assert!((0.47..0.53).contains(&share), "{share}");
}

#[test]
fn consecutive_5xx_eject_and_the_ejection_expires() {
    let outlier = OutlierConfig {
        max_ejection_percent: 50,
        ..OutlierConfig::default()
    };
    let (b, clock) = balancer(3, outlier);
    let mut r = rng();
    fail(&b, addr(1), Outcome::ServerError, 4);
    succeed(&b, &clock, addr(1), 1);
    fail(&b, addr(1), Outcome::ServerError, 4);
    assert_eq!(
        status(&b, addr(1)).ejected_for,
        None,
        "the streak was broken"
    );
    fail(&b, addr(1), Outcome::ServerError, 1);
    let ejected = status(&b, addr(1));
    assert_eq!(ejected.ejected_for, Some(Duration::from_secs(30)));
    assert_eq!(ejected.ejections, 1);
    assert!((0..1_000).all(|_| b.pick(&mut r).expect("pick").addr() != addr(1)));

    clock.advance(Duration::from_secs(30));
    assert_eq!(status(&b, addr(1)).ejected_for, None);
    // back in rotation: with the others busy it is the cheapest
    let busy = [b.pick_addr(addr(2)), b.pick_addr(addr(3))];
    let mut back = b.pick(&mut r).expect("pick");
    assert_eq!(back.addr(), addr(1));
    back.record(Outcome::Success);
    drop((back, busy));

    // failing again soon after: ejected twice as long
    clock.advance(Duration::from_secs(10));
    fail(&b, addr(1), Outcome::ServerError, 5);
    assert_eq!(
        status(&b, addr(1)).ejected_for,
        Some(Duration::from_secs(60))
    );
    assert_eq!(b.counts().ejections, 2);
}

#[test]
fn connect_failures_have_their_own_threshold() {
    let outlier = OutlierConfig {
        consecutive_5xx: None,
        consecutive_connect_failures: Some(3),
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    };
    let (b, _) = balancer(2, outlier);
    fail(&b, addr(2), Outcome::ServerError, 10);
    assert_eq!(b.counts().ejections, 0);
    fail(&b, addr(2), Outcome::ConnectFailure, 3);
    assert!(status(&b, addr(2)).ejected_for.is_some());
}

#[test]
fn ejection_stops_at_the_maximum_share_and_all_ejected_means_panic() {
    let (b, _) = balancer(
        4,
        OutlierConfig {
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        },
    );
    let mut r = rng();
    for i in 1..=3 {
        fail(&b, addr(i), Outcome::ConnectFailure, 5);
    }
    let ejected: Vec<_> = b
        .endpoints()
        .into_iter()
        .filter(|s| s.ejected_for.is_some())
        .collect();
    assert_eq!(ejected.len(), 2);
    assert_eq!(b.counts().ejections_overflow, 1);

    // a two-endpoint set where both are ejected still answers
    let (b, _) = balancer(
        2,
        OutlierConfig {
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        },
    );
    fail(&b, addr(1), Outcome::ConnectFailure, 5);
    fail(&b, addr(2), Outcome::ConnectFailure, 5);
    assert!(b.endpoints().iter().all(|s| s.ejected_for.is_some()));
    let picked: HashSet<_> = (0..100)
        .map(|_| b.pick(&mut r).expect("pick").addr())
        .collect();
    assert_eq!(picked.len(), 2);
    assert_eq!(b.counts().panic_picks, 100);
}

#[test]
fn a_new_endpoint_set_keeps_known_endpoints_state() {
    let (b, clock) = balancer(
        3,
        OutlierConfig {
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        },
    );
    fail(&b, addr(1), Outcome::ConnectFailure, 5);
    succeed(&b, &clock, addr(2), 500);
    let held = b.pick_addr(addr(2)).expect("in the set");
    b.set_endpoints(&[
        EndpointSpec::new(addr(1)),
        EndpointSpec::weighted(addr(2), 3),
        EndpointSpec::new(addr(4)),
        EndpointSpec::weighted(addr(4), 7),
    ]);
    let s = b.endpoints();
    assert_eq!(
        s.iter().map(|s| s.addr).collect::<Vec<_>>(),
        [addr(1), addr(2), addr(4)]
    );
    assert!(s[0].ejected_for.is_some());
    assert_eq!((s[1].weight, s[1].pending), (3, 1));
    assert!(s[1].rtt_estimate >= Duration::from_millis(400));
    assert_eq!(
        (s[2].weight, s[2].rtt_estimate),
        (1, Duration::from_millis(30))
    );
    drop(held);
    assert_eq!(status(&b, addr(2)).pending, 0);
}

#[test]
fn only_the_first_record_counts_and_cancelled_counts_nothing() {
    let (b, clock) = balancer(
        1,
        OutlierConfig {
            consecutive_5xx: Some(1),
            ..OutlierConfig::default()
        },
    );
    let mut r = rng();
    let mut p = b.pick(&mut r).expect("pick");
    p.record(Outcome::Cancelled);
    p.record(Outcome::ServerError);
    drop(p);
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.counts().ejections, 0);
    assert!(status(&b, addr(1)).rtt_estimate < Duration::from_millis(30));
}

#[test]
fn concurrent_picks_balance_their_pending_counts() {
    let b = Balancer::new(BalancerConfig::default());
    let specs: Vec<_> = (1..=8).map(|i| EndpointSpec::new(addr(i))).collect();
    b.set_endpoints(&specs);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut r = StdRng::seed_from_u64(t);
                for _ in 0..5_000 {
                    let mut p = b.pick(&mut r).expect("pick");
                    p.record(Outcome::Success);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert!(b.endpoints().iter().all(|s| s.pending == 0));
}

#[test]
fn a_retry_avoids_the_endpoints_already_tried_while_others_are_left() {
    let (b, _clock) = balancer(3, OutlierConfig::default());
    let mut r = rng();
    for _ in 0..200 {
        let p = b.pick_avoiding(&mut r, &[addr(1), addr(2)]).unwrap();
        assert_eq!(p.addr(), addr(3));
    }
    // All tried: any endpoint is better than none.
    let all = [addr(1), addr(2), addr(3)];
    assert!(b.pick_avoiding(&mut r, &all).is_some());
    // Nothing to avoid: every endpoint still gets picks.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.insert(b.pick_avoiding(&mut r, &[]).unwrap().addr());
    }
    assert_eq!(seen.len(), 3);
}

//! The endpoint picker's hot path: pick, record a success, drop, with 10 and 1,000
//! endpoints, equal and unequal weights, and a tenth of the set ejected.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use switchyard_dataplane_sidecar::proxy::balance::{
    Balancer, BalancerConfig, EndpointSpec, Outcome, OutlierConfig,
};

fn endpoints(n: u32, weighted: bool) -> Vec<EndpointSpec> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from(([10, 244, (i / 250) as u8, (i % 250) as u8], 8080));
            EndpointSpec::weighted(addr, if weighted { 1 + i % 4 } else { 1 })
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("balance/pick");
    for n in [10u32, 1_000] {
        for (label, weighted, ejected) in [
            ("equal", false, false),
            ("weighted", true, false),
            ("ejected-10pct", false, true),
        ] {
            let balancer = Balancer::new(BalancerConfig {
                outlier: OutlierConfig {
                    consecutive_5xx: Some(1),
                    max_ejection_percent: 10,
                    ..OutlierConfig::default()
                },
                ..BalancerConfig::default()
            });
            let specs = endpoints(n, weighted);
            balancer.set_endpoints(&specs);
            if ejected {
                for spec in specs.iter().step_by(10) {
                    if let Some(mut p) = balancer.pick_addr(spec.addr) {
                        p.record(Outcome::ServerError);
                    }
                }
            }
            let mut rng = SmallRng::seed_from_u64(1);
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| {
                    if let Some(mut p) = balancer.pick(&mut rng) {
                        p.record(Outcome::Success);
                        black_box(p.addr());
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);

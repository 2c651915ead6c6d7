//! compile + render at scale: 1,000 services x 10 endpoints for per-pod proxies, 10,000
//! workloads for node agents; cold (new generation, empty caches) and warm (a second proxy of
//! the same scope, and a new generation where one endpoint changed).

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard_model::ProxyId;
use switchyard_model::proxy::ProxyMetadata;
use switchyard_test_support::synthetic::Shape;
use switchyard_xds_server::render::{Generation, ProxyRenderState, RenderCache, RenderOptions};

const SHAPE: Shape = Shape {
    services: 1_000,
    endpoints: 10,
    namespaces: 10,
    nodes: 100,
};

fn proxy(id: &str) -> ProxyId {
    ProxyId::parse(id, ProxyMetadata::default()).unwrap()
}

fn bench(c: &mut Criterion) {
    let mesh = Arc::new(SHAPE.builder().build(1).unwrap());
    // the same mesh with one more endpoint in one service
    let mut changed = SHAPE.builder();
    changed.pod(
        switchyard_model::input::PodInput::new(
            "ns-0",
            "svc-0-extra",
            "10.200.0.1".parse().unwrap(),
        )
        .label("app", "svc-0")
        .on_node("node-0"),
    );
    let changed = Arc::new(changed.build(2).unwrap());
    let opts = Arc::new(RenderOptions::default());
    let sidecar = proxy("sidecar~10.64.0.1~svc-0-0.ns-0~ns-0.svc.cluster.local");
    let sidecar2 = proxy("sidecar~10.64.0.2~svc-0-1.ns-0~ns-0.svc.cluster.local");
    let ztunnel = proxy("ztunnel~10.255.0.0~node-0~switchyard-system");

    let mut g = c.benchmark_group("compile_render");
    g.sample_size(10);
    g.bench_function("mesh build 1k svc x 10 ep (10k pods)", |b| {
        b.iter(|| SHAPE.builder().build(1).unwrap())
    });
    g.bench_function("sidecar cold: 1k svc x 10 ep", |b| {
        b.iter(|| {
            let generation = Generation::new(
                mesh.clone(),
                None,
                Arc::new(RenderCache::default()),
                opts.clone(),
                Instant::now(),
            );
            generation.snapshot(&sidecar, &mut ProxyRenderState::default())
        })
    });
    g.bench_function("ztunnel cold: 10k workloads", |b| {
        b.iter(|| {
            let generation = Generation::new(
                mesh.clone(),
                None,
                Arc::new(RenderCache::default()),
                opts.clone(),
                Instant::now(),
            );
            generation.snapshot(&ztunnel, &mut ProxyRenderState::default())
        })
    });
    let cache = Arc::new(RenderCache::default());
    let gen1 = Generation::new(
        mesh.clone(),
        None,
        cache.clone(),
        opts.clone(),
        Instant::now(),
    );
    gen1.snapshot(&sidecar, &mut ProxyRenderState::default());
    gen1.snapshot(&ztunnel, &mut ProxyRenderState::default());
    g.bench_function("sidecar warm: second proxy of a scope", |b| {
        b.iter(|| gen1.snapshot(&sidecar2, &mut ProxyRenderState::default()))
    });
    g.bench_function(
        "new generation after one endpoint change (sidecar + ztunnel)",
        |b| {
            b.iter(|| {
                let next = Generation::new(
                    changed.clone(),
                    Some(&gen1),
                    cache.clone(),
                    opts.clone(),
                    Instant::now(),
                );
                next.snapshot(&sidecar, &mut ProxyRenderState::default());
                next.snapshot(&ztunnel, &mut ProxyRenderState::default())
            })
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

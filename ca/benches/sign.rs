//! CSR verify + sign throughput on one core (goal: >= 5,000 certificates/s).

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use switchyard_ca::{AuthorityConfig, check_csr, load_or_create_root};

fn csr(id: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ca = load_or_create_root(dir.path(), AuthorityConfig::default()).unwrap();
    let pem = csr("spiffe://cluster.local/ns/default/sa/echo");
    let mut g = c.benchmark_group("ca");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify csr", |b| {
        b.iter(|| check_csr(&pem, "cluster.local").unwrap())
    });
    g.bench_function("verify csr + sign leaf", |b| {
        b.iter(|| {
            let checked = check_csr(&pem, "cluster.local").unwrap();
            let id = checked.identity.clone();
            ca.issue(&checked, &id, None).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

#![allow(clippy::unwrap_used)]

use switchyard_protos::pack;

use super::*;
use crate::config::fixtures::*;

const ECHO: &str = "outbound|8080||echo.default.svc.cluster.local";

fn follower() -> (Follower, ConfigReader) {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    Follower::new(channel, Node::default(), FollowerOptions::default())
}

fn put(st: &mut Stream, t: TypeUrl, any: switchyard_protos::wkt::Any) {
    let name = switchyard_dataplane_runtime::ads_client::resource_name(&any).unwrap();
    let c = convert_resource(t, &name, &any).unwrap();
    st.dirty |= apply(&mut st.resources, t, vec![(name, c)], &[]);
    st.received.insert(t.short_name());
}

#[tokio::test]
async fn snapshots_wait_for_missing_pieces_then_publish() {
    let (mut f, reader) = follower();
    let mut st = Stream::default();
    put(&mut st, TypeUrl::Cluster, pack(&eds_cluster(ECHO, &[])));
    f.maybe_publish(&mut st);
    assert!(!reader.is_ready(), "LDS has not arrived");

    put(
        &mut st,
        TypeUrl::Listener,
        pack(&outbound_listener("0.0.0.0", &[], &[])),
    );
    f.maybe_publish(&mut st);
    assert!(!reader.is_ready(), "EDS and RDS have not arrived");
    assert!(st.warming_since.is_some());
    let pending = reader.status().pending;
    assert!(pending.contains(&Inconsistency::MissingEndpoints {
        cluster: ECHO.into(),
        service_name: ECHO.into()
    }));

    put(
        &mut st,
        TypeUrl::ClusterLoadAssignment,
        pack(&cla(ECHO, &[])),
    );
    put(
        &mut st,
        TypeUrl::Cluster,
        pack(&original_dst_cluster("passthrough-outbound")),
    );
    put(
        &mut st,
        TypeUrl::RouteConfiguration,
        pack(&route_config("outbound-http", vec![])),
    );
    f.maybe_publish(&mut st);
    let c = reader.current().unwrap();
    assert_eq!(c.version(), 1);
    assert_eq!(c.check(), Ok(()));
    assert!(st.warming_since.is_none());
    assert!(reader.status().pending.is_empty());

    // nothing changed: nothing published
    f.maybe_publish(&mut st);
    assert_eq!(reader.current().unwrap().version(), 1);
}

#[tokio::test]
async fn a_lasting_problem_is_published_after_warming_and_then_accepted() {
    let (mut f, reader) = follower();
    let mut st = Stream::default();
    put(
        &mut st,
        TypeUrl::Cluster,
        pack(&original_dst_cluster("passthrough-outbound")),
    );
    put(
        &mut st,
        TypeUrl::Listener,
        pack(&outbound_listener("0.0.0.0", &[], &[])),
    );
    // a route to a service that does not exist (the model warns; the route stays)
    let rc = route_config(
        "outbound-http",
        vec![vhost(
            "v",
            &["a"],
            vec![prefix_route(
                "r",
                "/",
                "outbound|80||nope.default.svc.cluster.local",
            )],
        )],
    );
    put(&mut st, TypeUrl::RouteConfiguration, pack(&rc));
    f.maybe_publish(&mut st);
    assert!(!reader.is_ready());
    f.publish_warmed(&mut st);
    let c = reader.ready().await.unwrap();
    assert_eq!(c.problems().len(), 1);

    // the same problem does not hold later updates back
    put(&mut st, TypeUrl::Cluster, pack(&eds_cluster(ECHO, &[])));
    put(
        &mut st,
        TypeUrl::ClusterLoadAssignment,
        pack(&cla(ECHO, &[])),
    );
    f.maybe_publish(&mut st);
    assert_eq!(reader.current().unwrap().version(), 2);
}

#[test]
fn removals_apply_to_their_own_type_only() {
    let mut res = Resources::default();
    let c = convert_resource(TypeUrl::Cluster, ECHO, &pack(&eds_cluster(ECHO, &[]))).unwrap();
    let a = convert_resource(TypeUrl::ClusterLoadAssignment, ECHO, &pack(&cla(ECHO, &[]))).unwrap();
    apply(&mut res, TypeUrl::Cluster, vec![(ECHO.into(), c)], &[]);
    apply(
        &mut res,
        TypeUrl::ClusterLoadAssignment,
        vec![(ECHO.into(), a)],
        &[],
    );
    assert!(apply(
        &mut res,
        TypeUrl::ClusterLoadAssignment,
        vec![],
        &[ECHO.into()]
    ));
    assert!(
        res.clusters.contains_key(ECHO),
        "a CLA removal keeps the cluster"
    );
    assert!(res.load_assignments.is_empty());
    assert!(!apply(
        &mut res,
        TypeUrl::Listener,
        vec![],
        &["nope".into()]
    ));
}

#[test]
fn nack_messages_quote_a_few_errors() {
    let errors: Vec<ConvertError> = (0..7)
        .map(|i| ConvertError::Malformed {
            type_url: TypeUrl::Cluster,
            name: format!("c{i}"),
            problem: "bad".into(),
        })
        .collect();
    let m = nack_message(&errors);
    assert!(
        m.starts_with("cluster \"c0\": bad; cluster \"c1\": bad"),
        "{m}"
    );
    assert!(m.ends_with("; and 2 more"), "{m}");
}

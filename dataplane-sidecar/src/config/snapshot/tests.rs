#![allow(clippy::unwrap_used)]

use switchyard_protos::TypeUrl;
use switchyard_protos::wkt::Any;

use super::*;
use crate::config::fixtures::*;
use crate::config::{Converted, convert_resource};

const ECHO: &str = "outbound|8080||echo.default.svc.cluster.local";
const DB: &str = "outbound|5432||db.default.svc.cluster.local";

fn add(res: &mut Resources, t: TypeUrl, any: Any) {
    let name = switchyard_dataplane_runtime::ads_client::resource_name(&any).unwrap();
    match convert_resource(t, &name, &any).unwrap() {
        Converted::Listener(l) => {
            res.listeners.insert(name, l);
        }
        Converted::RouteConfig(r) => {
            res.route_configs.insert(name, r);
        }
        Converted::Cluster(c) => {
            res.clusters.insert(name, c);
        }
        Converted::LoadAssignment(a) => {
            res.load_assignments.insert(name, a);
        }
    }
}

/// What the renderer sends a sidecar for one HTTP service (echo, mTLS) and one TCP service
/// (db, plaintext).
fn mesh() -> Resources {
    use switchyard_protos::pack;
    let mut r = Resources::default();
    add(
        &mut r,
        TypeUrl::Listener,
        pack(&outbound_listener(
            "0.0.0.0",
            &[8080],
            &[("10.96.0.20", 5432, DB)],
        )),
    );
    add(
        &mut r,
        TypeUrl::Listener,
        pack(&inbound_listener("0.0.0.0", &[(8080, true, true, true)])),
    );
    add(
        &mut r,
        TypeUrl::Cluster,
        pack(&eds_cluster(
            ECHO,
            &["spiffe://cluster.local/ns/default/sa/echo"],
        )),
    );
    add(&mut r, TypeUrl::Cluster, pack(&eds_cluster(DB, &[])));
    add(
        &mut r,
        TypeUrl::Cluster,
        pack(&static_cluster("inbound|8080||", 8080)),
    );
    add(
        &mut r,
        TypeUrl::Cluster,
        pack(&original_dst_cluster("passthrough-outbound")),
    );
    add(
        &mut r,
        TypeUrl::Cluster,
        pack(&original_dst_cluster("passthrough-inbound")),
    );
    add(
        &mut r,
        TypeUrl::ClusterLoadAssignment,
        pack(&cla(
            ECHO,
            &[(
                "a",
                &[("10.244.0.11", 18080, true), ("10.244.0.12", 18080, false)],
            )],
        )),
    );
    add(&mut r, TypeUrl::ClusterLoadAssignment, pack(&cla(DB, &[])));
    let echo = vhost(
        "echo",
        &["echo.default.svc.cluster.local:8080"],
        vec![prefix_route("default", "/", ECHO)],
    );
    add(
        &mut r,
        TypeUrl::RouteConfiguration,
        pack(&route_config("8080", vec![echo.clone()])),
    );
    add(
        &mut r,
        TypeUrl::RouteConfiguration,
        pack(&route_config("outbound-http", vec![echo])),
    );
    r
}

#[test]
fn a_complete_mesh_is_consistent_and_answers_lookups() {
    let c = SidecarConfig::assemble(&mesh(), 1);
    assert_eq!(c.check(), Ok(()));
    assert_eq!(c.version(), 1);

    let Some(Outbound::Http {
        routes: Some(rc), ..
    }) = c.outbound("10.96.0.10:8080".parse().unwrap())
    else {
        panic!()
    };
    assert_eq!(rc.name, "8080");
    assert!(matches!(
        c.outbound("10.96.0.20:5432".parse().unwrap()),
        Some(Outbound::Tcp { proxy, .. }) if proxy.cluster == DB
    ));
    assert!(matches!(
        c.outbound("1.2.3.4:443".parse().unwrap()),
        Some(Outbound::Passthrough { proxy, .. }) if proxy.cluster == "passthrough-outbound"
    ));
    assert!(matches!(
        c.explicit_proxy(),
        Some(Outbound::Http { routes: Some(rc), .. }) if rc.name == "outbound-http"
    ));
    assert_eq!(
        c.inbound(8080).unwrap().mode,
        switchyard_model::MtlsMode::Permissive
    );

    let eps = c.endpoints(ECHO).unwrap();
    let t: Vec<bool> = eps.iter().map(|(_, e)| e.transport.is_hbone()).collect();
    assert_eq!(t, [true, false]);
    assert!(c.endpoints(DB).unwrap().is_empty());
    assert_eq!(c.endpoints("inbound|8080||").unwrap().len(), 1);
    assert!(c.endpoints("passthrough-outbound").is_none());
}

#[test]
fn missing_pieces_are_reported() {
    let mut r = mesh();
    r.route_configs.remove("outbound-http");
    r.load_assignments.remove(DB);
    r.clusters.remove(ECHO);
    let c = SidecarConfig::assemble(&r, 2);
    let problems = c.check().unwrap_err();
    assert!(problems.contains(&Inconsistency::MissingRouteConfig {
        listener: "outbound".into(),
        route_config: "outbound-http".into()
    }));
    assert!(problems.contains(&Inconsistency::MissingEndpoints {
        cluster: DB.into(),
        service_name: DB.into()
    }));
    assert!(problems.contains(&Inconsistency::UnknownCluster {
        referrer: "route configuration \"8080\"".into(),
        cluster: ECHO.into()
    }));
    assert_eq!(problems.len(), 3, "{problems:?}");
    // the explicit chain's routes are missing: the data path sees that
    assert!(matches!(
        c.explicit_proxy(),
        Some(Outbound::Http { routes: None, .. })
    ));
}

#[test]
fn names_to_subscribe_follow_clusters_and_listeners() {
    let r = mesh();
    assert_eq!(r.eds_names().into_iter().collect::<Vec<_>>(), [DB, ECHO]);
    assert_eq!(
        r.rds_names().into_iter().collect::<Vec<_>>(),
        ["8080", "outbound-http"]
    );
}

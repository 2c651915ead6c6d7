use super::*;

#[test]
fn crd_yaml_has_both_crds_in_switchyard_group() {
    let yaml = crd_yaml().unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{yaml}");
    let mut kinds = Vec::new();
    for d in &docs {
        assert_eq!(d["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(d["kind"], "CustomResourceDefinition");
        assert_eq!(d["spec"]["group"], GROUP);
        assert_eq!(d["spec"]["scope"], "Namespaced");
        assert_eq!(d["spec"]["versions"][0]["name"], VERSION);
        kinds.push(d["spec"]["names"]["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["AuthorizationPolicy", "PeerAuthentication"]);
}

#[test]
fn ip_blocks_accept_cidrs_and_addresses() {
    let f = || FieldPath::at("x");
    assert_eq!(
        ip_block("10.1.2.3/16", f()).unwrap().to_string(),
        "10.1.0.0/16"
    );
    assert_eq!(
        ip_block("10.1.2.3", f()).unwrap().to_string(),
        "10.1.2.3/32"
    );
    assert_eq!(ip_block("fd00::1", f()).unwrap().to_string(), "fd00::1/128");
    let err = ip_block("10.0.0.0/33", f()).unwrap_err();
    assert!(err.message.contains("invalid ip block"), "{err}");
}

#[test]
fn port_level_keys_must_be_ports() {
    let mut pa = PeerAuthentication::new("pa", PeerAuthenticationSpec::default());
    pa.spec.port_level_mtls.insert(
        "http".into(),
        PortMtlsSettings {
            mode: MtlsModeSpec::Disable,
        },
    );
    let err = pa.to_input(ObjectKey::new("ns", "pa")).unwrap_err();
    assert_eq!(err.field.to_string(), "spec.portLevelMtls.http");

    pa.spec.port_level_mtls.clear();
    pa.spec.port_level_mtls.insert(
        "8080".into(),
        PortMtlsSettings {
            mode: MtlsModeSpec::Disable,
        },
    );
    let input = pa.to_input(ObjectKey::new("ns", "pa")).unwrap();
    assert_eq!(
        input.port_modes,
        BTreeMap::from([(8080, MtlsMode::Disable)])
    );
}

//! Unit tests of the rendered ruleset text.

use super::*;

fn config() -> CaptureConfig {
    CaptureConfig {
        exclude_outbound_ports: vec![443, 22, 443],
        exclude_outbound_cidrs: vec![
            "10.96.0.0/16".parse().expect("cidr"),
            "fd00::/8".parse().expect("cidr"),
            "10.96.1.0/24".parse().expect("cidr"),
            "169.254.169.254/32".parse().expect("cidr"),
        ],
        ..CaptureConfig::default()
    }
}

/// The chain named `name`, as text.
fn chain<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("chain {name} {{"))
        .unwrap_or_else(|| panic!("no chain {name} in\n{text}"));
    let end = text[start..].find("\n  }").expect("chain end") + start;
    &text[start..end]
}

#[test]
fn defaults_match_the_ports_contract() {
    let c = CaptureConfig::default();
    assert_eq!(
        (c.outbound_port, c.inbound_port, c.hbone_port),
        (15001, 15006, 15008)
    );
    assert_eq!(c.proxy_mark, 0x539);
    assert_eq!(c.exclude_inbound_ports, vec![15000, 15020, 15021]);
    assert!(c.exclude_outbound_ports.is_empty() && c.exclude_outbound_cidrs.is_empty());
    assert!(c.problems().is_empty());
}

#[test]
fn the_default_ruleset_is_exactly_this() {
    let expected = r#"# switchyard-sidecar capture: replaces the whole table in one transaction
table inet switchyard_sidecar
delete table inet switchyard_sidecar
table inet switchyard_sidecar {
  chain output {
    type nat hook output priority -100; policy accept;
    meta l4proto != tcp return comment "only TCP is captured (UDP and DNS are not)"
    meta mark 0x539 return comment "the proxy's own sockets (SO_MARK)"
    ip daddr 127.0.0.0/8 return comment "loopback"
    ip6 daddr ::1 return comment "loopback"
    meta l4proto tcp redirect to :15001 comment "outbound capture"
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    meta l4proto != tcp return comment "only TCP is captured (UDP and DNS are not)"
    iifname "lo" return comment "from inside the pod"
    tcp dport 15008 return comment "HBONE reaches the proxy directly"
    tcp dport { 15000, 15020, 15021 } return comment "excluded inbound ports"
    meta l4proto tcp redirect to :15006 comment "inbound capture"
  }
}
"#;
    assert_eq!(render(&CaptureConfig::default()), expected);
}

#[test]
fn outbound_returns_for_mark_loopback_and_exclusions_before_redirecting() {
    let text = render(&config());
    let output = chain(&text, "output");
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in\n{output}"))
    };
    let redirect = pos("meta l4proto tcp redirect to :15001");
    assert_eq!(redirect, lines.len() - 1, "redirect is the last rule");
    for needle in [
        "meta l4proto != tcp return",
        "meta mark 0x539 return",
        "ip daddr 127.0.0.0/8 return",
        "ip6 daddr ::1 return",
        "tcp dport { 22, 443 } return",
        // 10.96.1.0/24 merged into 10.96.0.0/16; families split, each sorted
        "ip daddr { 10.96.0.0/16, 169.254.169.254/32 } return",
        "ip6 daddr fd00::/8 return",
    ] {
        assert!(pos(needle) < redirect, "`{needle}` after the redirect");
    }
    assert!(!output.contains("15006") && !output.contains("15008"));
}

#[test]
fn inbound_returns_for_hbone_and_excluded_ports_before_redirecting() {
    let c = CaptureConfig {
        inbound_port: 16006,
        hbone_port: 16008,
        exclude_inbound_ports: vec![9090, 15020, 9090],
        ..CaptureConfig::default()
    };
    let text = render(&c);
    let prerouting = chain(&text, "prerouting");
    assert!(
        prerouting.contains("tcp dport 16008 return"),
        "{prerouting}"
    );
    assert!(
        prerouting.contains("tcp dport { 9090, 15020 } return"),
        "{prerouting}"
    );
    assert!(
        prerouting
            .trim_end()
            .ends_with("meta l4proto tcp redirect to :16006 comment \"inbound capture\""),
        "{prerouting}"
    );
    assert!(!prerouting.contains("15000"), "the defaults were replaced");
}

#[test]
fn a_single_port_renders_without_braces_and_empty_lists_render_nothing() {
    let c = CaptureConfig {
        exclude_inbound_ports: vec![15020],
        exclude_outbound_ports: vec![],
        ..CaptureConfig::default()
    };
    let text = render(&c);
    assert!(text.contains("tcp dport 15020 return comment \"excluded inbound ports\""));
    assert!(!text.contains("excluded outbound"));
}

#[test]
fn custom_ports_and_mark_are_rendered() {
    let c = CaptureConfig {
        outbound_port: 25001,
        proxy_mark: 0xdead,
        ..CaptureConfig::default()
    };
    let text = render(&c);
    assert!(text.contains("redirect to :25001"));
    assert!(text.contains("meta mark 0xdead return"));
}

#[test]
fn rendering_is_deterministic_whatever_the_input_order() {
    let a = config();
    let mut b = config();
    b.exclude_outbound_ports.reverse();
    b.exclude_outbound_cidrs.reverse();
    assert_eq!(render(&a), render(&a));
    assert_eq!(render(&a), render(&b));
}

#[test]
fn host_bits_are_truncated_from_excluded_networks() {
    let c = CaptureConfig {
        exclude_outbound_cidrs: vec!["10.1.2.3/8".parse().expect("cidr")],
        ..CaptureConfig::default()
    };
    assert!(render(&c).contains("ip daddr 10.0.0.0/8 return"));
}

#[test]
fn the_ruleset_replaces_the_table_in_one_transaction() {
    let text = render(&CaptureConfig::default());
    let head: Vec<&str> = text.lines().skip(1).take(3).collect();
    assert_eq!(
        head,
        [
            "table inet switchyard_sidecar",
            "delete table inet switchyard_sidecar",
            "table inet switchyard_sidecar {",
        ]
    );
    assert_eq!(
        render_removal(),
        "table inet switchyard_sidecar\ndelete table inet switchyard_sidecar\n"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let c = CaptureConfig {
        outbound_port: 0,
        inbound_port: 15008,
        proxy_mark: 0,
        exclude_outbound_ports: vec![0],
        ..CaptureConfig::default()
    };
    let problems = c.problems();
    assert_eq!(problems.len(), 4, "{problems:?}");
    let err = c.validate().expect_err("invalid").to_string();
    for needle in [
        "outbound port must not be 0",
        "inbound port and hbone port are both 15008",
        "proxy mark",
        "exclude-outbound-ports contains port 0",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
}

/// `nft -c` (check only, changes nothing) accepts the text; skipped without root or nft.
#[test]
fn nft_accepts_the_ruleset() {
    if !switchyard_test_support::netns::is_root() {
        eprintln!("SKIPPED nft_accepts_the_ruleset: needs root for nft -c (CI runs as root)");
        return;
    }
    let text = render(&config());
    let mut child = Command::new("nft")
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (scripts/setup.sh installs nftables)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -c rejected:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

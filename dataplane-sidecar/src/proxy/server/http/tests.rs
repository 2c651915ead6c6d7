#![allow(clippy::unwrap_used)]

use super::*;
use crate::config::matcher::{Pattern, StringMatcher};
use crate::config::route::{HeaderMatch, HeaderRule, PathMatch, QueryMatch};

fn matcher(path: PathMatch) -> RouteMatch {
    RouteMatch {
        path,
        case_sensitive: true,
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
        grpc_only: false,
    }
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

#[test]
fn routes_match_on_path_method_headers_query_and_grpc() {
    let mut m = matcher(PathMatch::SeparatedPrefix("/api".into()));
    assert!(request_matches(&m, &request("GET", "/api/x", &[])));
    assert!(!request_matches(&m, &request("GET", "/apix", &[])));

    m.method = Some("POST".into());
    assert!(!request_matches(&m, &request("GET", "/api", &[])));
    assert!(request_matches(&m, &request("POST", "/api", &[])));

    m.headers.push(HeaderMatch {
        name: "x-canary".into(),
        rule: HeaderRule::Value(StringMatcher::exact("true")),
        invert: false,
        treat_missing_as_empty: false,
    });
    assert!(!request_matches(&m, &request("POST", "/api", &[])));
    assert!(request_matches(
        &m,
        &request("POST", "/api", &[("x-canary", "true")])
    ));
    // `:authority` is the Host header for HTTP/1.1 requests.
    m.headers.push(HeaderMatch {
        name: ":authority".into(),
        rule: HeaderRule::Value(StringMatcher::exact("echo:80")),
        invert: false,
        treat_missing_as_empty: false,
    });
    assert!(request_matches(
        &m,
        &request("POST", "/api", &[("x-canary", "true"), ("host", "echo:80")])
    ));

    let mut q = matcher(PathMatch::Prefix("/".into()));
    q.query.push(QueryMatch {
        name: "user name".into(),
        value: Some(StringMatcher::exact("a&b")),
    });
    // Names and values are compared decoded.
    assert!(request_matches(
        &q,
        &request("GET", "/?x=1&user+name=a%26b", &[])
    ));
    assert!(!request_matches(&q, &request("GET", "/?user+name=a", &[])));

    let mut g = matcher(PathMatch::Regex(Pattern::new("/pkg\\.Svc/.*").unwrap()));
    g.grpc_only = true;
    let grpc = [("content-type", "application/grpc+proto")];
    assert!(request_matches(
        &g,
        &request("POST", "/pkg.Svc/Call", &grpc)
    ));
    assert!(!request_matches(&g, &request("POST", "/pkg.Svc/Call", &[])));
}

#[test]
fn percent_decoding_keeps_what_is_not_an_escape() {
    assert_eq!(decode("a%20b+c"), "a b c");
    assert_eq!(decode("100%"), "100%");
    assert_eq!(decode("%zz%4"), "%zz%4");
    assert_eq!(query_param("a=1&b=2&a=3", "a").as_deref(), Some("1"));
    assert_eq!(query_param("flag&x=1", "flag").as_deref(), Some(""));
    assert_eq!(query_param("x=1", "y"), None);
}

#[test]
fn upstream_requests_drop_hop_by_hop_headers_and_take_the_version_form() {
    let mut headers = HeaderMap::new();
    headers.insert("connection", HeaderValue::from_static("close, x-private"));
    headers.insert("x-private", HeaderValue::from_static("1"));
    headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    headers.insert("te", HeaderValue::from_static("gzip"));
    headers.insert("x-kept", HeaderValue::from_static("yes"));
    headers.insert("host", HeaderValue::from_static("echo"));
    let uri: Uri = "/p?q=1".parse().unwrap();

    let h1 = upstream_request(
        &hyper::Method::GET,
        &uri,
        headers.clone(),
        Some("echo"),
        Proto::Http1,
        empty(),
    );
    assert_eq!(h1.uri(), "/p?q=1");
    assert_eq!(h1.version(), Version::HTTP_11);
    let names: Vec<&str> = h1.headers().keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-kept", "host"], "{names:?}");

    let h2 = upstream_request(
        &hyper::Method::GET,
        &uri,
        headers,
        Some("echo.shop:80"),
        Proto::Http2,
        empty(),
    );
    assert_eq!(h2.uri(), "http://echo.shop:80/p?q=1");
    assert_eq!(h2.version(), Version::HTTP_2);
    assert!(h2.headers().get("host").is_none());

    // `te: trailers` (gRPC) goes through.
    let mut grpc = HeaderMap::new();
    grpc.insert("te", HeaderValue::from_static("trailers"));
    let r = upstream_request(
        &hyper::Method::POST,
        &uri,
        grpc,
        None,
        Proto::Http2,
        empty(),
    );
    assert_eq!(r.headers()["te"], "trailers");
}

#[test]
fn route_retry_policies_convert_to_the_decision_module() {
    use crate::config::route::{Backoff, RetryOn};
    let p = retry_policy(&route::RetryPolicy {
        retry_on: vec![RetryOn::RetriableStatusCodes, RetryOn::ConnectFailure],
        num_retries: 2,
        per_try_timeout: None,
        retriable_status_codes: vec![503],
        backoff: Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        },
    });
    assert_eq!(p.num_retries, 2);
    assert!(p.is_retriable(&AttemptOutcome::Response {
        status: 503,
        grpc_status: None
    }));
    assert!(!p.is_retriable(&AttemptOutcome::Response {
        status: 500,
        grpc_status: None
    }));
    assert!(p.is_retriable(&AttemptOutcome::ConnectFailure));
}

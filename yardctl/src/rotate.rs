//! `yardctl ca rotate-root`: starts a root rotation through the control plane's admin API and
//! optionally follows it until the new root signs. The control plane drives the rotation; this
//! only asks for it and reads `/debug/ca`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::admin::http;
use crate::duration::human;
use crate::inspect::rfc3339;

/// How long one admin request may take.
/// How often `--wait` looks at `/debug/ca`.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// `GET /debug/ca`.
#[derive(Debug, Clone, Deserialize)]
pub struct CaStatus {
    /// Rotation phase.
    pub rotation: Rotation,
    /// Roots in the bundle.
    pub roots: Vec<Root>,
    /// Proxies that have not ACKed the current bundle.
    #[serde(default)]
    pub waiting_for: Vec<String>,
}

/// Where the rotation stands.
#[derive(Debug, Clone, Deserialize)]
pub struct Rotation {
    /// `stable`, `introduced` or `retiring`.
    pub phase: String,
    /// Retiring: unix seconds when the old roots leave the bundle.
    #[serde(default)]
    pub until: Option<i64>,
}

/// One root of the bundle.
#[derive(Debug, Clone, Deserialize)]
pub struct Root {
    /// SHA-256 of the DER, hex.
    pub sha256: String,
    /// Signs new leaves.
    pub signing: bool,
    /// End of validity (RFC 3339).
    pub not_after: String,
}

impl CaStatus {
    /// Phase and roots for people.
    pub fn render_text(&self) -> String {
        let mut out = format!("phase: {}", self.rotation.phase);
        match (self.rotation.phase.as_str(), self.rotation.until) {
            ("retiring", Some(until)) => {
                let at = time::OffsetDateTime::from_unix_timestamp(until)
                    .map(rfc3339)
                    .unwrap_or_else(|_| until.to_string());
                out.push_str(&format!(" (old roots leave the bundle at {at})"));
            }
            ("introduced", _) => {
                out.push_str(" (new root in the bundle, not signing until every proxy has it)");
            }
            _ => {}
        }
        out.push_str("\nroots:\n");
        for r in &self.roots {
            out.push_str(&format!(
                "  sha256 {}  {:<7}  not after {}\n",
                r.sha256,
                if r.signing { "signing" } else { "-" },
                r.not_after
            ));
        }
        if !self.waiting_for.is_empty() {
            out.push_str(&waiting_line(&self.waiting_for));
        }
        out
    }
}

fn waiting_line(waiting: &[String]) -> String {
    format!(
        "waiting for {} prox{} to ACK the new bundle: {}\n",
        waiting.len(),
        if waiting.len() == 1 { "y" } else { "ies" },
        waiting.join(", ")
    )
}

fn parse_status(what: &str, body: &str) -> anyhow::Result<CaStatus> {
    serde_json::from_str(body).with_context(|| {
        format!("{what}: the answer is not the CA status this yardctl knows: {body}")
    })
}

/// `GET /debug/ca`.
pub async fn status(admin: &str) -> anyhow::Result<CaStatus> {
    let (code, body) = http(admin, "GET", "/debug/ca").await?;
    anyhow::ensure!(
        code == 200,
        "GET /debug/ca answered {code}: {}",
        body.trim()
    );
    parse_status("GET /debug/ca", &body)
}

/// Starts the rotation and, with `wait`, follows it until the new root signs or `timeout`
/// passes. Progress goes to `out`.
pub async fn run(
    admin: &str,
    wait: Option<Duration>,
    out: &mut impl Write,
) -> anyhow::Result<CaStatus> {
    let (code, body) = http(admin, "POST", "/ca/rotate-root").await?;
    match code {
        200 => {}
        // The control plane's own reason ("cannot rotate the root: ...").
        409 => anyhow::bail!("{}", body.trim()),
        _ => anyhow::bail!("POST /ca/rotate-root answered {code}: {}", body.trim()),
    }
    let mut st = parse_status("POST /ca/rotate-root", &body)?;
    writeln!(out, "root rotation started")?;
    write!(out, "{}", st.render_text())?;
    let Some(timeout) = wait else {
        return Ok(st);
    };
    let started = tokio::time::Instant::now();
    let mut shown = st.waiting_for.clone();
    while st.rotation.phase == "introduced" {
        if started.elapsed() >= timeout {
            let who = if st.waiting_for.is_empty() {
                "no proxy is listed as waiting; is the control plane's rotation driver stuck? see its log".to_string()
            } else {
                format!(
                    "proxies that have not ACKed the new bundle: {} (are they connected? see /debug/syncz)",
                    st.waiting_for.join(", ")
                )
            };
            anyhow::bail!(
                "the new root is still not signing after {}; {who}",
                human(time::Duration::try_from(timeout).unwrap_or(time::Duration::ZERO))
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        st = status(admin).await?;
        if st.rotation.phase == "introduced" && st.waiting_for != shown {
            if st.waiting_for.is_empty() {
                writeln!(out, "every proxy has the new bundle")?;
            } else {
                write!(out, "{}", waiting_line(&st.waiting_for))?;
            }
            out.flush()?;
            shown = st.waiting_for.clone();
        }
    }
    writeln!(out, "the new root signs now")?;
    write!(out, "{}", st.render_text())?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn status_json_parses_and_renders() {
        let st = parse_status(
            "test",
            r#"{"rotation":{"phase":"retiring","until":0},"roots":[{"sha256":"aa","signing":true,"not_after":"2035-01-01T00:00:00Z"},{"sha256":"bb","signing":false,"not_after":"2034-01-01T00:00:00Z"}],"waiting_for":[]}"#,
        )
        .unwrap();
        let text = st.render_text();
        assert!(
            text.starts_with(
                "phase: retiring (old roots leave the bundle at 1970-01-01T00:00:00Z)\n"
            ),
            "{text}"
        );
        assert!(text.contains("sha256 aa  signing"), "{text}");
        assert!(text.contains("sha256 bb  -      "), "{text}");

        let st = parse_status(
            "test",
            r#"{"rotation":{"phase":"introduced"},"roots":[],"waiting_for":["sidecar~1","ztunnel~2"]}"#,
        )
        .unwrap();
        assert!(
            st.render_text()
                .contains("waiting for 2 proxies to ACK the new bundle: sidecar~1, ztunnel~2"),
            "{}",
            st.render_text()
        );
        assert!(parse_status("test", "{}").is_err());
    }
}

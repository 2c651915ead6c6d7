//! Running the real `yardctl` binary from the suites.

use std::time::Duration;

/// Longest a yardctl run may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A finished yardctl run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts exit 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "yardctl failed: {self:#?}");
        self
    }

    /// Asserts a non-zero exit.
    #[track_caller]
    pub fn failed(self) -> Self {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "yardctl should have failed: {self:#?}"
        );
        self
    }

    /// Standard output as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// `yardctl <args>`, not started yet (stdin closed, output captured, killed on drop).
///
/// # Panics
/// When the binary is not built (`cargo build --workspace --bins`).
pub fn command(args: &[&str]) -> tokio::process::Command {
    let bin = match switchyard_test_support::echo_process::workspace_binary("yardctl") {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Waits for a started run, at most [`RUN_TIMEOUT`].
///
/// # Panics
/// When it does not finish in time.
pub async fn finish(child: tokio::process::Child) -> Run {
    let out = match tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("waiting for yardctl: {e}"),
        Err(_) => panic!("yardctl did not finish within {RUN_TIMEOUT:?}"),
    };
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `yardctl <args>` to the end.
///
/// # Panics
/// When it cannot be started or does not finish in time.
pub async fn run(args: &[&str]) -> Run {
    match command(args).spawn() {
        Ok(child) => finish(child).await,
        Err(e) => panic!("starting yardctl: {e}"),
    }
}

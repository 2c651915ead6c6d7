//! The supervisor's control socket (`<state>/control.sock`): one JSON request per line, one
//! JSON answer per line. `yardctl dev delete-pod` talks to it; everything else reads the
//! state file.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// File name of the socket inside the state folder.
pub const SOCKET: &str = "control.sock";

/// The socket of the cluster whose state folder is `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// A request to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Delete a pod (`namespace/name`): it leaves the model and its Services' endpoints
    /// first, then its processes get SIGTERM (SIGKILL after the grace period) and its
    /// namespace and cgroup go. A Deployment's pod is replaced by a new one, as in
    /// Kubernetes.
    DeletePod {
        /// `namespace/name`.
        pod: String,
    },
    /// Read the manifests folder again now.
    Reload,
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Ok,
    /// Not done, and why.
    Error(String),
}

/// Sends one request and waits for the answer.
pub fn send(state_dir: &Path, request: &Request, timeout: Duration) -> Result<(), ClusterError> {
    let path = socket_path(state_dir);
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| ClusterError::Io { what, source }
    };
    let mut stream = UnixStream::connect(&path).map_err(|source| ClusterError::Io {
        what: format!(
            "connecting to the supervisor at {} (is the cluster up? `yardctl dev status`)",
            path.display()
        ),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("setting a timeout on"))?;
    let mut line = serde_json::to_string(request)
        .map_err(|e| ClusterError::Supervisor(format!("encoding the request: {e}")))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(io("writing to"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io("reading the answer from"))?;
    match serde_json::from_str::<Reply>(&answer) {
        Ok(Reply::Ok) => Ok(()),
        Ok(Reply::Error(e)) => Err(ClusterError::Supervisor(e)),
        Err(e) => Err(ClusterError::Supervisor(format!(
            "unreadable answer {answer:?}: {e}"
        ))),
    }
}

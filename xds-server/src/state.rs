//! From source reports to published meshes: builds a [`Mesh`] from each new good set of
//! objects, keeps the last good one when a build fails, and tracks what operators need to see
//! (loaded or not, problems, warnings).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use switchyard_model::{BuildWarning, Mesh, MeshConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::sources::{ClusterObjects, SourceProblem, SourceReport};

/// What `/readyz` and `/debug/sources` show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MeshStatus {
    /// Source description.
    pub source: String,
    /// A good mesh has been built at least once.
    pub loaded: bool,
    /// Generation of the mesh being served.
    pub generation: u64,
    /// Objects in it.
    pub objects: usize,
    /// When it was built.
    #[serde(with = "system_time")]
    pub loaded_at: Option<SystemTime>,
    /// Problems of the latest source read or build (the mesh served is the last good one).
    pub problems: Vec<SourceProblem>,
    /// Non-fatal problems of the mesh being served.
    pub warnings: Vec<String>,
}

mod system_time {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

/// A published mesh and when the change that produced it was seen.
pub type Published = (Arc<Mesh>, Instant);

/// What a mesh is built from.
#[derive(Debug)]
pub struct MeshInputs {
    /// Source description (for status).
    pub source: String,
    /// Cluster objects, as the source reads them.
    pub reports: watch::Receiver<SourceReport>,
    /// Mesh-wide settings.
    pub config: MeshConfig,
    /// The CA's trust bundle (goes into `config.trust_bundle`).
    pub bundle: watch::Receiver<Arc<[String]>>,
}

/// Follows the inputs, publishing each new mesh on `meshes` and status on `status`; a new
/// trust bundle rebuilds the mesh from the same objects.
pub async fn follow(
    inputs: MeshInputs,
    meshes: watch::Sender<Published>,
    status: Arc<ArcSwap<MeshStatus>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let MeshInputs {
        source,
        mut reports,
        mut config,
        mut bundle,
    } = inputs;
    let mut generation = meshes.borrow().0.generation;
    let mut built_from: Option<Arc<ClusterObjects>> = None;
    loop {
        let report = reports.borrow_and_update().clone();
        let new_bundle = bundle.borrow_and_update().clone();
        metrics.ca_bundle_roots.set(new_bundle.len() as i64);
        if new_bundle != config.trust_bundle {
            info!(roots = new_bundle.len(), "trust bundle changed");
            config.trust_bundle = new_bundle;
            // rebuild from the same objects with the new bundle
            built_from = None;
        }
        let seen = Instant::now();
        let mut problems = report.problems.clone();
        let mut current = (*status.load_full()).clone();
        current.source = source.clone();
        if let Some(objects) = &report.objects
            && !built_from.as_ref().is_some_and(|b| Arc::ptr_eq(b, objects))
        {
            match objects.to_builder(config.clone()).build(generation + 1) {
                Ok(mesh) => {
                    generation += 1;
                    built_from = Some(objects.clone());
                    current.loaded = true;
                    current.generation = generation;
                    current.objects = objects.len();
                    current.loaded_at = Some(SystemTime::now());
                    current.warnings = mesh.warnings.iter().map(warning_text).collect();
                    for w in &mesh.warnings {
                        warn!(object = %w.object, "{}", w.message);
                    }
                    info!(
                        generation,
                        objects = objects.len(),
                        services = mesh.services.len(),
                        workloads = mesh.workloads.len(),
                        "mesh built"
                    );
                    metrics.source_loads.inc();
                    meshes.send_replace((Arc::new(mesh), seen));
                }
                Err(e) => {
                    warn!(error = %e, "mesh not rebuilt; the last good mesh keeps serving");
                    problems.push(SourceProblem {
                        origin: source.clone(),
                        document: None,
                        line: None,
                        column: None,
                        object: None,
                        field: None,
                        message: e.to_string(),
                    });
                }
            }
        }
        for p in &report.problems {
            warn!(problem = %p, "source problem; the last good mesh keeps serving");
        }
        metrics.source_problems.set(problems.len() as i64);
        current.problems = problems;
        status.store(Arc::new(current));
        tokio::select! {
            changed = reports.changed() => if changed.is_err() { return },
            changed = bundle.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

fn warning_text(w: &BuildWarning) -> String {
    format!("{}: {}", w.object, w.message)
}

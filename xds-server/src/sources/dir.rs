//! The directory source: every `*.yaml` / `*.yml` manifest under a folder, read as a whole
//! and re-read whenever something in the folder changes.
//!
//! This module owns finding the files, splitting them into YAML documents (so that lines
//! count in the file and one broken document does not hide problems in the next), detecting
//! objects defined twice, and the watch loop (notify -> debounce -> re-read -> report). It
//! does not interpret objects; that is [`super::k8s`]'s job.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::k8s::{self, K8sObject, Location, ManifestError};
use super::{ClusterObjects, Source, SourceProblem, SourceReport};

#[cfg(test)]
mod tests;

/// How long the folder must be quiet before it is re-read.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// How many debounce periods to wait before retrying to watch a folder that cannot be watched
/// (it does not exist yet): 2 s with the default debounce.
const WATCH_RETRY_DEBOUNCES: u32 = 10;

/// Reads a folder of Kubernetes manifests and follows its changes.
#[derive(Debug, Clone)]
pub struct DirectorySource {
    path: PathBuf,
    debounce: Duration,
}

impl DirectorySource {
    /// A source for the manifests under `path`, re-read once changes have been quiet for
    /// `debounce` (see [`DEFAULT_DEBOUNCE`]).
    pub fn new(path: impl Into<PathBuf>, debounce: Duration) -> Self {
        DirectorySource {
            path: path.into(),
            debounce,
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Source for DirectorySource {
    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }

    fn run(
        self: Box<Self>,
        reports: watch::Sender<SourceReport>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let span = tracing::info_span!("source", kind = "directory", path = %self.path.display());
        Box::pin(watch_loop(*self, reports, shutdown).instrument(span))
    }
}

/// Reads every manifest under `path` once.
///
/// Returns the objects, or every problem found (unreadable folder or files, YAML errors,
/// invalid or unknown objects, objects defined twice) when there is any.
pub fn load_dir(path: &Path) -> Result<ClusterObjects, Vec<SourceProblem>> {
    load(path, &mut ParseCache::default()).result
}

/// One parsed document of a file.
#[derive(Debug)]
struct ParsedDoc {
    index: usize,
    result: Result<Vec<k8s::ParsedObject>, Vec<ManifestError>>,
}

/// Parsed documents by file, keyed by a hash of the file's text: a re-read after one file
/// changed parses only that file (5,000 objects take ~0.5 s to parse; one file takes ~0.1 ms).
#[derive(Debug, Default)]
struct ParseCache {
    files: HashMap<PathBuf, (u64, Arc<Vec<ParsedDoc>>)>,
}

impl ParseCache {
    fn parse(&mut self, file: &Path, text: &str) -> Arc<Vec<ParsedDoc>> {
        let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        if let Some((h, docs)) = self.files.get(file)
            && *h == hash
        {
            return docs.clone();
        }
        let docs: Arc<Vec<ParsedDoc>> = Arc::new(
            split_documents(text)
                .into_iter()
                .map(|doc| ParsedDoc {
                    index: doc.index,
                    result: k8s::parse_yaml_document(doc.text, doc.line_offset),
                })
                .collect(),
        );
        self.files.insert(file.to_path_buf(), (hash, docs.clone()));
        docs
    }

    /// Forgets files that are gone.
    fn retain(&mut self, files: &[PathBuf]) {
        let keep: BTreeSet<&PathBuf> = files.iter().collect();
        self.files.retain(|p, _| keep.contains(p));
    }
}

/// The outcome of reading the folder once.
struct Load {
    files: usize,
    result: Result<ClusterObjects, Vec<SourceProblem>>,
}

/// Where an object was read.
struct Origin {
    file: String,
    document: usize,
    location: Option<Location>,
}

impl Origin {
    fn describe(&self) -> String {
        match self.location {
            Some(l) => format!("{} document {} line {}", self.file, self.document, l.line),
            None => format!("{} document {}", self.file, self.document),
        }
    }
}

fn load(root: &Path, cache: &mut ParseCache) -> Load {
    let mut problems = Vec::new();
    let files = manifest_files(root, &mut problems);
    cache.retain(&files);
    let mut objects: Vec<K8sObject> = Vec::new();
    let mut seen: HashMap<String, Origin> = HashMap::new();

    for file in &files {
        let origin = file.display().to_string();
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                problems.push(problem(&origin, format!("cannot read file: {e}")));
                continue;
            }
        };
        for doc in cache.parse(file, &text).iter() {
            match &doc.result {
                Ok(parsed) => {
                    for p in parsed {
                        match seen.entry(p.object.id()) {
                            Entry::Occupied(first) => problems.push(SourceProblem {
                                origin: origin.clone(),
                                document: Some(doc.index),
                                line: p.location.map(|l| l.line),
                                column: p.location.map(|l| l.column),
                                message: format!(
                                    "duplicate object: {} is also defined in {}",
                                    first.key(),
                                    first.get().describe()
                                ),
                                object: Some(first.key().clone()),
                                field: None,
                            }),
                            Entry::Vacant(slot) => {
                                slot.insert(Origin {
                                    file: origin.clone(),
                                    document: doc.index,
                                    location: p.location,
                                });
                                objects.push(p.object.clone());
                            }
                        }
                    }
                }
                Err(errors) => problems.extend(
                    errors
                        .iter()
                        .map(|e| manifest_problem(&origin, doc.index, e.clone())),
                ),
            }
        }
    }

    let result = if problems.is_empty() {
        Ok(k8s::collect_objects(objects))
    } else {
        Err(problems)
    };
    Load {
        files: files.len(),
        result,
    }
}

fn problem(origin: &str, message: String) -> SourceProblem {
    SourceProblem {
        origin: origin.to_string(),
        document: None,
        line: None,
        column: None,
        object: None,
        field: None,
        message,
    }
}

fn manifest_problem(origin: &str, document: usize, e: ManifestError) -> SourceProblem {
    let location = e.location();
    SourceProblem {
        origin: origin.to_string(),
        document: Some(document),
        line: location.map(|l| l.line),
        column: location.map(|l| l.column),
        object: e.object().map(str::to_string),
        field: e.field().filter(|f| !f.is_root()).map(|f| f.to_string()),
        message: e.message(),
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// Whether a file name is one to read: `*.yaml` / `*.yml`, not hidden, not an editor's.
fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.')
        && !is_editor_temp(name)
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Editor swap, backup and lock files: changes to them are not changes to the manifests.
fn is_editor_temp(name: &str) -> bool {
    name.starts_with(".#")
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".swo")
        || name == "4913"
}

/// Every manifest under `root`, sorted; hidden folders are skipped (which also skips the
/// `..data` target of a ConfigMap volume: its files are reached through their visible links).
fn manifest_files(root: &Path, problems: &mut Vec<SourceProblem>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    match fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            problems.push(problem(
                &root.display().to_string(),
                "not a directory: the manifest source needs a folder".into(),
            ));
            return files;
        }
        Err(e) => {
            problems.push(problem(
                &root.display().to_string(),
                format!("cannot read directory: {e}"),
            ));
            return files;
        }
    }
    let mut visited = BTreeSet::new();
    walk(root, &mut files, &mut visited, problems);
    files.sort();
    files
}

fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    visited: &mut BTreeSet<PathBuf>,
    problems: &mut Vec<SourceProblem>,
) {
    // Symlinked folders are followed, once each, so a link cycle cannot loop forever.
    if let Ok(real) = fs::canonicalize(dir)
        && !visited.insert(real)
    {
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(problem(
                &dir.display().to_string(),
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                problems.push(problem(
                    &dir.display().to_string(),
                    format!("cannot read directory: {e}"),
                ));
                continue;
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `fs::metadata` follows links: a link to a manifest counts as the manifest.
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, files, visited, problems),
            Ok(m) if m.is_file() && is_manifest_name(&name) => files.push(path),
            Ok(_) => {}
            // A dangling link or a file removed while listing: only a problem if it would
            // have been read.
            Err(e) if is_manifest_name(&name) => problems.push(problem(
                &path.display().to_string(),
                format!("cannot read file: {e}"),
            )),
            Err(_) => {}
        }
    }
}

/// One YAML document of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DocText<'a> {
    /// 0-based index in the file.
    index: usize,
    /// Lines of the file before `text`.
    line_offset: usize,
    /// The document, including its `---` line.
    text: &'a str,
}

/// Whether a line starts a document: `---` alone or followed by whitespace (and content).
fn is_document_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.chars().next().is_none_or(char::is_whitespace))
}

/// Whether a line carries content, rather than being blank, a comment or a directive.
fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !(t.is_empty() || t.starts_with('#') || t.starts_with('%'))
}

/// Splits a YAML stream at its `---` lines. YAML forbids `---` at the start of a line inside
/// a document (even in block scalars), so splitting by lines is exact. The text before the
/// first `---` is a document only if it has content (otherwise it is comments or directives
/// of the first document).
fn split_documents(text: &str) -> Vec<DocText<'_>> {
    let mut starts = vec![(0usize, 0usize)];
    let mut seen_marker = false;
    let mut preamble_has_content = false;
    let mut offset = 0;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        if is_document_marker(line) {
            // The first marker opens the first document, unless content came before it.
            if seen_marker || preamble_has_content {
                starts.push((offset, line_no));
            }
            seen_marker = true;
        } else if !seen_marker && is_content(line) {
            preamble_has_content = true;
        }
        offset += line.len();
    }
    let mut docs = Vec::with_capacity(starts.len());
    for (i, &(start, line_offset)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(text.len(), |&(s, _)| s);
        docs.push(DocText {
            index: i,
            line_offset,
            text: &text[start..end],
        });
    }
    docs
}

// ---------------------------------------------------------------------------------------------
// Watching

/// The last report, to tell whether a new read changes anything.
#[derive(Default)]
struct Reported {
    once: bool,
    objects: Option<Arc<ClusterObjects>>,
    problems: Vec<SourceProblem>,
}

impl Reported {
    /// Reports `load` if it differs from the last report (objects or problems).
    fn apply(&mut self, load: Load, reports: &watch::Sender<SourceReport>) {
        let (changed, objects, problems) = match load.result {
            Ok(objects) => {
                let changed = !self.once
                    || !self.problems.is_empty()
                    || self.objects.as_deref() != Some(&objects);
                if changed {
                    self.objects = Some(Arc::new(objects));
                    self.problems.clear();
                }
                (changed, self.objects.as_ref().map_or(0, |o| o.len()), 0)
            }
            Err(problems) => {
                let changed = !self.once || problems != self.problems;
                let n = problems.len();
                if changed {
                    self.problems = problems;
                }
                (changed, 0, n)
            }
        };
        if !changed {
            debug!(files = load.files, objects, problems, "manifests unchanged");
            return;
        }
        self.once = true;
        info!(files = load.files, objects, problems, "manifests loaded");
        for p in &self.problems {
            warn!(problem = %p, "manifest problem");
        }
        let revision = reports.borrow().revision + 1;
        reports.send_replace(SourceReport {
            revision,
            objects: self.objects.clone(),
            problems: self.problems.clone(),
        });
    }
}

/// Whether a change notification can concern the manifests. The folder is re-read on
/// anything but reads (our own reads produce open events) and editor temp files; renames of
/// hidden entries still count, since a ConfigMap volume swaps its `..data` link that way.
fn is_relevant(event: &notify::Event) -> bool {
    let read_only = matches!(
        event.kind,
        EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Read | AccessMode::Execute))
    );
    let temp_only = !event.paths.is_empty()
        && event.paths.iter().all(|p| {
            p.file_name()
                .is_some_and(|n| is_editor_temp(&n.to_string_lossy()))
        });
    !read_only && !temp_only
}

fn start_watcher(path: &Path, wake: &Arc<Notify>) -> notify::Result<RecommendedWatcher> {
    let wake = Arc::clone(wake);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) if is_relevant(&event) => wake.notify_one(),
            Ok(_) => {}
            Err(e) => {
                // Lost events (a queue overflow...) are made up for by a full re-read.
                warn!(error = %e, "file watch error; re-reading the folder");
                wake.notify_one();
            }
        }
    })?;
    watcher.watch(path, RecursiveMode::Recursive)?;
    Ok(watcher)
}

async fn watch_loop(
    source: DirectorySource,
    reports: watch::Sender<SourceReport>,
    shutdown: CancellationToken,
) {
    // `Notify` keeps one permit: events arriving while a read runs are not lost, and a burst
    // of events costs one re-read. The notify thread never blocks on it.
    let wake = Arc::new(Notify::new());
    let mut watcher: Option<(RecommendedWatcher, DirIdentity)> = None;
    let mut watch_failed = false;
    let mut reported = Reported::default();
    let watch_retry = source.debounce * WATCH_RETRY_DEBOUNCES;
    let cache = Arc::new(std::sync::Mutex::new(ParseCache::default()));
    loop {
        if watcher.is_none() {
            // Taken before watching: if the folder is replaced in between, the next check
            // sees a different identity and watches again.
            let identity = dir_identity(&source.path);
            match (identity, start_watcher(&source.path, &wake)) {
                (Some(identity), Ok(w)) => {
                    watcher = Some((w, identity));
                    watch_failed = false;
                }
                (_, Err(e)) if !watch_failed => {
                    warn!(error = %e, retry_in = ?watch_retry, "cannot watch the folder");
                    watch_failed = true;
                }
                _ => {}
            }
        }

        let path = source.path.clone();
        let parse_cache = cache.clone();
        let load = match tokio::task::spawn_blocking(move || {
            let mut cache = parse_cache.lock().unwrap_or_else(|e| e.into_inner());
            load(&path, &mut cache)
        })
        .await
        {
            Ok(load) => load,
            Err(e) => Load {
                files: 0,
                result: Err(vec![problem(
                    &source.path.display().to_string(),
                    format!("reading the folder failed: {e}"),
                )]),
            },
        };
        // A folder that was deleted (or replaced) took its watch with it: watch again.
        if watcher
            .as_ref()
            .is_some_and(|(_, id)| dir_identity(&source.path) != Some(*id))
        {
            watcher = None;
        }
        reported.apply(load, &reports);

        let polling = watcher.is_none();
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = wake.notified() => {}
            () = tokio::time::sleep(watch_retry), if polling => {}
        }
        if !debounce(&wake, source.debounce, &shutdown).await {
            break;
        }
    }
    debug!("directory source stopped");
}

/// What tells a folder from another folder later created at the same path.
type DirIdentity = (u64, u64);

#[cfg(unix)]
fn dir_identity(path: &Path) -> Option<DirIdentity> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .ok()
        .filter(fs::Metadata::is_dir)
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn dir_identity(path: &Path) -> Option<DirIdentity> {
    path.is_dir().then_some((0, 0))
}

/// Waits until no change came for `quiet` (at most ten times that, so a folder that never
/// stops changing is still read). Returns `false` on shutdown.
async fn debounce(wake: &Notify, quiet: Duration, shutdown: &CancellationToken) -> bool {
    let deadline = tokio::time::Instant::now() + quiet * 10;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(quiet) => return true,
            () = tokio::time::sleep_until(deadline) => return true,
            () = wake.notified() => {}
        }
    }
}

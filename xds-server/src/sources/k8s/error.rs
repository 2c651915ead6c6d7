//! Field paths and the errors a manifest document can have.

use std::fmt;

use super::SUPPORTED_KINDS;
use super::document::Doc;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// A mapping key (a field name, a label key, a port key...).
    Key(String),
    /// A list index.
    Index(usize),
}

/// Where a value sits inside an object, e.g. `spec.ports[0].port` or
/// `metadata.labels["switchyard.io/dataplane-mode"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<PathSegment>);

impl FieldPath {
    /// The object itself.
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// A path of plain field names separated by dots (`"spec.rules"`); for static paths only,
    /// since a key containing a dot cannot be written this way (use [`FieldPath::key`]).
    pub fn at(dotted: &str) -> Self {
        FieldPath(
            dotted
                .split('.')
                .filter(|s| !s.is_empty())
                .map(|s| PathSegment::Key(s.to_string()))
                .collect(),
        )
    }

    /// This path followed by a mapping key.
    #[must_use]
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.0.push(PathSegment::Key(key.into()));
        self
    }

    /// This path followed by a list index.
    #[must_use]
    pub fn index(mut self, index: usize) -> Self {
        self.0.push(PathSegment::Index(index));
        self
    }

    /// This path followed by all of `other`.
    #[must_use]
    pub fn join(&self, other: &FieldPath) -> Self {
        let mut segments = self.0.clone();
        segments.extend(other.0.iter().cloned());
        FieldPath(segments)
    }

    /// The steps of the path.
    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }

    /// Whether this is the object itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn from_serde(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        FieldPath(
            path.iter()
                .map(|s| match s {
                    Segment::Seq { index } => PathSegment::Index(*index),
                    Segment::Map { key } => PathSegment::Key(key.clone()),
                    Segment::Enum { variant } => PathSegment::Key(variant.clone()),
                    Segment::Unknown => PathSegment::Key("?".into()),
                })
                .collect(),
        )
    }

    pub(super) fn parent(&self) -> Option<FieldPath> {
        let (_, rest) = self.0.split_last()?;
        Some(FieldPath(rest.to_vec()))
    }
}

/// Keys that print as `.name`; anything else prints as `["key"]`.
fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(k) if is_plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                PathSegment::Key(k) => write!(f, "[{k:?}]")?,
                PathSegment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A value that is wrong, found while converting a typed object into a model input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {message}")]
pub struct FieldError {
    /// Where.
    pub field: FieldPath,
    /// What is wrong, lowercase.
    pub message: String,
}

impl FieldError {
    /// Builds an error.
    pub fn new(field: FieldPath, message: impl Into<String>) -> Self {
        FieldError {
            field,
            message: message.into(),
        }
    }
}

/// A position in the YAML text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// Line (counted in the file when the caller passed the document's line offset).
    pub line: usize,
    /// Column.
    pub column: usize,
}

/// What is wrong with one manifest document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML.
    #[error("invalid yaml: {message}")]
    Yaml {
        /// The parser's message, without its position.
        message: String,
        /// Where the parser stopped.
        location: Option<Location>,
    },
    /// The document is not a mapping.
    #[error("expected a kubernetes object (a mapping with apiVersion and kind), found {found}")]
    NotAnObject {
        /// What was found instead (`a list`, `a string`...).
        found: &'static str,
        /// Where.
        field: FieldPath,
        /// Where, in the text.
        location: Option<Location>,
    },
    /// `apiVersion`/`kind` is not one Switchyard reads.
    #[error(
        "unknown kind {kind} (apiVersion {api_version}): supported kinds are {SUPPORTED_KINDS}"
    )]
    UnknownKind {
        /// The document's apiVersion.
        api_version: String,
        /// The document's kind.
        kind: String,
        /// The `kind` field.
        field: FieldPath,
        /// Where, in the text.
        location: Option<Location>,
    },
    /// A field is missing or has a wrong value.
    #[error("{}field {field}: {message}", object.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
    Invalid {
        /// `<Kind> <namespace>/<name>` when known.
        object: Option<String>,
        /// Where.
        field: FieldPath,
        /// What is wrong, lowercase.
        message: String,
        /// Where, in the text.
        location: Option<Location>,
    },
}

impl ManifestError {
    /// The field concerned, if any.
    pub fn field(&self) -> Option<&FieldPath> {
        match self {
            ManifestError::Yaml { .. } => None,
            ManifestError::NotAnObject { field, .. }
            | ManifestError::UnknownKind { field, .. }
            | ManifestError::Invalid { field, .. } => Some(field),
        }
    }

    /// Where in the text, when the document was YAML text.
    pub fn location(&self) -> Option<Location> {
        match self {
            ManifestError::Yaml { location, .. }
            | ManifestError::NotAnObject { location, .. }
            | ManifestError::UnknownKind { location, .. }
            | ManifestError::Invalid { location, .. } => *location,
        }
    }

    /// `<Kind> <namespace>/<name>` when known.
    pub fn object(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { object, .. } => object.as_deref(),
            _ => None,
        }
    }

    /// What is wrong, without the object and field (which [`ManifestError::object`] and
    /// [`ManifestError::field`] give).
    pub fn message(&self) -> String {
        match self {
            ManifestError::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Moves an error found in a `List` item under `prefix`, re-locating it in `outer`.
    pub(super) fn nested(self, prefix: &FieldPath, outer: &Doc<'_>) -> Self {
        let relocate = |field: &FieldPath| {
            let field = prefix.join(field);
            let location = outer.locate_nearest(&field);
            (field, location)
        };
        match self {
            ManifestError::Yaml { message, .. } => ManifestError::Yaml {
                message,
                location: outer.locate_nearest(prefix),
            },
            ManifestError::NotAnObject { found, field, .. } => {
                let (field, location) = relocate(&field);
                ManifestError::NotAnObject {
                    found,
                    field,
                    location,
                }
            }
            ManifestError::UnknownKind {
                api_version,
                kind,
                field,
                ..
            } => {
                let (field, location) = relocate(&field);
                ManifestError::UnknownKind {
                    api_version,
                    kind,
                    field,
                    location,
                }
            }
            ManifestError::Invalid {
                object,
                field,
                message,
                ..
            } => {
                let (field, location) = relocate(&field);
                ManifestError::Invalid {
                    object,
                    field,
                    message,
                    location,
                }
            }
        }
    }
}

/// A field error found by serde or by a conversion, before it is tied to an object.
pub(super) struct Bad {
    pub(super) field: FieldPath,
    pub(super) message: String,
    pub(super) location: Option<Location>,
}

impl From<FieldError> for Bad {
    fn from(e: FieldError) -> Self {
        Bad {
            field: e.field,
            message: e.message,
            location: None,
        }
    }
}

pub(super) fn bad(field: FieldPath, message: impl Into<String>) -> Bad {
    Bad {
        field,
        message: message.into(),
        location: None,
    }
}

//! Conversion errors: which resource, which field, and whether the value is wrong or asks for
//! something the sidecar does not do. Their messages are what the follower NACKs with.
//!
//! Inside the converters a [`FieldError`] carries the path from the failing field up; each
//! level adds its own segment on the way out ([`At::at`]), so only failures pay for paths.

use std::fmt;
use std::time::Duration;

use prost::Message;
use switchyard_protos::{TypeUrl, wkt};

/// Why a resource was not accepted. One resource, one error; the follower keeps the last good
/// version of that resource and NACKs the response with [`ConvertError`]'s message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The bytes (or their envelope) are not the resource they claim to be.
    #[error("{} {name:?}: {problem}", noun(*type_url))]
    Malformed {
        /// Resource type.
        type_url: TypeUrl,
        /// Resource name as the response gave it.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// A field holds a value that is invalid (Envoy would reject it too).
    #[error("{} {name:?}: {field}: {problem}", noun(*type_url))]
    Invalid {
        /// Resource type.
        type_url: TypeUrl,
        /// Resource name.
        name: String,
        /// Path of the field, e.g. `virtual_hosts[0].routes[2].match.safe_regex`.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A field asks for behaviour the sidecar does not implement; accepting the resource
    /// would silently serve something else than the control plane meant.
    #[error("{} {name:?}: {field}: not supported by the sidecar: {what}", noun(*type_url))]
    Unsupported {
        /// Resource type.
        type_url: TypeUrl,
        /// Resource name.
        name: String,
        /// Path of the field.
        field: String,
        /// What is not supported.
        what: String,
    },
}

impl ConvertError {
    /// The type of the rejected resource.
    pub fn type_url(&self) -> TypeUrl {
        match self {
            ConvertError::Malformed { type_url, .. }
            | ConvertError::Invalid { type_url, .. }
            | ConvertError::Unsupported { type_url, .. } => *type_url,
        }
    }

    /// The name of the rejected resource.
    pub fn name(&self) -> &str {
        match self {
            ConvertError::Malformed { name, .. }
            | ConvertError::Invalid { name, .. }
            | ConvertError::Unsupported { name, .. } => name,
        }
    }

    /// The field path, when one field is to blame.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConvertError::Malformed { .. } => None,
            ConvertError::Invalid { field, .. } | ConvertError::Unsupported { field, .. } => {
                Some(field)
            }
        }
    }
}

fn noun(t: TypeUrl) -> &'static str {
    match t {
        TypeUrl::Cluster => "cluster",
        TypeUrl::ClusterLoadAssignment => "cluster load assignment",
        TypeUrl::Listener => "listener",
        TypeUrl::RouteConfiguration => "route configuration",
        TypeUrl::Secret => "secret",
        TypeUrl::Service => "service",
        TypeUrl::Workload => "workload",
        TypeUrl::Authorization => "authorization",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Invalid(String),
    Unsupported(String),
}

/// A failure inside a resource, with the field path collected on the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Innermost segment first.
    segments: Vec<String>,
    problem: Problem,
}

impl FieldError {
    /// `field` holds a bad value.
    pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            segments: vec![field.into()],
            problem: Problem::Invalid(problem.into()),
        }
    }

    /// `field` asks for something the sidecar does not do.
    pub(crate) fn unsupported(field: impl Into<String>, what: impl Into<String>) -> Self {
        FieldError {
            segments: vec![field.into()],
            problem: Problem::Unsupported(what.into()),
        }
    }

    /// Adds the segment of the enclosing field.
    pub(crate) fn at(mut self, segment: impl fmt::Display) -> Self {
        self.segments.push(segment.to_string());
        self
    }

    /// The error of resource `name` of type `type_url`.
    pub(crate) fn into_error(self, type_url: TypeUrl, name: &str) -> ConvertError {
        let field = self
            .segments
            .iter()
            .rev()
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(".");
        let name = name.to_string();
        match self.problem {
            Problem::Invalid(problem) => ConvertError::Invalid {
                type_url,
                name,
                field,
                problem,
            },
            Problem::Unsupported(what) => ConvertError::Unsupported {
                type_url,
                name,
                field,
                what,
            },
        }
    }
}

/// Adds path segments to the error of a `Result`.
pub(crate) trait At<T> {
    /// Prefixes the error's path with `segment`.
    fn at(self, segment: impl fmt::Display) -> Result<T, FieldError>;
    /// Prefixes the error's path with `field[index]`.
    fn at_index(self, field: &str, index: usize) -> Result<T, FieldError>;
}

impl<T> At<T> for Result<T, FieldError> {
    fn at(self, segment: impl fmt::Display) -> Result<T, FieldError> {
        self.map_err(|e| e.at(segment))
    }

    fn at_index(self, field: &str, index: usize) -> Result<T, FieldError> {
        self.map_err(|e| e.at(format_args!("{field}[{index}]")))
    }
}

/// Fails when `rest` (a message whose understood and harmless fields the caller has already
/// taken out) still has fields set: those ask for behaviour the sidecar does not implement.
/// The error names them (proto field names, read through the descriptor pool).
pub(crate) fn reject_rest<M>(rest: &M) -> Result<(), FieldError>
where
    M: Message + prost::Name + Default + PartialEq,
{
    if *rest == M::default() {
        return Ok(());
    }
    let names = set_fields(rest);
    let field = match names.as_slice() {
        [one] => one.clone(),
        [] => String::new(),
        many => format!("{{{}}}", many.join(",")),
    };
    Err(FieldError::unsupported(
        field,
        format!("{} field set that the sidecar does not implement", M::NAME),
    ))
}

/// Names of the fields set in `m`.
fn set_fields<M: Message + prost::Name>(m: &M) -> Vec<String> {
    let pool = switchyard_protos::json::pool();
    let Some(desc) = pool.get_message_by_name(&M::full_name()) else {
        return vec!["<unknown field>".into()];
    };
    match prost_reflect::DynamicMessage::decode(desc, m.encode_to_vec().as_slice()) {
        Ok(dm) => dm.fields().map(|(f, _)| f.name().to_string()).collect(),
        Err(_) => vec!["<unknown field>".into()],
    }
}

/// Decodes the `Any` in `field` as `M`; another type is unsupported.
pub(crate) fn unpack<M>(field: &str, any: &wkt::Any) -> Result<M, FieldError>
where
    M: Message + prost::Name + Default,
{
    if any.type_url != M::type_url() {
        return Err(FieldError::unsupported(
            field,
            format!("{} (expected {})", any.type_url, M::full_name()),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| FieldError::invalid(field, format!("cannot decode {}: {e}", M::NAME)))
}

/// A protobuf duration as a [`Duration`]; negative or malformed ones are invalid.
pub(crate) fn duration(field: &str, d: &wkt::Duration) -> Result<Duration, FieldError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldError::invalid(
            field,
            format!(
                "duration {}s {}ns is negative or malformed",
                d.seconds, d.nanos
            ),
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A duration that must be above zero.
pub(crate) fn positive_duration(field: &str, d: &wkt::Duration) -> Result<Duration, FieldError> {
    let v = duration(field, d)?;
    if v.is_zero() {
        return Err(FieldError::invalid(field, "must be greater than zero"));
    }
    Ok(v)
}

/// An optional duration with a default.
pub(crate) fn duration_or(
    field: &str,
    d: Option<&wkt::Duration>,
    default: Duration,
) -> Result<Duration, FieldError> {
    d.map_or(Ok(default), |d| duration(field, d))
}

/// A port number from a `uint32` field.
pub(crate) fn port(field: &str, value: u32) -> Result<u16, FieldError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::invalid(field, format!("{value} is not a port number")))
}

#[cfg(test)]
mod tests;

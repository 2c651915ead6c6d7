//! Reading one document with serde, and finding where a field is in its YAML text.

use std::fmt;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::{Bad, FieldPath, Location, PathSegment};

/// A document being read: YAML text (errors carry lines) or a parsed value.
pub(super) enum Doc<'a> {
    Yaml { text: &'a str, line_offset: usize },
    Value(&'a serde_json::Value),
}

impl Doc<'_> {
    pub(super) fn read<T: DeserializeOwned>(&self) -> Result<T, Bad> {
        match self {
            Doc::Yaml { text, line_offset } => {
                let de = serde_yaml_ng::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let location = e.inner().location().map(|l| Location {
                        line: l.line() + line_offset,
                        column: l.column(),
                    });
                    let raw = clean_yaml_message(&e.inner().to_string(), *line_offset);
                    serde_bad(e.path(), &raw, location)
                })
            }
            Doc::Value(v) => serde_path_to_error::deserialize(*v)
                .map_err(|e| serde_bad(e.path(), &e.inner().to_string(), None)),
        }
    }

    /// Where `field` is in the text, or where its closest existing ancestor is.
    pub(super) fn locate_nearest(&self, field: &FieldPath) -> Option<Location> {
        let Doc::Yaml { text, line_offset } = self else {
            return None;
        };
        let mut path = Some(field.clone());
        while let Some(p) = path {
            if let Some(l) = locate(text, &p) {
                return Some(Location {
                    line: l.line + line_offset,
                    column: l.column,
                });
            }
            path = p.parent();
        }
        None
    }
}

/// Turns a serde error into a field error: names the missing or unknown field itself and
/// drops the path prefix the YAML parser puts in front of its messages.
fn serde_bad(path: &serde_path_to_error::Path, raw: &str, location: Option<Location>) -> Bad {
    let mut field = FieldPath::from_serde(path);
    let mut message = raw.to_string();
    if let Some((head, rest)) = message.split_once(": ")
        && !head.is_empty()
        && !head.contains(char::is_whitespace)
        && path.to_string().starts_with(head)
    {
        message = rest.to_string();
    }
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((name, _)) = rest.split_once('`')
            && field.segments().last() != Some(&PathSegment::Key(name.to_string()))
        {
            field = field.key(name);
        }
    }
    Bad {
        field,
        message,
        location,
    }
}

/// Removes the first ` at line L column C` (reported separately) from a YAML error message
/// and shifts any further line numbers by `line_offset` so they count in the file.
pub(super) fn clean_yaml_message(message: &str, line_offset: usize) -> String {
    const AT: &str = " at line ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    let mut first = true;
    while let Some(pos) = rest.find(AT) {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + AT.len()..];
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        let Ok(line) = after[..digits].parse::<usize>() else {
            out.push_str(AT);
            rest = after;
            continue;
        };
        let tail = &after[digits..];
        let (column, tail) = match tail.strip_prefix(" column ") {
            Some(t) => {
                let n = t.chars().take_while(char::is_ascii_digit).count();
                (Some(&t[..n]), &t[n..])
            }
            None => (None, tail),
        };
        if !first {
            out.push_str(AT);
            out.push_str(&(line + line_offset).to_string());
            if let Some(c) = column {
                out.push_str(" column ");
                out.push_str(c);
            }
        }
        first = false;
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Where the node at `path` starts in a YAML document, found by walking the document with
/// serde and failing on purpose at the node: the YAML deserializer stamps its position on
/// the error.
fn locate(text: &str, path: &FieldPath) -> Option<Location> {
    const SENTINEL: &str = "switchyard-locate-sentinel";

    struct Seek<'p>(&'p [PathSegment]);
    struct Walk<'p>(&'p PathSegment, &'p [PathSegment]);
    struct Found;

    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            match self.0.split_first() {
                None => d.deserialize_any(Found),
                Some((first, rest)) => d.deserialize_any(Walk(first, rest)),
            }
        }
    }

    impl<'de> Visitor<'de> for Found {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(SENTINEL)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                if matches!(self.0, PathSegment::Key(k) if *k == key) {
                    return map.next_value_seed(Seek(self.1));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            loop {
                if matches!(self.0, PathSegment::Index(n) if *n == i) {
                    return seq.next_element_seed(Seek(self.1)).map(|_| ());
                }
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                i += 1;
            }
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_none<E>(self) -> Result<(), E> {
            Ok(())
        }
    }

    let de = serde_yaml_ng::Deserializer::from_str(text);
    match Seek(path.segments()).deserialize(de) {
        Err(e) if e.to_string().contains(SENTINEL) => e.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        }),
        _ => None,
    }
}

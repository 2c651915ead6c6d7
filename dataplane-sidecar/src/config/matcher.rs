//! String and regex matchers shared by routes (paths, headers, query parameters) and TLS
//! (SAN matchers).

use std::fmt;

use switchyard_protos::envoy::envoy::r#type::matcher::v3 as pb;

use super::error::FieldError;

/// A compiled regular expression that must match the *whole* value, as Envoy's `safe_regex`
/// (RE2 syntax; the `regex` crate implements the same language without backreferences).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    anchored: regex::Regex,
}

impl Pattern {
    /// Compiles `source`.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let anchored = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Pattern {
            source: source.to_string(),
            anchored,
        })
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }

    /// The expression as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// How a string is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// The whole value matches.
    Regex(Pattern),
}

/// A string condition (Envoy `StringMatcher`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatcher {
    /// The comparison.
    pub pattern: StringMatch,
    /// ASCII case-insensitive (not applied to regexes, as in Envoy).
    pub ignore_case: bool,
}

impl StringMatcher {
    /// An exact, case-sensitive matcher.
    pub fn exact(value: impl Into<String>) -> Self {
        StringMatcher {
            pattern: StringMatch::Exact(value.into()),
            ignore_case: false,
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let fold = |s: &str| {
            if self.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        match &self.pattern {
            StringMatch::Exact(p) if self.ignore_case => value.eq_ignore_ascii_case(p),
            StringMatch::Exact(p) => value == p,
            StringMatch::Prefix(p) => fold(value).starts_with(&fold(p)),
            StringMatch::Suffix(p) => fold(value).ends_with(&fold(p)),
            StringMatch::Contains(p) => fold(value).contains(&fold(p)),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// Compiles a `RegexMatcher`; `engine_type` (only Google RE2 exists) is accepted.
pub(crate) fn regex(m: &pb::RegexMatcher) -> Result<Pattern, FieldError> {
    Pattern::new(&m.regex)
        .map_err(|e| FieldError::invalid("regex", format!("{:?} does not compile: {e}", m.regex)))
}

/// Converts a `StringMatcher`.
pub(crate) fn string_matcher(m: &pb::StringMatcher) -> Result<StringMatcher, FieldError> {
    use pb::string_matcher::MatchPattern;
    let pattern = match &m.match_pattern {
        None => return Err(FieldError::invalid("match_pattern", "missing")),
        Some(MatchPattern::Exact(v)) => StringMatch::Exact(v.clone()),
        Some(MatchPattern::Prefix(v)) => StringMatch::Prefix(v.clone()),
        Some(MatchPattern::Suffix(v)) => StringMatch::Suffix(v.clone()),
        Some(MatchPattern::Contains(v)) => StringMatch::Contains(v.clone()),
        Some(MatchPattern::SafeRegex(r)) => {
            StringMatch::Regex(regex(r).map_err(|e| e.at("safe_regex"))?)
        }
        Some(MatchPattern::Custom(_)) => {
            return Err(FieldError::unsupported(
                "custom",
                "custom string matcher extensions",
            ));
        }
    };
    Ok(StringMatcher {
        pattern,
        ignore_case: m.ignore_case,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn regexes_match_whole_values() {
        let p = Pattern::new("/[^/]+/Get").unwrap();
        assert!(p.is_match("/pkg.Svc/Get"));
        assert!(!p.is_match("/pkg.Svc/GetAll"));
        assert!(Pattern::new("(").is_err());
    }

    #[test]
    fn string_matchers_convert_and_match() {
        let m = string_matcher(&pb::StringMatcher {
            match_pattern: Some(pb::string_matcher::MatchPattern::Prefix("AB".into())),
            ignore_case: true,
        })
        .unwrap();
        assert!(m.matches("abc"));
        assert!(!m.matches("xab"));
        let bad = string_matcher(&pb::StringMatcher {
            match_pattern: Some(pb::string_matcher::MatchPattern::SafeRegex(
                pb::RegexMatcher {
                    regex: "a(".into(),
                    ..Default::default()
                },
            )),
            ignore_case: false,
        })
        .unwrap_err();
        assert!(format!("{bad:?}").contains("does not compile"));
    }
}

//! Glob patterns over stream-root-relative stream paths (PROTOCOL.md section 6.2).
//!
//! A pattern is `/`-separated like a path. A segment `*` matches exactly one path segment and
//! a segment `**` matches zero or more. Inside any other segment `*` matches any run of
//! characters within that segment (`user-*` matches `user-42`), never a `/`. Everything else
//! matches literally.

use std::fmt;

/// A parsed glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more segments.
    AnyDepth,
    /// A segment with `*` wildcards (`*` alone is one whole segment); literal pieces between them.
    Wild(Vec<String>),
    /// A literal segment.
    Literal(String),
}

/// Why a pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The pattern is empty.
    #[error("pattern is empty")]
    Empty,
    /// The pattern has an empty segment (`a//b`).
    #[error("pattern has an empty segment")]
    EmptySegment,
    /// `**` appears inside a segment instead of as a whole one.
    #[error("'**' must be a whole path segment")]
    PartialDoubleStar,
    /// The pattern contains a control character or a backslash.
    #[error("pattern contains a control character or a backslash")]
    BadCharacter,
}

impl Glob {
    /// Parses `pattern`. One leading and one trailing `/` are ignored.
    pub fn parse(pattern: &str) -> Result<Glob, GlobError> {
        let trimmed = pattern.strip_prefix('/').unwrap_or(pattern);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(GlobError::Empty);
        }
        if trimmed.chars().any(|c| c.is_control() || c == '\\') {
            return Err(GlobError::BadCharacter);
        }
        let mut segments = Vec::new();
        for seg in trimmed.split('/') {
            let parsed = match seg {
                "" => return Err(GlobError::EmptySegment),
                "**" => Segment::AnyDepth,
                s if s.contains("**") => return Err(GlobError::PartialDoubleStar),
                s if s.contains('*') => Segment::Wild(s.split('*').map(str::to_owned).collect()),
                s => Segment::Literal(s.to_owned()),
            };
            // Consecutive `**` segments mean the same as one.
            if parsed == Segment::AnyDepth && segments.last() == Some(&Segment::AnyDepth) {
                continue;
            }
            segments.push(parsed);
        }
        Ok(Glob {
            source: trimmed.to_owned(),
            segments,
        })
    }

    /// The normalised pattern text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path` (a stream-root-relative path such as `events/abc`) matches.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        match_from(&self.segments, &parts)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Matches pattern segments against path segments. Iterative over `**` positions with
/// backtracking to the last `**` only, so the cost is O(pattern × path).
fn match_from(pattern: &[Segment], path: &[&str]) -> bool {
    let (mut p, mut s) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while s < path.len() {
        match pattern.get(p) {
            Some(Segment::AnyDepth) => {
                star = Some((p, s));
                p += 1;
            }
            Some(seg) if segment_matches(seg, path[s]) => {
                p += 1;
                s += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    p = sp + 1;
                    s = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|seg| *seg == Segment::AnyDepth)
}

fn segment_matches(seg: &Segment, part: &str) -> bool {
    match seg {
        Segment::AnyDepth => true,
        Segment::Literal(lit) => lit == part,
        Segment::Wild(pieces) => wildcard_matches(pieces, part),
    }
}

/// `pieces` are the literal runs between `*`s: the first must be a prefix, the last a suffix,
/// and the ones between must appear in order.
fn wildcard_matches(pieces: &[String], part: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return true;
    };
    if pieces.len() == 1 {
        return first == part;
    }
    if part.len() < first.len() + last.len() || !part.starts_with(first.as_str()) {
        return false;
    }
    if !part.ends_with(last.as_str()) {
        return false;
    }
    let mut rest = &part[first.len()..part.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece.as_str()) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("events/*", "events/abc", true),
            ("events/*", "events", false),
            ("events/*", "events/a/b", false),
            ("events/*", "other/abc", false),
            ("events/**", "events", true),
            ("events/**", "events/a", true),
            ("events/**", "events/a/b/c", true),
            ("**", "a", true),
            ("**", "a/b/c", true),
            ("**/x", "x", true),
            ("**/x", "a/b/x", true),
            ("**/x", "a/b/y", false),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/**/b", "a/x/y/c", false),
            ("a/**/b/**/c", "a/1/b/2/3/c", true),
            ("a/**/**/b", "a/b", true),
            ("*/x", "a/x", true),
            ("*/x", "x", false),
            ("user-*", "user-42", true),
            ("user-*", "user-", true),
            ("user-*", "usr-42", false),
            ("*-log", "app-log", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("exact/path", "exact/path", true),
            ("exact/path", "exact/path2", false),
            ("/events/*/", "events/x", true),
        ];
        for &(pattern, path, want) in cases {
            let glob = Glob::parse(pattern).expect(pattern);
            assert_eq!(glob.matches(path), want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert_eq!(Glob::parse(""), Err(GlobError::Empty));
        assert_eq!(Glob::parse("/"), Err(GlobError::Empty));
        assert_eq!(Glob::parse("a//b"), Err(GlobError::EmptySegment));
        assert_eq!(Glob::parse("a/x**"), Err(GlobError::PartialDoubleStar));
        assert_eq!(Glob::parse("a\\b"), Err(GlobError::BadCharacter));
        assert_eq!(Glob::parse("a\nb"), Err(GlobError::BadCharacter));
    }

    #[test]
    fn normalised_text_drops_outer_slashes() {
        assert_eq!(
            Glob::parse("/events/*/").expect("valid").as_str(),
            "events/*"
        );
    }
}

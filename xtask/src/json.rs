//! A small JSON reader, enough to read vitest's JSON report without pulling
//! a serialization framework into the xtask.
//!
//! It accepts RFC 8259 JSON and builds a plain tree of [`Value`]s. Object
//! members keep their document order; lookups are linear, which is fine for
//! a report of a few hundred tests.

use anyhow::{Result, bail};

/// Deepest nesting accepted, so a hostile or broken file cannot overflow the
/// stack of the recursive parser.
const MAX_DEPTH: usize = 128;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// Any number, as a double.
    Number(f64),
    /// A string, with escapes resolved.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, members in document order.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The member `key` of an object; `None` for other values or a missing key.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text of a string value.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array value.
    pub(crate) fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Parses a complete JSON document; trailing non-whitespace is an error.
pub(crate) fn parse(text: &str) -> Result<Value> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        pos: 0,
    };
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos != parser.bytes.len() {
        bail!(
            "unexpected data after the JSON value at byte {}",
            parser.pos
        );
    }
    Ok(value)
}

/// Recursive-descent parser state: the input and the read position.
struct Parser<'a> {
    /// The whole document.
    bytes: &'a [u8],
    /// Index of the next unread byte.
    pos: usize,
}

impl Parser<'_> {
    /// Skips JSON whitespace.
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, without consuming it.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `expected` (after whitespace) or fails.
    fn expect(&mut self, expected: u8) -> Result<()> {
        match self.peek() {
            Some(b) if b == expected => {
                self.pos += 1;
                Ok(())
            }
            Some(b) => bail!(
                "expected '{}' at byte {}, found '{}'",
                char::from(expected),
                self.pos,
                char::from(b)
            ),
            None => bail!("expected '{}' at end of input", char::from(expected)),
        }
    }

    /// Parses any value at nesting depth `depth`.
    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("JSON nested deeper than {MAX_DEPTH} levels");
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b) => bail!("unexpected '{}' at byte {}", char::from(b), self.pos),
            None => bail!("unexpected end of input"),
        }
    }

    /// Consumes the keyword `word`, yielding `value`.
    fn literal(&mut self, word: &str, value: Value) -> Result<Value> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            bail!("invalid literal at byte {}", self.pos)
        }
    }

    /// Parses an object; the cursor is on `{`.
    fn object(&mut self, depth: usize) -> Result<Value> {
        self.expect(b'{')?;
        let mut members = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            if self.peek() != Some(b'"') {
                bail!("expected an object key at byte {}", self.pos);
            }
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            members.push((key, value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(members));
                }
                _ => bail!("expected ',' or '}}' at byte {}", self.pos),
            }
        }
    }

    /// Parses an array; the cursor is on `[`.
    fn array(&mut self, depth: usize) -> Result<Value> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => bail!("expected ',' or ']' at byte {}", self.pos),
            }
        }
    }

    /// Parses a number; the cursor is on its first character.
    fn number(&mut self) -> Result<Value> {
        let start = self.pos;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        // The slice holds ASCII only, so it is valid UTF-8.
        let text = std::str::from_utf8(&self.bytes[start..self.pos])?;
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Value::Number(n)),
            _ => bail!("invalid number {text:?} at byte {start}"),
        }
    }

    /// Parses a string; the cursor is on the opening quote.
    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run of plain characters up to the next quote or escape.
            let run_start = self.pos;
            while let Some(&b) = self.bytes.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(std::str::from_utf8(&self.bytes[run_start..self.pos])?);
            match self.bytes.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => bail!("control character in string at byte {}", self.pos),
                None => bail!("unterminated string"),
            }
        }
    }

    /// Resolves one escape sequence (after the backslash) into `out`.
    fn escape(&mut self, out: &mut String) -> Result<()> {
        let Some(&b) = self.bytes.get(self.pos) else {
            bail!("unterminated escape");
        };
        self.pos += 1;
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                if (0xD800..0xDC00).contains(&high) {
                    // A surrogate pair: the low half must follow as another \u escape.
                    if !self.bytes[self.pos..].starts_with(b"\\u") {
                        bail!("unpaired surrogate at byte {}", self.pos);
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        bail!("invalid low surrogate at byte {}", self.pos);
                    }
                    let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
                } else {
                    char::from_u32(high).unwrap_or(char::REPLACEMENT_CHARACTER)
                }
            }
            other => bail!(
                "invalid escape '\\{}' at byte {}",
                char::from(other),
                self.pos
            ),
        };
        out.push(c);
        Ok(())
    }

    /// Reads the four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Result<u32> {
        let Some(digits) = self.bytes.get(self.pos..self.pos + 4) else {
            bail!("truncated \\u escape");
        };
        let text = std::str::from_utf8(digits)?;
        let code = u32::from_str_radix(text, 16)
            .map_err(|_| anyhow::anyhow!("invalid \\u escape {text:?} at byte {}", self.pos))?;
        self.pos += 4;
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::{Value, parse};

    #[test]
    fn parses_nested_documents() {
        let doc = parse(r#" {"a": [1, -2.5e3, true, false, null], "b": {"c": "d"}, "e": []} "#)
            .expect("valid JSON");
        assert_eq!(
            doc.get("a").and_then(Value::as_array).map(<[Value]>::len),
            Some(5)
        );
        assert_eq!(
            doc.get("b")
                .and_then(|b| b.get("c"))
                .and_then(Value::as_str),
            Some("d")
        );
        assert_eq!(
            doc.get("a")
                .and_then(|a| a.as_array())
                .map(|a| a[1].clone()),
            Some(Value::Number(-2500.0))
        );
        assert!(doc.get("missing").is_none());
    }

    #[test]
    fn resolves_escapes() {
        let doc = parse(r#""a\"b\\c\/d\n\u00e9\ud83d\ude00 > x""#).expect("valid JSON");
        assert_eq!(doc.as_str(), Some("a\"b\\c/d\né😀 > x"));
    }

    #[test]
    fn keeps_non_ascii_text() {
        let doc = parse("\"héllo → wörld\"").expect("valid JSON");
        assert_eq!(doc.as_str(), Some("héllo → wörld"));
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "\"open",
            "tru",
            "1 2",
            "[\"\\x\"]",
            "{1: 2}",
            "\"\\ud800\"",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn limits_depth() {
        let deep = "[".repeat(1000) + &"]".repeat(1000);
        assert!(parse(&deep).is_err());
    }
}

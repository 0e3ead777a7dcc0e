//! JSON text read with its numbers kept exactly as written.
//!
//! serde_json (without `arbitrary_precision`, a feature that would change
//! number handling for every crate of the build) reads a number that is not
//! an i64 or u64 as an f64: `12345678901234567.89` becomes
//! `12345678901234568`. A `decimal(p,s)` column must receive the digits the
//! sink wrote, so staging re-encodes rows through this reader instead.
//!
//! The canonical form of a number (part of the output digest):
//! - an integer that fits an i64 or u64, and a number whose value is the
//!   shortest decimal of an f64 (`1.50`, `1e2`, `0.1`), is written as
//!   serde_json writes it (`1.5`, `100.0`, `0.1`), as before this reader
//!   existed, so digests of earlier batches stand for them;
//! - any other number (one an f64 would round) is written exactly: its
//!   significant digits, without leading or trailing zeros, in positional
//!   notation (`12345678901234567.89`), or as `D.DDDe±N` when that would
//!   take more than 40 digits.
//!
//! The reader accepts exactly what serde_json accepts (numbers are checked
//! by serde_json itself, strings unescaped by it); on anything else it
//! returns `None`, and the caller asks serde_json what is wrong, so sinks
//! see serde_json's messages.

use std::borrow::Cow;

/// A JSON value whose numbers are their text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node<'a> {
    Null,
    Bool(bool),
    /// The number as written.
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Members in the order written (duplicates included).
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The member `key` of an object (the last, as with serde_json).
    pub(crate) fn get(&self, key: &str) -> Option<&Node<'a>> {
        match self {
            Node::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Deeper text is refused (serde_json refuses past 128 too).
const MAX_DEPTH: usize = 128;

/// `text` as a [`Node`], or `None` if it is not one JSON value.
pub(crate) fn parse(text: &[u8]) -> Option<Node<'_>> {
    let text = std::str::from_utf8(text).ok()?;
    let mut r = Reader { text, pos: 0 };
    let node = r.value(0)?;
    r.space();
    (r.pos == text.len()).then_some(node)
}

struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.space();
        let ok = self.peek() == Some(b);
        self.pos += usize::from(ok);
        ok
    }

    fn literal(&mut self, word: &str, node: Node<'a>) -> Option<Node<'a>> {
        self.text[self.pos..].starts_with(word).then(|| {
            self.pos += word.len();
            node
        })
    }

    fn value(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.space();
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                let mut members = Vec::new();
                if self.eat(b'}') {
                    return Some(Node::Object(members));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    members.push((key, self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Some(Node::Object(members));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Node::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Node::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(Node::String),
            b't' => self.literal("true", Node::Bool(true)),
            b'f' => self.literal("false", Node::Bool(false)),
            b'n' => self.literal("null", Node::Null),
            _ => {
                let start = self.pos;
                while matches!(self.peek(), Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
                    self.pos += 1;
                }
                let token = &self.text[start..self.pos];
                // JSON's number grammar and serde_json's range (no `1e400`).
                serde_json::from_str::<serde_json::Number>(token).ok().map(|_| Node::Number(token))
            }
        }
    }

    /// A string token; escapes are decoded by serde_json, so they mean
    /// exactly what they mean to it.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let bytes = self.text.as_bytes();
        if self.peek() != Some(b'"') {
            return None;
        }
        let start = self.pos;
        let mut escaped = false;
        let mut i = start + 1;
        loop {
            match *bytes.get(i)? {
                b'"' => break,
                // Control characters must be escaped in JSON strings.
                0..0x20 => return None,
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                _ => i += 1,
            }
        }
        self.pos = i + 1;
        if escaped {
            serde_json::from_str::<String>(&self.text[start..=i]).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&self.text[start + 1..i]))
        }
    }
}

/// Canonical JSON of `node`: object keys sorted (the last of duplicate keys
/// kept), no whitespace, strings escaped as serde_json escapes them, numbers
/// as the module documents.
pub(crate) fn write_canonical(node: &Node<'_>, out: &mut Vec<u8>) {
    match node {
        Node::Null => out.extend_from_slice(b"null"),
        Node::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Node::Number(text) => write_number(text, out),
        Node::String(s) => serde_json::to_writer(&mut *out, s.as_ref()).expect("writing to a Vec"),
        Node::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Node::Object(members) => {
            // Stable: among equal keys the last written stays last.
            let mut sorted: Vec<(usize, &(Cow<'_, str>, Node<'_>))> = members.iter().enumerate().collect();
            sorted.sort_by(|a, b| a.1.0.cmp(&b.1.0).then(a.0.cmp(&b.0)));
            out.push(b'{');
            let mut first = true;
            for (i, (_, (key, value))) in sorted.iter().enumerate() {
                if sorted.get(i + 1).is_some_and(|next| next.1.0 == *key) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut *out, key.as_ref()).expect("writing to a Vec");
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
    }
}

/// The canonical text of the number `text` (valid JSON number syntax).
pub(crate) fn write_number(text: &str, out: &mut Vec<u8>) {
    if let Ok(n) = serde_json::from_str::<serde_json::Number>(text) {
        if n.is_i64() || n.is_u64() || f64_holds(text) {
            out.extend_from_slice(n.to_string().as_bytes());
            return;
        }
    }
    match Decimal::parse(text) {
        Some(d) => d.write(out),
        None => out.extend_from_slice(text.as_bytes()),
    }
}

/// Whether the nearest f64 to `text`'s value, written shortest, is that
/// value: a property of the value, not of its spelling (Rust's parser
/// rounds correctly; serde_json's does not always), so canonical text is a
/// fixed point.
fn f64_holds(text: &str) -> bool {
    text.parse::<f64>().is_ok_and(|f| f.is_finite() && Decimal::parse(&f.to_string()) == Decimal::parse(text))
}

/// A decimal number, exactly: `digits × 10^exponent`, `digits` without
/// leading or trailing zeros (empty for zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    pub(crate) negative: bool,
    pub(crate) digits: String,
    pub(crate) exponent: i64,
}

impl Decimal {
    /// A number in JSON syntax, or (for decimals staged as strings) with a
    /// leading `+` or without a digit before the point (`.5`, `-.5`).
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => {
                let e = &rest[i + 1..];
                let e = e.strip_prefix('+').unwrap_or(e);
                if e.is_empty() || !e.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) || e == "-" {
                    return None;
                }
                // Absurd exponents are refused rather than overflowing.
                (&rest[..i], e.parse::<i64>().ok().filter(|e| e.abs() < 1_000_000)?)
            }
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if (int.is_empty() && frac.is_empty())
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || (mantissa.contains('.') && frac.is_empty())
        {
            return None;
        }
        let all: String = format!("{int}{frac}");
        let trimmed = all.trim_start_matches('0');
        let kept = trimmed.trim_end_matches('0');
        let exponent = exp - frac.len() as i64 + (trimmed.len() - kept.len()) as i64;
        Some(Decimal { negative: negative && !kept.is_empty(), digits: kept.to_owned(), exponent: if kept.is_empty() { 0 } else { exponent } })
    }

    /// Digits before the point (0 for a number below one).
    pub(crate) fn integer_digits(&self) -> i64 {
        (self.digits.len() as i64 + self.exponent).max(0)
    }

    /// Digits after the point that are not trailing zeros.
    pub(crate) fn fraction_digits(&self) -> i64 {
        (-self.exponent).max(0)
    }

    fn write(&self, out: &mut Vec<u8>) {
        if self.negative {
            out.push(b'-');
        }
        let n = self.digits.len() as i64;
        if self.digits.is_empty() {
            out.push(b'0');
        } else if self.exponent >= 0 && n + self.exponent <= 40 {
            out.extend_from_slice(self.digits.as_bytes());
            out.extend(std::iter::repeat_n(b'0', self.exponent as usize));
        } else if self.exponent < 0 && -self.exponent <= 40 {
            let point = n + self.exponent;
            if point > 0 {
                out.extend_from_slice(&self.digits.as_bytes()[..point as usize]);
                out.push(b'.');
                out.extend_from_slice(&self.digits.as_bytes()[point as usize..]);
            } else {
                out.extend_from_slice(b"0.");
                out.extend(std::iter::repeat_n(b'0', (-point) as usize));
                out.extend_from_slice(self.digits.as_bytes());
            }
        } else {
            out.push(self.digits.as_bytes()[0]);
            if n > 1 {
                out.push(b'.');
                out.extend_from_slice(&self.digits.as_bytes()[1..]);
            }
            out.extend_from_slice(format!("e{}", self.exponent + n - 1).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        let mut out = Vec::new();
        write_canonical(&parse(text.as_bytes()).unwrap(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_an_f64_holds_keep_serde_json_spelling_others_keep_every_digit() {
        // As serde_json wrote them before: digests of earlier batches stand.
        assert_eq!(canonical(r#"{"a":1.50,"b":1e2,"c":-0.0,"d":18446744073709551615,"e":-9223372036854775808}"#),
            r#"{"a":1.5,"b":100.0,"c":-0.0,"d":18446744073709551615,"e":-9223372036854775808}"#);
        // An f64 would round these.
        assert_eq!(canonical(r#"[12345678901234567.89,99999999999999999999999999999999999999,-0.00000000000000000000000000000000000001]"#),
            "[12345678901234567.89,99999999999999999999999999999999999999,-1e-38]");
        assert_eq!(canonical("[123456789012345678901234567890123456789012345]"), "[1.23456789012345678901234567890123456789012345e44]");
        assert_eq!(canonical("[1.000000000000000000000000001e-60]"), "[1.000000000000000000000000001e-60]");
    }

    #[test]
    fn only_what_serde_json_accepts_is_read() {
        for bad in ["[1e400]", "[+1]", "[.5]", "[01]", "[1.]", "[1,]", "{\"a\":1,}", "\"a\u{1}b\"", "[\"\\x\"]", "{\"a\" 1}", "[1] x"] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn objects_sort_keys_and_keep_the_last_duplicate_strings_escape_as_serde_json() {
        assert_eq!(canonical(r#" { "b" : [ 1 , {"y":2,"x":3} ], "a":"\u0041\/\n", "b": null } "#), r#"{"a":"A/\n","b":null}"#);
    }

    #[test]
    fn decimals_are_exact() {
        let d = Decimal::parse("-0012.3400e1").unwrap();
        assert_eq!((d.negative, d.digits.as_str(), d.exponent), (true, "1234", -1));
        assert_eq!((d.integer_digits(), d.fraction_digits()), (3, 1));
        assert_eq!(Decimal::parse("0.000"), Decimal::parse("-0"));
        for bad in ["", "-", ".", "1.", "1e", "1e+", "e5", "1.2.3", "0x10", "1e9999999"] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }
}

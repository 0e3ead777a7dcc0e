//! Recognising rows that are already canonical JSON, so staging can copy
//! them as they are instead of parsing and re-encoding them.
//!
//! A row passes only if re-encoding it (`serde_json` parse, then
//! `json_text::write_canonical`) would give back exactly its bytes: one object, keys
//! strictly ascending and unescaped, no whitespace, integers that parse as
//! integers, strings escaped exactly as `serde_json` escapes them. Anything
//! else (floats, `\/`, `\u0041`, duplicate keys, deep nesting, …) is left to
//! the general path, which also produces the error for rows that are not
//! valid. So the staged bytes, and the output digest, are the same whichever
//! path a row takes; the fast path only saves work. Sinks that encode rows
//! with sorted keys (as `append-events` does) take it for every row.

/// Deeper rows take the general path (serde_json refuses past 128).
const MAX_DEPTH: usize = 64;

/// Whether `row` is a canonical JSON object in which every key column of
/// `keys` is present and not null.
pub(super) fn is_canonical_row(row: &[u8], keys: &[String]) -> bool {
    if std::str::from_utf8(row).is_err() {
        return false;
    }
    // Which key columns were seen, not null, at the top level: one flag per
    // key, so checking a row allocates nothing that grows with the row.
    let mut found = vec![false; keys.len()];
    let mut scan = Scan { bytes: row, pos: 0, depth: 0 };
    let want = if keys.is_empty() { None } else { Some((keys, found.as_mut_slice())) };
    if scan.peek() != Some(b'{') || !scan.object(want) || scan.pos != row.len() {
        return false;
    }
    found.iter().all(|&f| f)
}

/// A cursor over a row; every method returns `false` as soon as the bytes
/// stop being canonical.
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let ok = self.peek() == Some(b);
        self.pos += usize::from(ok);
        ok
    }

    fn value(&mut self) -> bool {
        match self.peek() {
            Some(b'{') => self.object(None),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().is_some(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.integer(),
            _ => false,
        }
    }

    /// `{"a":…,"b":…}` with keys strictly ascending. Marks, when asked,
    /// which of `keys` are members with a value other than null.
    fn object(&mut self, mut members: Option<(&[String], &mut [bool])>) -> bool {
        self.depth += 1;
        if self.depth > MAX_DEPTH || !self.eat(b'{') {
            return false;
        }
        let mut previous: Option<&[u8]> = None;
        if !self.eat(b'}') {
            loop {
                let Some(key) = self.string() else { return false };
                // Escaped keys compare by their decoded text: not worth it here.
                if key.contains(&b'\\') || previous.is_some_and(|p| p >= key) || !self.eat(b':') {
                    return false;
                }
                let is_null = self.bytes[self.pos..].starts_with(b"null");
                if !self.value() {
                    return false;
                }
                if let Some((keys, found)) = members.as_mut()
                    && !is_null
                    && let Some(i) = keys.iter().position(|k| k.as_bytes() == key)
                {
                    found[i] = true;
                }
                previous = Some(key);
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return false;
                }
            }
        }
        self.depth -= 1;
        true
    }

    fn array(&mut self) -> bool {
        self.depth += 1;
        if self.depth > MAX_DEPTH || !self.eat(b'[') {
            return false;
        }
        if !self.eat(b']') {
            loop {
                if !self.value() {
                    return false;
                }
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return false;
                }
            }
        }
        self.depth -= 1;
        true
    }

    /// A string escaped exactly as serde_json writes it; returns the bytes
    /// between the quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        loop {
            // Skip plain text in one go; stop at a quote, escape or control.
            let rest = &self.bytes[self.pos..];
            self.pos += rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    let escape = self.bytes.get(self.pos + 1..)?;
                    self.pos += match escape.first()? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if is_canonical_u_escape(escape) => 6,
                        _ => return None,
                    };
                }
                _ => return None, // a raw control character: not valid JSON
            }
        }
        let text = &self.bytes[start..self.pos];
        self.pos += 1;
        Some(text)
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let ok = self.bytes[self.pos..].starts_with(word);
        self.pos += if ok { word.len() } else { 0 };
        ok
    }

    /// An integer that serde_json reads as an integer and writes back the
    /// same: no leading zeros, not `-0`, within u64 (or, negative, within
    /// i64); larger ones, fractions and exponents are read as floats.
    fn integer(&mut self) -> bool {
        let negative = self.eat(b'-');
        let digits = &self.bytes[self.pos..];
        let digits = &digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()];
        self.pos += digits.len();
        if (digits.len() > 1 && digits[0] == b'0') || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return false;
        }
        let value = std::str::from_utf8(digits).ok().and_then(|d| d.parse::<u64>().ok());
        match value {
            None => false,
            Some(v) if negative => (1..=1u64 << 63).contains(&v),
            Some(_) => true,
        }
    }
}

/// `u00XX` (lowercase hex) for a control character that has no short
/// escape: the only `\u` form serde_json writes.
fn is_canonical_u_escape(escape: &[u8]) -> bool {
    let Some(&[b'u', b'0', b'0', hi, lo]) = escape.get(..5) else { return false };
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    match (hex(hi), hex(lo)) {
        (Some(hi), Some(lo)) => {
            let c = hi * 16 + lo;
            c < 0x20 && !matches!(c, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_canonical_row;
    use crate::output::json_text;

    /// What the general path stages for a row.
    fn slow(row: &str) -> Option<Vec<u8>> {
        let node = json_text::parse(row.as_bytes())?;
        matches!(node, json_text::Node::Object(_)).then(|| {
            let mut out = Vec::new();
            json_text::write_canonical(&node, &mut out);
            out
        })
    }

    /// The fast path accepts a row only if the general path would stage
    /// exactly the same bytes.
    fn check(row: &str) {
        if is_canonical_row(row.as_bytes(), &[]) {
            assert_eq!(slow(row).as_deref(), Some(row.as_bytes()), "accepted but not canonical: {row}");
        }
    }

    #[test]
    fn canonical_rows_are_recognised() {
        for row in [
            r#"{}"#,
            r#"{"a":1,"b":-2,"c":0,"d":[],"e":{},"f":[1,"x",null,true,false,{"g":{}}]}"#,
            r#"{"key":"k","offset":18446744073709551,"value":"say \"hi\"\\ \n\t\r\b\f \u0001 \u001f é ✓ 😀 /"}"#,
            "{\"del\":\"\u{7f}\"}",
            r#"{"A":1,"B":2,"a":3,"é":4}"#,
            r#"{"max":18446744073709551615,"min":-9223372036854775808}"#,
        ] {
            assert!(is_canonical_row(row.as_bytes(), &[]), "{row}");
            check(row);
        }
    }

    #[test]
    fn rows_re_encoding_would_change_take_the_general_path() {
        for row in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{ "a":1}"#,
            r#"{"a": 1}"#,
            r#"{"a":1} "#,
            r#"{"a":1.5}"#,
            r#"{"a":1e3}"#,
            r#"{"a":1.0}"#,
            r#"{"a":-0}"#,
            r#"{"a":01}"#,
            r#"{"a":18446744073709551616}"#,
            r#"{"a":-9223372036854775809}"#,
            r#"{"a":"\/"}"#,
            r#"{"a":"\u0041"}"#,
            r#"{"a":"\u001F"}"#,
            r#"{"a":"\u000a"}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"\u0061":1}"#,
            r#"{"a":tru}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1,}"#,
            r#"[1]"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":1}{"b":2}"#,
            r#""#,
        ] {
            assert!(!is_canonical_row(row.as_bytes(), &[]), "{row}");
        }
        let deep = format!("{}{}", r#"{"a":"#.repeat(70), "}".repeat(70)).replace(r#"{"a":}"#, "{}");
        assert!(!is_canonical_row(deep.as_bytes(), &[]));
        assert!(!is_canonical_row(b"{\"a\":\"\xff\"}", &[]), "invalid UTF-8");
    }

    #[test]
    fn key_columns_must_be_present_and_not_null() {
        let keys = ["id".to_owned()];
        assert!(is_canonical_row(br#"{"id":"o-1","x":null}"#, &keys));
        assert!(!is_canonical_row(br#"{"id":null}"#, &keys));
        assert!(!is_canonical_row(br#"{"x":{"id":1}}"#, &keys), "only top-level members count");
        assert!(!is_canonical_row(br#"{"idx":1}"#, &keys));
    }

    /// Generated rows, canonical and not: whatever the fast path accepts
    /// is exactly what the general path would stage, and the general path's
    /// output (floats aside) is always accepted.
    #[test]
    fn fast_and_general_paths_agree_on_generated_rows() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let atoms = [
            "0", "7", "-3", "42", "1.5", "-0", "1e2", "true", "false", "null", r#""""#, r#""a\"b""#, r#""\u0007""#,
            r#""\/""#, r#""\u00e9""#, r#""é""#, "18446744073709551615", "-9223372036854775808",
        ];
        let names = ["a", "b", "B", "id", "é", "a\\n"];
        fn value_text(next: &mut impl FnMut(u64) -> u64, depth: u32, atoms: &[&str], names: &[&str]) -> String {
            match if depth > 3 { 2 } else { next(4) } {
                0 => {
                    let n = next(4);
                    let members: Vec<String> = (0..n)
                        .map(|_| format!("\"{}\":{}", names[next(names.len() as u64) as usize], value_text(next, depth + 1, atoms, names)))
                        .collect();
                    format!("{{{}}}", members.join(if next(5) == 0 { ", " } else { "," }))
                }
                1 => {
                    let items: Vec<String> = (0..next(4)).map(|_| value_text(next, depth + 1, atoms, names)).collect();
                    format!("[{}]", items.join(","))
                }
                _ => atoms[next(atoms.len() as u64) as usize].to_owned(),
            }
        }
        let mut accepted = 0;
        for _ in 0..20_000 {
            let members: Vec<String> = (0..next(5))
                .map(|_| format!("\"{}\":{}", names[next(names.len() as u64) as usize], value_text(&mut next, 1, &atoms, &names)))
                .collect();
            let row = format!("{{{}}}", members.join(","));
            check(&row);
            accepted += usize::from(is_canonical_row(row.as_bytes(), &[]));
            if let Some(canonical) = slow(&row) {
                let text = String::from_utf8(canonical.clone()).unwrap();
                // Floats and escaped keys are left to the general path.
                if !text.contains('.') && !text.contains("\"a\\n\"") {
                    assert!(is_canonical_row(&canonical, &[]), "canonical output refused: {text} (from {row})");
                }
            }
        }
        assert!(accepted > 1_000, "the generator exercises the fast path ({accepted})");
    }
}

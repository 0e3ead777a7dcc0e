//! Writing JSON rows by hand, quickly.
//!
//! On the JSON staging path most of a simple sink's time goes into turning
//! record bytes into JSON strings: building a `serde_json::Value` per row
//! costs tens of thousands of Wasm instructions, and even a byte-at-a-time
//! escape loop dominates. These helpers look at eight bytes at a time and
//! copy runs that need no escaping in one go.

/// Appends `bytes` to `out` as a JSON string. Invalid UTF-8 is replaced by
/// U+FFFD, as [`String::from_utf8_lossy`] does.
pub fn push_string(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => push_str(out, text),
        Err(_) => push_str(out, &String::from_utf8_lossy(bytes)),
    }
}

/// Appends `text` to `out` as a JSON string: quotes, backslashes and
/// control characters escaped, everything else as is.
pub fn push_str(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push('"');
    // `copied`: bytes before it are in `out`. Escapes are ASCII, so the
    // positions of escaped bytes are char boundaries.
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(word) = bytes.get(i..i + 8) {
            match escape_mask(u64::from_le_bytes(word.try_into().expect("8 bytes"))) {
                0 => {
                    i += 8;
                    continue;
                }
                // Straight to the first byte that needs escaping.
                mask => i += (mask.trailing_zeros() / 8) as usize,
            }
        }
        let escape = match bytes[i] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 => "",
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&text[copied..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(bytes[i] >> 4)]));
            out.push(char::from(HEX[usize::from(bytes[i] & 0xf)]));
        } else {
            out.push_str(escape);
        }
        i += 1;
        copied = i;
    }
    out.push_str(&text[copied..]);
    out.push('"');
}

/// Appends `n` in decimal, without going through `core::fmt`.
pub fn push_int(out: &mut String, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

const HEX: &[u8; 16] = b"0123456789abcdef";

const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The high bit of each byte of `word` below `n` (n ≤ 128). The lowest set
/// bit is exact: the first such byte borrows from nothing below it, and a
/// byte ≥ n never has its high bit set in both the difference and the
/// complement. Bits above it may be spurious (a borrow), which only costs
/// a look at a byte that needs no escape.
fn bytes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(splat(n)) & !word & splat(0x80)
}

/// Marks the bytes of `word` that must be escaped (a control character, `"`
/// or `\`); zero if none.
fn escape_mask(word: u64) -> u64 {
    bytes_below(word, 0x20) | bytes_below(word ^ splat(b'"'), 1) | bytes_below(word ^ splat(b'\\'), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(bytes: &[u8]) -> String {
        let mut out = String::new();
        push_string(&mut out, bytes);
        out
    }

    #[test]
    fn strings_round_trip_through_a_json_parser_shape() {
        // Every escape at every position of an 8-byte word, and beyond.
        for special in ["\"", "\\", "\n", "\u{1}", "\u{1f}", "é"] {
            for at in 0..20 {
                let text = format!("{}{special}{}", "a".repeat(at), "b".repeat(19 - at));
                let mut expected = String::from("\"");
                for c in text.chars() {
                    match c {
                        '"' => expected.push_str("\\\""),
                        '\\' => expected.push_str("\\\\"),
                        '\n' => expected.push_str("\\n"),
                        c if (c as u32) < 0x20 => expected.push_str(&format!("\\u{:04x}", c as u32)),
                        c => expected.push(c),
                    }
                }
                expected.push('"');
                assert_eq!(quoted(text.as_bytes()), expected, "{text:?}");
            }
        }
        assert_eq!(quoted(b"ab\xffcd"), "\"ab\u{fffd}cd\"");
        assert_eq!(quoted(b""), "\"\"");
    }

    #[test]
    fn integers() {
        for n in [0, 7, -7, 10, 1_700_000_000_123, i64::MIN, i64::MAX] {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}

//! The canonical text of column values JSON has no type for, so sinks in
//! every language stage the same bytes for the same values (and so the same
//! output digest). The Python and JavaScript SDKs have the same functions,
//! giving the same text.
//!
//! | column type     | text                                          |
//! |-----------------|-----------------------------------------------|
//! | `timestamp`     | `1969-12-31T23:59:59.999999Z` (always 6 digits, `Z`) |
//! | `timestamp_ntz` | `1969-12-31T23:59:59.999999`                   |
//! | `date`          | `1969-12-31`                                    |
//! | `decimal(p,s)`  | `-0.05`: the unscaled digits with `s` after the point |
//! | `binary`        | lowercase hex                                   |
//!
//! Years before 1 or after 9999 have no such text; these functions then
//! give a year of more digits (or a sign), which the host refuses.

/// A `timestamp` value from microseconds since 1970-01-01T00:00:00Z.
pub fn timestamp_micros(micros: i64) -> String {
    format!("{}Z", timestamp_ntz_micros(micros))
}

/// A `timestamp_ntz` value from microseconds since 1970-01-01T00:00:00.
pub fn timestamp_ntz_micros(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let of_day = micros.rem_euclid(86_400_000_000);
    let (secs, frac) = (of_day / 1_000_000, of_day % 1_000_000);
    format!(
        "{}T{:02}:{:02}:{:02}.{frac:06}",
        date_days(days),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A `date` value from days since 1970-01-01.
pub fn date_days(days: i64) -> String {
    // The proleptic Gregorian calendar, from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A `decimal(p, scale)` value from its unscaled integer: `decimal(-5, 2)`
/// is `-0.05`.
pub fn decimal(unscaled: i128, scale: u8) -> String {
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    let scale = usize::from(scale);
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

/// A `binary` value: lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_exact_before_and_after_1970() {
        assert_eq!(timestamp_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp_micros(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(timestamp_micros(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(timestamp_ntz_micros(-2_208_988_800_000_001), "1899-12-31T23:59:59.999999");
        assert_eq!(date_days(-719_162), "0001-01-01");
        assert_eq!(date_days(2_932_896), "9999-12-31");
        assert_eq!(decimal(-5, 2), "-0.05");
        assert_eq!(decimal(123_456, 2), "1234.56");
        assert_eq!(decimal(7, 0), "7");
        assert_eq!(decimal(i128::MIN + 1, 10).len(), 41);
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}

//! Column types: how a table declares them, what they are in Delta and in
//! Arrow, and the checks of staged values that Arrow's readers leave out.
//!
//! A type is written the way Spark SQL and Delta write it: `string`, `long`,
//! `integer`, `short`, `byte`, `double`, `float`, `boolean`, `binary`,
//! `date`, `timestamp` (UTC, microseconds), `timestamp_ntz`,
//! `decimal(p,s)`, `array<T>`, `map<K,V>` and `struct<name:T, …>` (a
//! struct field may say `not null`). Array elements, map values and struct
//! fields may be null unless declared otherwise; map keys never are. The
//! five types of earlier configs keep their spelling, so their config digest
//! is unchanged.
//!
//! Guarantees: a value that does not fit its column fails the batch before
//! anything is committed, naming the table, the column, the row and the
//! value (see `commit::prepare`). A `decimal(p,s)` value, from a JSON
//! number or string, is taken digit by digit, never through a float: more
//! than `s` fractional digits or more than `p - s` integer digits is an
//! error, never a rounding (Arrow's JSON reader would drop the extra
//! digits). The Arrow path checks every decimal's precision the same way.

use crate::output::json_text::{Decimal, Node};
use arrow_array::{Array, ArrayRef, make_array};
use arrow_schema::DataType as ArrowType;
use deltalake::kernel::engine::arrow_conversion::{TryFromArrow, TryIntoArrow};
use deltalake::kernel::{ArrayType, DataType, DecimalType, MapType, PrimitiveType, StructField, StructType};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A column type a table can declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 64-bit integer.
    Long,
    /// 32-bit integer.
    Integer,
    /// 16-bit integer.
    Short,
    /// 8-bit integer.
    Byte,
    /// 64-bit float.
    Double,
    /// 32-bit float.
    Float,
    /// true/false.
    Boolean,
    /// Bytes (in JSON rows: a hex string).
    Binary,
    /// A calendar date.
    Date,
    /// An instant, microseconds since 1970-01-01 UTC.
    Timestamp,
    /// A wall-clock date and time without a time zone, microseconds.
    TimestampNtz,
    /// An exact decimal number.
    Decimal {
        /// Digits in all (1 to 38).
        precision: u8,
        /// Digits after the point (0 to `precision`).
        scale: u8,
    },
    /// A list of values of one type; elements may be null.
    Array(Box<ColumnType>),
    /// Key to value; keys are never null, values may be.
    Map(Box<ColumnType>, Box<ColumnType>),
    /// Named fields.
    Struct(Vec<NestedField>),
}

/// A field of a `struct` type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NestedField {
    /// Field name.
    pub name: String,
    /// Field type.
    pub data_type: ColumnType,
    /// Whether the field may be null.
    pub nullable: bool,
}

impl ColumnType {
    /// The Delta type.
    pub fn delta(&self) -> DataType {
        let p = |t: PrimitiveType| DataType::Primitive(t);
        match self {
            ColumnType::String => p(PrimitiveType::String),
            ColumnType::Long => p(PrimitiveType::Long),
            ColumnType::Integer => p(PrimitiveType::Integer),
            ColumnType::Short => p(PrimitiveType::Short),
            ColumnType::Byte => p(PrimitiveType::Byte),
            ColumnType::Double => p(PrimitiveType::Double),
            ColumnType::Float => p(PrimitiveType::Float),
            ColumnType::Boolean => p(PrimitiveType::Boolean),
            ColumnType::Binary => p(PrimitiveType::Binary),
            ColumnType::Date => p(PrimitiveType::Date),
            ColumnType::Timestamp => p(PrimitiveType::Timestamp),
            ColumnType::TimestampNtz => p(PrimitiveType::TimestampNtz),
            ColumnType::Decimal { precision, scale } => {
                DecimalType::try_new(*precision, *scale).expect("checked when parsed").into()
            }
            ColumnType::Array(element) => ArrayType::new(element.delta(), true).into(),
            ColumnType::Map(key, value) => MapType::new(key.delta(), value.delta(), true).into(),
            ColumnType::Struct(fields) => StructType::try_new(fields.iter().map(|f| StructField::new(f.name.clone(), f.data_type.delta(), f.nullable)))
                .expect("field names checked unique when parsed")
                .into(),
        }
    }

    /// The declarable type of a Delta type, if there is one.
    pub fn from_delta(t: &DataType) -> Option<ColumnType> {
        Some(match t {
            DataType::Primitive(p) => match p {
                PrimitiveType::String => ColumnType::String,
                PrimitiveType::Long => ColumnType::Long,
                PrimitiveType::Integer => ColumnType::Integer,
                PrimitiveType::Short => ColumnType::Short,
                PrimitiveType::Byte => ColumnType::Byte,
                PrimitiveType::Double => ColumnType::Double,
                PrimitiveType::Float => ColumnType::Float,
                PrimitiveType::Boolean => ColumnType::Boolean,
                PrimitiveType::Binary => ColumnType::Binary,
                PrimitiveType::Date => ColumnType::Date,
                PrimitiveType::Timestamp => ColumnType::Timestamp,
                PrimitiveType::TimestampNtz => ColumnType::TimestampNtz,
                PrimitiveType::Decimal(d) => ColumnType::Decimal { precision: d.precision(), scale: d.scale() },
                _ => return None,
            },
            DataType::Array(a) => ColumnType::Array(Box::new(Self::from_delta(a.element_type())?)),
            DataType::Map(m) => ColumnType::Map(Box::new(Self::from_delta(m.key_type())?), Box::new(Self::from_delta(m.value_type())?)),
            DataType::Struct(s) => ColumnType::Struct(
                s.fields()
                    .map(|f| Some(NestedField { name: f.name().clone(), data_type: Self::from_delta(f.data_type())?, nullable: f.is_nullable() }))
                    .collect::<Option<Vec<_>>>()?,
            ),
            _ => return None,
        })
    }

    /// The declarable type of an Arrow field of a table's schema.
    pub fn from_arrow_field(f: &arrow_schema::Field) -> Option<ColumnType> {
        Self::from_delta(&DataType::try_from_arrow(f.data_type()).ok()?)
    }

    /// Whether a table may be partitioned by a column of this type.
    pub fn partitionable(&self) -> bool {
        !matches!(self, ColumnType::Array(_) | ColumnType::Map(..) | ColumnType::Struct(_) | ColumnType::Binary | ColumnType::Float | ColumnType::Double)
    }

    /// The Arrow type Delta reads and writes for it.
    pub fn arrow(&self) -> ArrowType {
        (&self.delta()).try_into_arrow().expect("every declarable type has an Arrow type")
    }

    /// Whether the type holds decimals anywhere (they need the exact check).
    pub fn has_decimal(&self) -> bool {
        match self {
            ColumnType::Decimal { .. } => true,
            ColumnType::Array(e) => e.has_decimal(),
            ColumnType::Map(k, v) => k.has_decimal() || v.has_decimal(),
            ColumnType::Struct(fields) => fields.iter().any(|f| f.data_type.has_decimal()),
            _ => false,
        }
    }

    /// Check the decimals in a JSON value of this type exactly. Everything
    /// else is checked by Arrow's JSON reader; `Err` says what does not fit.
    pub(crate) fn check_decimals(&self, value: &Node<'_>) -> Result<(), String> {
        match (self, value) {
            (_, Node::Null) => Ok(()),
            (ColumnType::Decimal { precision, scale }, Node::Number(text)) => check_decimal(text, *precision, *scale),
            (ColumnType::Decimal { precision, scale }, Node::String(text)) => check_decimal(text, *precision, *scale),
            (ColumnType::Array(element), Node::Array(items)) => items.iter().try_for_each(|i| element.check_decimals(i)),
            (ColumnType::Map(_, v), Node::Object(members)) => members.iter().try_for_each(|(_, m)| v.check_decimals(m)),
            (ColumnType::Struct(fields), Node::Object(_)) => fields.iter().try_for_each(|f| match value.get(&f.name) {
                Some(v) => f.data_type.check_decimals(v).map_err(|e| format!("field `{}`: {e}", f.name)),
                None => Ok(()),
            }),
            // Arrow's reader names the wrong shape.
            _ => Ok(()),
        }
    }
}

fn check_decimal(text: &str, precision: u8, scale: u8) -> Result<(), String> {
    let kind = format!("decimal({precision},{scale})");
    let d = Decimal::parse(text.trim()).ok_or_else(|| format!("`{text}` is not a decimal number, as {kind} needs"))?;
    if d.fraction_digits() > i64::from(scale) {
        return Err(format!(
            "`{text}` has {} digits after the point; {kind} keeps {scale} (round it in the sink: sluice never rounds)",
            d.fraction_digits()
        ));
    }
    let room = i64::from(precision - scale);
    if d.integer_digits() > room {
        return Err(format!("`{text}` has {} digits before the point; {kind} holds at most {room}", d.integer_digits()));
    }
    Ok(())
}

/// `col` as a column of `expected`: the same type, up to the names Arrow
/// writers give list elements and map entries (`item` or `element`,
/// `entries` or `key_value`), which are relabelled. Struct fields must match
/// by name and order, and decimals must fit their precision.
pub(crate) fn fit_arrow(col: &ArrayRef, expected: &ArrowType) -> Result<ArrayRef, String> {
    if !same_shape(col.data_type(), expected) {
        return Err(format!("is {}, the table has {}", col.data_type(), expected));
    }
    let col = if col.data_type() == expected {
        col.clone()
    } else {
        make_array(relabel(col.to_data(), expected).map_err(|e| e.to_string())?)
    };
    check_precision(&col)?;
    Ok(col)
}

fn same_shape(actual: &ArrowType, expected: &ArrowType) -> bool {
    match (actual, expected) {
        // A column that cannot hold nulls fits one that may.
        (ArrowType::List(a), ArrowType::List(b)) => (!a.is_nullable() || b.is_nullable()) && same_shape(a.data_type(), b.data_type()),
        // Key and value fields are named by position, whatever their names.
        (ArrowType::Map(a, _), ArrowType::Map(b, _)) => match (a.data_type(), b.data_type()) {
            (ArrowType::Struct(a), ArrowType::Struct(b)) => {
                a.len() == 2 && b.len() == 2 && a.iter().zip(b.iter()).all(|(a, b)| same_shape(a.data_type(), b.data_type()))
            }
            _ => false,
        },
        (ArrowType::Struct(a), ArrowType::Struct(b)) => {
            a.len() == b.len()
                && a.iter().zip(b.iter()).all(|(a, b)| {
                    a.name() == b.name() && (!a.is_nullable() || b.is_nullable()) && same_shape(a.data_type(), b.data_type())
                })
        }
        // Zone names Arrow writers use for UTC are all UTC (Arrow's JSON
        // reader in a guest knows only offsets, `+00:00`).
        (ArrowType::Timestamp(a, Some(za)), ArrowType::Timestamp(b, Some(zb))) => a == b && is_utc(za) && is_utc(zb),
        _ => actual == expected,
    }
}

fn is_utc(zone: &str) -> bool {
    matches!(zone, "UTC" | "Z" | "+00:00" | "+0000" | "+00" | "Etc/UTC" | "utc")
}

/// The same buffers under `to`'s field names, all the way down.
fn relabel(data: arrow_data::ArrayData, to: &ArrowType) -> Result<arrow_data::ArrayData, arrow_schema::ArrowError> {
    let children: Vec<&ArrowType> = match to {
        ArrowType::List(f) | ArrowType::Map(f, _) => vec![f.data_type()],
        ArrowType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
        _ => vec![],
    };
    let child_data = if children.is_empty() {
        data.child_data().to_vec()
    } else {
        data.child_data().iter().zip(children).map(|(c, t)| relabel(c.clone(), t)).collect::<Result<Vec<_>, _>>()?
    };
    data.into_builder().data_type(to.clone()).child_data(child_data).build()
}

/// Every decimal of `col` (nested too) within its declared precision.
fn check_precision(col: &ArrayRef) -> Result<(), String> {
    use arrow_array::cast::AsArray;
    match col.data_type() {
        ArrowType::Decimal128(p, _) => col
            .as_primitive::<arrow_array::types::Decimal128Type>()
            .validate_decimal_precision(*p)
            .map_err(|e| format!("holds a value too large for its precision: {e}")),
        ArrowType::List(_) => check_precision(col.as_list::<i32>().values()),
        ArrowType::Map(_, _) => {
            let m = col.as_map();
            check_precision(m.keys())?;
            check_precision(m.values())
        }
        ArrowType::Struct(_) => col.as_struct().columns().iter().try_for_each(check_precision),
        _ => Ok(()),
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Long => f.write_str("long"),
            ColumnType::Integer => f.write_str("integer"),
            ColumnType::Short => f.write_str("short"),
            ColumnType::Byte => f.write_str("byte"),
            ColumnType::Double => f.write_str("double"),
            ColumnType::Float => f.write_str("float"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Binary => f.write_str("binary"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::TimestampNtz => f.write_str("timestamp_ntz"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Array(e) => write!(f, "array<{e}>"),
            ColumnType::Map(k, v) => write!(f, "map<{k},{v}>"),
            ColumnType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{}{}", field.name, field.data_type, if field.nullable { "" } else { " not null" })?;
                }
                f.write_str(">")
            }
        }
    }
}

impl std::str::FromStr for ColumnType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut p = TypeParser { text, pos: 0 };
        let t = p.column_type(0)?;
        p.space();
        if p.pos != text.len() {
            return Err(format!("unexpected `{}` after the type `{t}`", &text[p.pos..]));
        }
        Ok(t)
    }
}

impl Serialize for ColumnType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e: String| serde::de::Error::custom(format!("type `{text}`: {e}")))
    }
}

/// Nested deeper than this is refused (no real schema comes near).
const MAX_NESTING: usize = 32;

struct TypeParser<'a> {
    text: &'a str,
    pos: usize,
}

impl TypeParser<'_> {
    fn space(&mut self) {
        while self.text[self.pos..].starts_with(char::is_whitespace) {
            self.pos += self.text[self.pos..].chars().next().map_or(1, char::len_utf8);
        }
    }

    fn word(&mut self) -> String {
        self.space();
        let rest = &self.text[self.pos..];
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        self.pos += len;
        rest[..len].to_owned()
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.space();
        if self.text[self.pos..].starts_with(c) {
            self.pos += 1;
            Ok(())
        } else {
            let found = self.text[self.pos..].chars().next().map_or("the end".to_owned(), |c| format!("`{c}`"));
            Err(format!("expected `{c}` at character {}, found {found}", self.pos + 1))
        }
    }

    fn peek_is(&mut self, c: char) -> bool {
        self.space();
        self.text[self.pos..].starts_with(c)
    }

    fn number(&mut self) -> Result<u8, String> {
        let w = self.word();
        w.parse().map_err(|_| format!("expected a number, found `{w}`"))
    }

    fn column_type(&mut self, depth: usize) -> Result<ColumnType, String> {
        if depth > MAX_NESTING {
            return Err(format!("nested deeper than {MAX_NESTING} levels"));
        }
        let name = self.word().to_ascii_lowercase();
        Ok(match name.as_str() {
            "string" => ColumnType::String,
            "long" | "bigint" => ColumnType::Long,
            "integer" | "int" => ColumnType::Integer,
            "short" | "smallint" => ColumnType::Short,
            "byte" | "tinyint" => ColumnType::Byte,
            "double" => ColumnType::Double,
            "float" | "real" => ColumnType::Float,
            "boolean" => ColumnType::Boolean,
            "binary" => ColumnType::Binary,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            "timestamp_ntz" => ColumnType::TimestampNtz,
            "decimal" => {
                let (mut precision, mut scale) = (10, 0);
                if self.peek_is('(') {
                    self.expect('(')?;
                    precision = self.number()?;
                    if self.peek_is(',') {
                        self.expect(',')?;
                        scale = self.number()?;
                    }
                    self.expect(')')?;
                }
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(format!(
                        "decimal({precision},{scale}): the precision must be 1 to 38 and the scale 0 to the precision"
                    ));
                }
                ColumnType::Decimal { precision, scale }
            }
            "array" => {
                self.expect('<')?;
                let element = self.column_type(depth + 1)?;
                self.expect('>')?;
                ColumnType::Array(Box::new(element))
            }
            "map" => {
                self.expect('<')?;
                let key = self.column_type(depth + 1)?;
                self.expect(',')?;
                let value = self.column_type(depth + 1)?;
                self.expect('>')?;
                ColumnType::Map(Box::new(key), Box::new(value))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields: Vec<NestedField> = Vec::new();
                loop {
                    let name = self.word();
                    if name.is_empty() {
                        return Err(format!("expected a field name at character {}", self.pos + 1));
                    }
                    if fields.iter().any(|f| f.name == name) {
                        return Err(format!("struct field `{name}` is declared twice"));
                    }
                    self.expect(':')?;
                    let data_type = self.column_type(depth + 1)?;
                    let save = self.pos;
                    let nullable = match (self.word().to_ascii_lowercase().as_str(), self.word().to_ascii_lowercase().as_str()) {
                        ("not", "null") => false,
                        _ => {
                            self.pos = save;
                            true
                        }
                    };
                    fields.push(NestedField { name, data_type, nullable });
                    if self.peek_is('>') {
                        self.expect('>')?;
                        break;
                    }
                    self.expect(',')?;
                }
                ColumnType::Struct(fields)
            }
            "" => return Err("expected a type name".into()),
            other => {
                return Err(format!(
                    "unknown type `{other}` (types: string, long, integer, short, byte, double, float, boolean, binary, \
                     date, timestamp, timestamp_ntz, decimal(p,s), array<T>, map<K,V>, struct<name:T, …>)"
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::json_text;

    #[test]
    fn types_parse_in_spark_spelling_and_print_canonically() {
        for (text, shown) in [
            ("string", "string"),
            ("BIGINT", "long"),
            ("decimal(18, 2)", "decimal(18,2)"),
            ("decimal", "decimal(10,0)"),
            ("array< struct<sku: string not null, qty:int> >", "array<struct<sku:string not null,qty:integer>>"),
            ("map<string,array<timestamp>>", "map<string,array<timestamp>>"),
        ] {
            assert_eq!(text.parse::<ColumnType>().unwrap().to_string(), shown);
        }
        for (bad, says) in [
            ("decimal(39,2)", "precision must be 1 to 38"),
            ("decimal(5,6)", "precision must be 1 to 38"),
            ("varchar", "unknown type `varchar`"),
            ("array<int", "expected `>`"),
            ("struct<a:int,a:long>", "declared twice"),
            ("int int", "unexpected `int`"),
        ] {
            let e = bad.parse::<ColumnType>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let deep = format!("{}int{}", "array<".repeat(40), ">".repeat(40));
        assert!(deep.parse::<ColumnType>().unwrap_err().contains("nested deeper"));
    }

    #[test]
    fn arrow_types_are_delta_s() {
        use arrow_schema::TimeUnit;
        assert_eq!(ColumnType::Timestamp.arrow(), ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
        assert_eq!(ColumnType::TimestampNtz.arrow(), ArrowType::Timestamp(TimeUnit::Microsecond, None));
        assert_eq!("decimal(18,2)".parse::<ColumnType>().unwrap().arrow(), ArrowType::Decimal128(18, 2));
        assert_eq!(ColumnType::Date.arrow(), ArrowType::Date32);
    }

    #[test]
    fn decimals_are_checked_digit_by_digit_never_rounded() {
        let t: ColumnType = "struct<amount:decimal(18,2),parts:array<decimal(4,1)>>".parse().unwrap();
        let check = |row: &str| t.check_decimals(&json_text::parse(row.as_bytes()).unwrap());
        assert_eq!(check(r#"{"amount":9999999999999999.99,"parts":["-999.9",0.10,null]}"#), Ok(()));
        assert_eq!(check(r#"{"amount":"1.50"}"#), Ok(()));
        let e = check(r#"{"amount":0.125}"#).unwrap_err();
        assert!(e.contains("field `amount`") && e.contains("3 digits after the point") && e.contains("keeps 2"), "{e}");
        let e = check(r#"{"amount":12345678901234567.5}"#).unwrap_err();
        assert!(e.contains("1 digits after") || e.contains("17 digits before"), "{e}");
        let e = check(r#"{"amount":"12345678901234567"}"#).unwrap_err();
        assert!(e.contains("17 digits before the point") && e.contains("at most 16"), "{e}");
        let e = check(r#"{"parts":["1e5"]}"#).unwrap_err();
        assert!(e.contains("field `parts`") && e.contains("at most 3"), "{e}");
        let e = check(r#"{"amount":"12,5"}"#).unwrap_err();
        assert!(e.contains("not a decimal number"), "{e}");
    }
}

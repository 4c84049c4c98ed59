//! Python values as the harness reports them, and how a spec's expected
//! values (JSON) are compared with them.
//!
//! JSON's own types stand for themselves: `null`, booleans, strings,
//! arrays (a tuple result equals an array, since JSON cannot write tuples),
//! objects with string keys, and numbers, whose text is kept whole (serde_json's
//! `arbitrary_precision`): a number without a fraction or exponent is an int of
//! any size, compared digit for digit. Every other Python type is a one-key
//! object naming it, both in the harness's report and in expected values:
//!
//! | tag | Python | written as |
//! |---|---|---|
//! | `$float` | nan, inf, -inf | `"nan"`, `"inf"`, `"-inf"` |
//! | `$set` | set, frozenset | array of elements |
//! | `$dict` | dict with keys that are not strings, or start with `$` | array of `[key, value]` |
//! | `$bytes` | bytes, bytearray | hex digits |
//! | `$complex` | complex | `[real, imag]` |
//! | `$decimal` | `decimal.Decimal` | its text (`"1.10"`) |
//! | `$fraction` | `fractions.Fraction` | `"n/d"` |
//! | `$date`, `$datetime`, `$time` | `datetime` types | ISO text, compared as text |
//! | `$timedelta` | `datetime.timedelta` | `[days, seconds, microseconds]` |
//! | `$deque` | `collections.deque` | array |
//! | `$unrepresentable` | anything else (reports only) | a description; equal to nothing |
//!
//! Equality is Python's `==` with these choices: a float takes part in a
//! comparison as a float, to 1e-9 relative (so `3 == 3.0`, and a big int
//! compared with a float is rounded to the nearest float); ints, and
//! integral decimals and fractions, compare exactly with each other; nan
//! equals nan (otherwise no nan result could ever pass), never anything
//! else; booleans are not numbers (`True != 1`); set elements and dict
//! keys are matched exactly, as Python's hashing does, with integral
//! numbers of every type matching each other.

// Exact float comparisons are meant where they appear: Python's `==` is
// exact, and the tolerance is applied in one place, `floats_equal`.
#![allow(clippy::float_cmp)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::Value;

/// Python refuses to read or write ints of more decimal digits than this
/// (`sys.get_int_max_str_digits()`); so does Kiln.
pub const MAX_INT_DIGITS: usize = 4300;

/// Relative tolerance of a comparison a float takes part in.
const FLOAT_TOLERANCE: f64 = 1e-9;

/// An integer of any size: sign and decimal digits, no leading zeros, and
/// zero is never negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Int {
    negative: bool,
    digits: String,
}

impl Int {
    /// Parses `-?[0-9]+`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Int> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = digits.trim_start_matches('0');
        let digits = if digits.is_empty() { "0" } else { digits };
        Some(Int {
            negative: negative && digits != "0",
            digits: digits.to_owned(),
        })
    }

    fn is_zero(&self) -> bool {
        self.digits == "0"
    }

    fn is_one(&self) -> bool {
        !self.negative && self.digits == "1"
    }

    /// The nearest float; infinite beyond the float range.
    fn to_f64(&self) -> f64 {
        let magnitude: f64 = self.digits.parse().unwrap_or(f64::INFINITY);
        if self.negative { -magnitude } else { magnitude }
    }

    /// The exact value of an integral, finite float.
    fn from_integral_f64(value: f64) -> Option<Int> {
        (value.is_finite() && value.fract() == 0.0).then(|| {
            // Fixed-point formatting of a float is exact, not shortest.
            Int::parse(&format!("{value:.0}")).expect("a formatted integral float")
        })
    }

    fn as_u128(&self) -> Option<u128> {
        self.digits.parse().ok()
    }

    fn key(&self) -> String {
        format!("I{}{}", if self.negative { "-" } else { "" }, self.digits)
    }
}

impl std::fmt::Display for Int {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        f.write_str(&self.digits)
    }
}

/// A `decimal.Decimal`: its text as written, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Decimal {
    text: String,
    value: DecimalValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DecimalValue {
    NaN,
    Infinite {
        negative: bool,
    },
    /// `digits × 10^exponent`, digits without leading or trailing zeros
    /// (zero is `"0"` with exponent 0).
    Finite {
        negative: bool,
        digits: String,
        exponent: i64,
    },
}

impl Decimal {
    /// Parses Python's decimal syntax (`-1.50`, `1E+3`, `NaN`, `-Infinity`).
    fn parse(text: &str) -> Option<Decimal> {
        let trimmed = text.trim();
        let (negative, body) = match trimmed.as_bytes().first() {
            Some(b'-') => (true, &trimmed[1..]),
            Some(b'+') => (false, &trimmed[1..]),
            _ => (false, trimmed),
        };
        let lower = body.to_ascii_lowercase();
        let value = if matches!(lower.as_str(), "nan" | "snan") {
            DecimalValue::NaN
        } else if matches!(lower.as_str(), "inf" | "infinity") {
            DecimalValue::Infinite { negative }
        } else {
            let (mantissa, exponent) = match lower.split_once('e') {
                Some((m, e)) => (m, e.parse::<i64>().ok().filter(|e| e.abs() <= 1_000_000_000)?),
                None => (lower.as_str(), 0),
            };
            let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
            if whole.is_empty() && fraction.is_empty()
                || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let all = format!("{whole}{fraction}");
            let mut exponent = exponent - fraction.len() as i64;
            let all = all.trim_start_matches('0');
            let trimmed = all.trim_end_matches('0');
            exponent += (all.len() - trimmed.len()) as i64;
            if trimmed.is_empty() {
                DecimalValue::Finite {
                    negative: false,
                    digits: "0".into(),
                    exponent: 0,
                }
            } else {
                DecimalValue::Finite {
                    negative,
                    digits: trimmed.to_owned(),
                    exponent,
                }
            }
        };
        Some(Decimal {
            text: text.to_owned(),
            value,
        })
    }

    /// The value as an int, when it is integral and not absurdly large.
    fn as_int(&self) -> Option<Int> {
        match &self.value {
            DecimalValue::Finite {
                negative,
                digits,
                exponent,
            } if *exponent >= 0 && digits.len() as i64 + exponent <= MAX_INT_DIGITS as i64 => Int::parse(&format!(
                "{}{digits}{}",
                if *negative { "-" } else { "" },
                "0".repeat(*exponent as usize)
            )),
            _ => None,
        }
    }

    fn to_f64(&self) -> f64 {
        match &self.value {
            DecimalValue::NaN => f64::NAN,
            DecimalValue::Infinite { negative: true } => f64::NEG_INFINITY,
            DecimalValue::Infinite { negative: false } => f64::INFINITY,
            DecimalValue::Finite {
                negative,
                digits,
                exponent,
            } => format!("{}{digits}e{exponent}", if *negative { "-" } else { "" })
                .parse()
                .unwrap_or(f64::NAN),
        }
    }
}

/// A value as Python has it, decoded from JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    Int(Int),
    Float(f64),
    Str(String),
    /// A list or a tuple.
    List(Vec<Py>),
    Deque(Vec<Py>),
    /// Elements unique by [`Py::key`].
    Set(Vec<Py>),
    /// Keys unique by [`Py::key`], the last one written winning, as in a
    /// Python dict display.
    Dict(Vec<(Py, Py)>),
    Bytes(Vec<u8>),
    Complex(f64, f64),
    Decimal(Decimal),
    /// In lowest terms with a positive denominator when both fit in 128
    /// bits (Python's own fractions always are).
    Fraction(Int, Int),
    Date(String),
    DateTime(String),
    Time(String),
    /// Microseconds.
    Timedelta(i128),
    /// What the harness could not report; equal to nothing.
    Unrepresentable(String),
}

/// Which side a JSON value comes from: a spec's expected value may not
/// claim to be unrepresentable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Expected,
    Result,
}

/// Why a JSON value is not a value: the path inside it (`""` for the value
/// itself, else like `.$set[2]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub path: String,
    pub message: String,
}

impl DecodeError {
    fn new(message: impl Into<String>) -> DecodeError {
        DecodeError {
            path: String::new(),
            message: message.into(),
        }
    }

    fn within(mut self, prefix: &str) -> DecodeError {
        self.path = format!("{prefix}{}", self.path);
        self
    }
}

const TAGS: &str =
    "$float, $set, $dict, $bytes, $complex, $decimal, $fraction, $date, $datetime, $time, $timedelta, $deque";

impl Py {
    /// Decodes a JSON value (module docs).
    pub fn from_json(value: &Value, side: Side) -> Result<Py, DecodeError> {
        Ok(match value {
            Value::Null => Py::None,
            Value::Bool(b) => Py::Bool(*b),
            Value::String(s) => Py::Str(s.clone()),
            Value::Number(n) => number(&n.to_string())?,
            Value::Array(items) => Py::List(elements(items, side)?),
            Value::Object(map) => match map.iter().next() {
                Some((tag, inner)) if map.len() == 1 && tag.starts_with('$') => {
                    tagged(tag, inner, side).map_err(|e| e.within(&format!(".{tag}")))?
                }
                _ => {
                    let mut entries = Vec::with_capacity(map.len());
                    for (k, v) in map {
                        let v = Py::from_json(v, side).map_err(|e| e.within(&format!(".{k}")))?;
                        entries.push((Py::Str(k.clone()), v));
                    }
                    Py::Dict(entries)
                }
            },
        })
    }

    /// Python's `==` between an expected value and a result, with the
    /// choices of the module docs.
    pub fn equals(&self, other: &Py) -> bool {
        use Py::{Bool, Bytes, Date, DateTime, Deque, Dict, List, None, Set, Str, Time, Timedelta, Unrepresentable};
        match (self, other) {
            (Unrepresentable(_), _) | (_, Unrepresentable(_)) => false,
            (None, None) => true,
            (Bool(a), Bool(b)) => a == b,
            (Str(a), Str(b)) | (Date(a), Date(b)) | (DateTime(a), DateTime(b)) | (Time(a), Time(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Timedelta(a), Timedelta(b)) => a == b,
            (List(a), List(b)) | (Deque(a), Deque(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.equals(y))
            }
            (Set(a), Set(b)) => a.len() == b.len() && same_keys(a, b),
            (Dict(a), Dict(b)) => a.len() == b.len() && same_entries(a, b),
            _ => match (self.number(), other.number()) {
                (Some(a), Some(b)) => numbers_equal(&a, &b),
                _ => false,
            },
        }
    }

    /// The value as Python would print it (for messages).
    pub fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    /// The name of the value's Python type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Py::None => "NoneType",
            Py::Bool(_) => "bool",
            Py::Int(_) => "int",
            Py::Float(_) => "float",
            Py::Str(_) => "str",
            Py::List(_) => "list",
            Py::Deque(_) => "deque",
            Py::Set(_) => "set",
            Py::Dict(_) => "dict",
            Py::Bytes(_) => "bytes",
            Py::Complex(..) => "complex",
            Py::Decimal(_) => "Decimal",
            Py::Fraction(..) => "Fraction",
            Py::Date(_) => "date",
            Py::DateTime(_) => "datetime",
            Py::Time(_) => "time",
            Py::Timedelta(_) => "timedelta",
            Py::Unrepresentable(_) => "unrepresentable",
        }
    }

    fn number(&self) -> Option<Number<'_>> {
        Some(match self {
            Py::Int(i) => Number::Int(i.clone()),
            Py::Float(f) => Number::Float(*f),
            Py::Complex(re, im) => Number::Complex(*re, *im),
            Py::Decimal(d) => match d.as_int() {
                Some(i) => Number::Int(i),
                None => Number::Decimal(d),
            },
            Py::Fraction(n, d) if d.is_one() => Number::Int(n.clone()),
            Py::Fraction(n, d) => Number::Fraction(n, d),
            _ => return None,
        })
    }

    /// A text equal for two values exactly when Python's set and dict
    /// lookups find one as the other; `None` for an unhashable value.
    fn key(&self) -> Option<String> {
        Some(match self {
            Py::None => "N".into(),
            Py::Bool(b) => (if *b { "T" } else { "F" }).to_owned(),
            Py::Str(s) => format!("S{}", Value::String(s.clone())),
            Py::Bytes(b) => format!("B{}", hex::encode(b)),
            Py::List(items) => {
                let keys = items.iter().map(Py::key).collect::<Option<Vec<_>>>()?;
                format!("L[{}]", keys.join(","))
            }
            Py::Set(items) => {
                let mut keys = items.iter().map(Py::key).collect::<Option<Vec<_>>>()?;
                keys.sort();
                format!("Z{{{}}}", keys.join(","))
            }
            Py::Date(s) => format!("d{s}"),
            Py::DateTime(s) => format!("D{s}"),
            Py::Time(s) => format!("t{s}"),
            Py::Timedelta(us) => format!("U{us}"),
            Py::Dict(_) | Py::Deque(_) | Py::Unrepresentable(_) => return None,
            Py::Int(_) | Py::Float(_) | Py::Complex(..) | Py::Decimal(_) | Py::Fraction(..) => match self.number()? {
                Number::Int(i) => i.key(),
                Number::Float(f) => float_key(f),
                Number::Complex(re, 0.0) => float_key(re),
                Number::Complex(re, im) => format!("C{re:e},{im:e}"),
                Number::Decimal(d) => match &d.value {
                    DecimalValue::NaN => "Fnan".into(),
                    DecimalValue::Infinite { negative } => {
                        float_key(if *negative { f64::NEG_INFINITY } else { f64::INFINITY })
                    }
                    DecimalValue::Finite {
                        negative,
                        digits,
                        exponent,
                    } => format!("M{}{digits}e{exponent}", if *negative { "-" } else { "" }),
                },
                Number::Fraction(n, d) => format!("Q{n}/{d}"),
            },
        })
    }

    fn write_repr(&self, out: &mut String) {
        if out.len() > 400 {
            return;
        }
        let list = |out: &mut String, items: &[Py]| {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                item.write_repr(out);
            }
        };
        match self {
            Py::None => out.push_str("None"),
            Py::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
            Py::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Py::Float(f) => out.push_str(&float_repr(*f)),
            Py::Str(s) => {
                let _ = write!(out, "{s:?}");
            }
            Py::List(items) => {
                out.push('[');
                list(out, items);
                out.push(']');
            }
            Py::Deque(items) => {
                out.push_str("deque([");
                list(out, items);
                out.push_str("])");
            }
            Py::Set(items) if items.is_empty() => out.push_str("set()"),
            Py::Set(items) => {
                out.push('{');
                list(out, items);
                out.push('}');
            }
            Py::Dict(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
            Py::Bytes(bytes) => {
                out.push_str("b'");
                for &b in bytes {
                    match b {
                        b'\\' => out.push_str("\\\\"),
                        b'\'' => out.push_str("\\'"),
                        b'\n' => out.push_str("\\n"),
                        b'\t' => out.push_str("\\t"),
                        b'\r' => out.push_str("\\r"),
                        0x20..=0x7e => out.push(b as char),
                        _ => {
                            let _ = write!(out, "\\x{b:02x}");
                        }
                    }
                }
                out.push('\'');
            }
            Py::Complex(re, im) => {
                let _ = write!(out, "complex({}, {})", float_repr(*re), float_repr(*im));
            }
            Py::Decimal(d) => {
                let _ = write!(out, "Decimal({:?})", d.text);
            }
            Py::Fraction(n, d) => {
                let _ = write!(out, "Fraction({n}, {d})");
            }
            Py::Date(s) => {
                let _ = write!(out, "date.fromisoformat({s:?})");
            }
            Py::DateTime(s) => {
                let _ = write!(out, "datetime.fromisoformat({s:?})");
            }
            Py::Time(s) => {
                let _ = write!(out, "time.fromisoformat({s:?})");
            }
            Py::Timedelta(us) => {
                let _ = write!(out, "timedelta(microseconds={us})");
            }
            Py::Unrepresentable(what) => {
                let _ = write!(out, "<unrepresentable: {what}>");
            }
        }
    }
}

/// A number, for comparisons across numeric types.
enum Number<'a> {
    Int(Int),
    Float(f64),
    Complex(f64, f64),
    /// Not integral.
    Decimal(&'a Decimal),
    /// Not integral.
    Fraction(&'a Int, &'a Int),
}

impl Number<'_> {
    /// The nearest float.
    fn to_f64(&self) -> f64 {
        match self {
            Number::Int(i) => i.to_f64(),
            Number::Float(f) | Number::Complex(f, _) => *f,
            Number::Decimal(d) => d.to_f64(),
            Number::Fraction(n, d) => n.to_f64() / d.to_f64(),
        }
    }
}

fn numbers_equal(a: &Number<'_>, b: &Number<'_>) -> bool {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x == y,
        (Number::Complex(re1, im1), Number::Complex(re2, im2)) => floats_equal(*re1, *re2) && floats_equal(*im1, *im2),
        (Number::Complex(re, im), other) | (other, Number::Complex(re, im)) => {
            *im == 0.0 && numbers_equal(&Number::Float(*re), other)
        }
        // Exact types that are not integral never equal an int.
        (Number::Int(_), Number::Decimal(_) | Number::Fraction(..))
        | (Number::Decimal(_) | Number::Fraction(..), Number::Int(_)) => false,
        // NaN equals NaN here too.
        (Number::Decimal(x), Number::Decimal(y)) => x.value == y.value,
        (Number::Fraction(n1, d1), Number::Fraction(n2, d2)) => n1 == n2 && d1 == d2,
        // A float takes part: compared as floats. An int beyond the float
        // range equals no float (Python compares them exactly).
        (Number::Int(int), Number::Float(float)) | (Number::Float(float), Number::Int(int)) => {
            let rounded = int.to_f64();
            rounded.is_finite() && floats_equal(rounded, *float)
        }
        _ => floats_equal(a.to_f64(), b.to_f64()),
    }
}

/// Equal to [`FLOAT_TOLERANCE`] relative; nan equals nan.
fn floats_equal(x: f64, y: f64) -> bool {
    if x.is_nan() || y.is_nan() {
        return x.is_nan() && y.is_nan();
    }
    x == y || (x.is_finite() && y.is_finite() && (x - y).abs() <= FLOAT_TOLERANCE * x.abs().max(y.abs()))
}

fn float_key(f: f64) -> String {
    if f.is_nan() {
        return "Fnan".into();
    }
    match Int::from_integral_f64(f) {
        Some(i) => i.key(),
        None => format!("F{f:e}"),
    }
}

/// Python's repr of a float.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        (if f > 0.0 { "inf" } else { "-inf" }).to_owned()
    } else {
        format!("{f:?}")
    }
}

fn same_keys(a: &[Py], b: &[Py]) -> bool {
    let keys = |items: &[Py]| {
        let mut keys = items.iter().map(Py::key).collect::<Option<Vec<_>>>()?;
        keys.sort();
        Some(keys)
    };
    matches!((keys(a), keys(b)), (Some(x), Some(y)) if x == y)
}

fn same_entries(expected: &[(Py, Py)], actual: &[(Py, Py)]) -> bool {
    let mut by_key = HashMap::with_capacity(actual.len());
    for (k, v) in actual {
        let Some(key) = k.key() else { return false };
        by_key.insert(key, v);
    }
    expected
        .iter()
        .all(|(k, v)| k.key().and_then(|key| by_key.get(&key)).is_some_and(|w| v.equals(w)))
}

/// A JSON number: an int when written without fraction or exponent, as
/// Python's `json` reads it.
fn number(text: &str) -> Result<Py, DecodeError> {
    if let Some(int) = Int::parse(text) {
        if int.digits.len() > MAX_INT_DIGITS {
            return Err(DecodeError::new(format!(
                "an integer of {} digits; Python reads at most {MAX_INT_DIGITS}",
                int.digits.len()
            )));
        }
        return Ok(Py::Int(int));
    }
    text.parse::<f64>()
        .map(Py::Float)
        .map_err(|_| DecodeError::new(format!("{text} is not a number")))
}

fn elements(items: &[Value], side: Side) -> Result<Vec<Py>, DecodeError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| Py::from_json(v, side).map_err(|e| e.within(&format!("[{i}]"))))
        .collect()
}

fn tagged(tag: &str, inner: &Value, side: Side) -> Result<Py, DecodeError> {
    let text = || {
        inner
            .as_str()
            .ok_or_else(|| DecodeError::new(format!("{tag} takes a string")))
    };
    let array = || {
        inner
            .as_array()
            .ok_or_else(|| DecodeError::new(format!("{tag} takes an array")))
    };
    Ok(match tag {
        "$float" => match text()? {
            "nan" => Py::Float(f64::NAN),
            "inf" => Py::Float(f64::INFINITY),
            "-inf" => Py::Float(f64::NEG_INFINITY),
            other => {
                return Err(DecodeError::new(format!(
                    "{other:?} is not \"nan\", \"inf\" or \"-inf\" (write finite floats as numbers)"
                )));
            }
        },
        "$set" => set(array()?, side)?,
        "$deque" => Py::Deque(elements(array()?, side)?),
        "$dict" => dict(array()?, side)?,
        "$bytes" => Py::Bytes(hex::decode(text()?).map_err(|e| DecodeError::new(format!("not hex digits: {e}")))?),
        "$complex" => complex(array()?, side)?,
        "$decimal" => {
            let t = text()?;
            Py::Decimal(Decimal::parse(t).ok_or_else(|| DecodeError::new(format!("{t:?} is not a decimal")))?)
        }
        "$fraction" => fraction(text()?)?,
        "$date" => Py::Date(text()?.to_owned()),
        "$datetime" => Py::DateTime(text()?.to_owned()),
        "$time" => Py::Time(text()?.to_owned()),
        "$timedelta" => {
            let parts: Vec<i128> = array()?
                .iter()
                .map(|v| v.as_i64().map(i128::from))
                .collect::<Option<_>>()
                .filter(|p: &Vec<i128>| p.len() == 3)
                .ok_or_else(|| DecodeError::new("$timedelta takes [days, seconds, microseconds] integers"))?;
            Py::Timedelta((parts[0] * 86_400 + parts[1]) * 1_000_000 + parts[2])
        }
        "$unrepresentable" if side == Side::Result => Py::Unrepresentable(inner.as_str().unwrap_or("?").to_owned()),
        "$unrepresentable" => return Err(DecodeError::new("an expected value cannot be unrepresentable")),
        other => {
            return Err(DecodeError::new(format!(
                "unknown tag {other:?}: a one-key object whose key starts with `$` is one of {TAGS}; \
                 write a dict with such a key as {{\"$dict\": [[key, value]]}}"
            )));
        }
    })
}

/// A `$set`'s elements, each once: as Python hashes them, so unhashable
/// elements are refused.
fn set(items: &[Value], side: Side) -> Result<Py, DecodeError> {
    let items = elements(items, side)?;
    let mut seen = HashSet::new();
    let mut unique = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let key = item.key().ok_or_else(|| {
            DecodeError::new(format!("a {} cannot be in a set", item.type_name())).within(&format!("[{i}]"))
        })?;
        if seen.insert(key) {
            unique.push(item);
        }
    }
    Ok(Py::Set(unique))
}

/// A `$dict`'s `[key, value]` entries in order; a key written again keeps
/// its first place and takes the last value, as a Python dict literal does.
fn dict(pairs: &[Value], side: Side) -> Result<Py, DecodeError> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut entries: Vec<(Py, Py)> = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let at = format!("[{i}]");
        let [k, v] = pair.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err(DecodeError::new("each entry is a [key, value] array").within(&at));
        };
        let k = Py::from_json(k, side).map_err(|e| e.within(&format!("{at}[0]")))?;
        let v = Py::from_json(v, side).map_err(|e| e.within(&format!("{at}[1]")))?;
        let key = k
            .key()
            .ok_or_else(|| DecodeError::new(format!("a {} cannot be a dict key", k.type_name())).within(&at))?;
        if let Some(&j) = index.get(&key) {
            entries[j].1 = v;
        } else {
            index.insert(key, entries.len());
            entries.push((k, v));
        }
    }
    Ok(Py::Dict(entries))
}

/// A `$complex`'s `[real, imag]`, each an int or a float.
fn complex(parts: &[Value], side: Side) -> Result<Py, DecodeError> {
    let [re, im] = parts else {
        return Err(DecodeError::new("$complex takes [real, imag]"));
    };
    let part = |v: &Value, at: &str| match Py::from_json(v, side).map_err(|e| e.within(at))? {
        Py::Int(i) => Ok(i.to_f64()),
        Py::Float(f) => Ok(f),
        other => Err(DecodeError::new(format!("a {} is not a float", other.type_name())).within(at)),
    };
    Ok(Py::Complex(part(re, "[0]")?, part(im, "[1]")?))
}

/// A `$fraction`'s `"n/d"` (or `"n"`), in lowest terms.
fn fraction(t: &str) -> Result<Py, DecodeError> {
    let bad = || DecodeError::new(format!("{t:?} is not a fraction \"n/d\""));
    let (n, d) = t.split_once('/').unwrap_or((t, "1"));
    let (n, d) = (
        Int::parse(n.trim()).ok_or_else(bad)?,
        Int::parse(d.trim()).ok_or_else(bad)?,
    );
    if d.is_zero() {
        return Err(DecodeError::new("the denominator is zero"));
    }
    let (n, d) = lowest_terms(n, d);
    Ok(Py::Fraction(n, d))
}

/// `n/d` with a positive denominator, reduced when both fit in 128 bits
/// (beyond that, as written: Python's own fractions are always reduced).
fn lowest_terms(mut n: Int, mut d: Int) -> (Int, Int) {
    if d.negative {
        d.negative = false;
        n.negative = !n.negative && !n.is_zero();
    }
    if let (Some(a), Some(b)) = (n.as_u128(), d.as_u128()) {
        let gcd = gcd(a, b).max(1);
        let sign = if n.negative { "-" } else { "" };
        return (
            Int::parse(&format!("{sign}{}", a / gcd)).expect("digits"),
            Int::parse(&(b / gcd).to_string()).expect("digits"),
        );
    }
    (n, d)
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(text: &str) -> Py {
        Py::from_json(&serde_json::from_str(text).unwrap(), Side::Result).unwrap()
    }

    fn eq(expected: &str, actual: &str) -> bool {
        py(expected).equals(&py(actual))
    }

    #[test]
    fn integers_of_any_size_compare_exactly() {
        let f25 = "15511210043330985984000000";
        assert!(eq(f25, f25));
        assert!(!eq(f25, "15511210044318640305000000"), "25! + 987654321 is not 25!");
        assert!(!eq("9223372036854775808", "9223372036854775809"));
        assert!(!eq("9223372036854775807", "9223372036854775808"));
        assert!(!eq("18446744073709551616", "18446744073709551617"));
        assert!(!eq("18446744073709551615", "18446744073709551616"));
        assert!(!eq("-9223372036854775809", "-9223372036854775808"));
        assert!(eq("-0", "0"));
        let huge = format!("1{}", "0".repeat(4000));
        assert!(eq(&huge, &huge));
        assert!(!eq(&huge, &format!("{huge}1")));
    }

    #[test]
    fn a_float_takes_part_as_a_float() {
        assert!(eq("3", "3.0"));
        assert!(eq("[1, [2, 3]]", "[1.0, [2, 3]]"));
        assert!(eq("0.30000000000000004", "0.3"));
        assert!(eq("1e30", "1000000000000000000000000000000"));
        assert!(!eq("2.5", "2.5000001"));
        assert!(!eq(&format!("1{}", "0".repeat(400)), r#"{"$float": "inf"}"#));
        assert!(eq(r#"{"$float": "-inf"}"#, "-1e400"));
    }

    #[test]
    fn booleans_are_not_numbers_and_order_matters_in_lists() {
        assert!(!eq("1", "true"));
        assert!(!eq("0", "false"));
        assert!(!eq("[1, 2]", "[2, 1]"));
        assert!(!eq(r#"{"a": 1}"#, r#"{"a": 1, "b": 2}"#));
        assert!(eq(r#"{"a": 1, "b": 2}"#, r#"{"b": 2.0, "a": 1}"#));
    }

    #[test]
    fn nan_equals_only_nan() {
        assert!(eq(r#"{"$float": "nan"}"#, r#"{"$float": "nan"}"#));
        assert!(!eq(r#"{"$float": "nan"}"#, r#""nan""#));
        assert!(!eq(r#""nan""#, r#"{"$float": "nan"}"#));
        assert!(!eq(r#"{"$float": "nan"}"#, "0"));
        assert!(!eq(r#"{"$float": "inf"}"#, r#""inf""#));
    }

    #[test]
    fn every_tagged_type_equals_only_its_own_kind() {
        assert!(eq(r#"{"$bytes": "616263"}"#, r#"{"$bytes": "616263"}"#));
        assert!(!eq(r#"{"$bytes": "616263"}"#, r#""abc""#));
        assert!(!eq(r#""abc""#, r#"{"$bytes": "616263"}"#));
        assert!(eq(r#"{"$set": [1, 2, 3]}"#, r#"{"$set": [3, 2, 1.0]}"#));
        assert!(!eq(r#"{"$set": [1, 2, 3]}"#, "[1, 2, 3]"));
        assert!(!eq("[1, 2, 3]", r#"{"$set": [1, 2, 3]}"#));
        assert!(!eq(r#"{"$set": [1, 2]}"#, r#"{"$set": [1, 2, 3]}"#));
        assert!(!eq(r#"{"$set": [1]}"#, r#"{"$set": [true]}"#));
        assert!(eq(r#"{"$set": [[1, 2]]}"#, r#"{"$set": [[1, 2]]}"#));
        assert!(eq(r#"{"$dict": [[1, "a"]]}"#, r#"{"$dict": [[1.0, "a"]]}"#));
        assert!(!eq(r#"{"$dict": [[1, "a"]]}"#, r#"{"1": "a"}"#));
        assert!(!eq(r#"{"1": "a"}"#, r#"{"$dict": [[1, "a"]]}"#));
        assert!(eq(r#"{"$dict": [["$set", [1]]]}"#, r#"{"$dict": [["$set", [1]]]}"#));
        assert!(eq(r#"{"$x": 1, "y": 2}"#, r#"{"$dict": [["$x", 1], ["y", 2]]}"#));
        assert!(eq(r#"{"$complex": [1, 2]}"#, r#"{"$complex": [1.0, 2.0]}"#));
        assert!(!eq(r#"{"$complex": [1, 2]}"#, "[1, 2]"));
        assert!(eq("1", r#"{"$complex": [1.0, 0.0]}"#));
        assert!(eq(r#"{"$decimal": "1.10"}"#, r#"{"$decimal": "1.1"}"#));
        assert!(eq(r#"{"$decimal": "1E+2"}"#, "100"));
        assert!(!eq(r#"{"$decimal": "1.1"}"#, r#""1.1""#));
        assert!(eq(r#"{"$fraction": "2/6"}"#, r#"{"$fraction": "1/3"}"#));
        assert!(!eq(r#"{"$fraction": "1/3"}"#, "0.3"));
        assert!(eq(r#"{"$fraction": "3/1"}"#, "3"));
        assert!(eq(r#"{"$date": "2024-02-29"}"#, r#"{"$date": "2024-02-29"}"#));
        assert!(!eq(r#"{"$date": "2024-02-29"}"#, r#""2024-02-29""#));
        assert!(!eq(r#"{"$date": "2024-02-29"}"#, r#"{"$datetime": "2024-02-29"}"#));
        assert!(eq(
            r#"{"$timedelta": [0, 90, 0]}"#,
            r#"{"$timedelta": [0, 89, 1000000]}"#
        ));
        assert!(!eq(r#"{"$timedelta": [0, 90, 0]}"#, "90"));
        assert!(!eq(r#"{"$deque": [1]}"#, "[1]"));
        assert!(!eq("null", r#""None""#));
    }

    #[test]
    fn an_unrepresentable_result_equals_nothing() {
        let odd = r#"{"$unrepresentable": "Widget <Widget>"}"#;
        assert!(!eq(odd, odd));
        let err = Py::from_json(&serde_json::from_str(odd).unwrap(), Side::Expected).unwrap_err();
        assert_eq!(err.path, ".$unrepresentable");
    }

    #[test]
    fn malformed_tags_are_refused_with_their_path() {
        let bad = |text: &str| Py::from_json(&serde_json::from_str(text).unwrap(), Side::Expected).unwrap_err();
        assert_eq!(bad(r#"[1, {"$sets": [1]}]"#).path, "[1].$sets");
        assert_eq!(bad(r#"{"a": {"$float": "1.5"}}"#).path, ".a.$float");
        assert_eq!(bad(r#"{"$set": [1, {"x": 1}]}"#).path, ".$set[1]");
        assert_eq!(bad(r#"{"$dict": [[1]]}"#).path, ".$dict[0]");
        assert_eq!(bad(r#"{"$bytes": "zz"}"#).path, ".$bytes");
        assert_eq!(bad(r#"{"$fraction": "1/0"}"#).path, ".$fraction");
        assert!(bad(&format!("1{}", "0".repeat(4300))).message.contains("4300"));
    }

    #[test]
    fn values_print_as_python_prints_them() {
        assert_eq!(
            py(r#"[{"$set": [1]}, {"$float": "nan"}, {"$bytes": "00ff61"}, "s", null, true, 2.5]"#).repr(),
            r#"[{1}, nan, b'\x00\xffa', "s", None, True, 2.5]"#
        );
        assert_eq!(py(r#"{"$dict": [[1, "a"]]}"#).repr(), r#"{1: "a"}"#);
    }
}

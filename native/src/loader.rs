//! NDJSON lines of agent snapshots parsed, checked and written as BSON in one pass.
//!
//! Each line is read by a JSON parser of its own that knows the snapshot contract (a tree
//! of tables with each field's limits, and the identifier rule, that Python builds from
//! `schema.TABLES`, `schema.LIMITS` and `schema.ID_PATTERN`'s parts, see `Table::from_spec`
//! and `LineEncoder::new`; no limit is written here): while it
//! reads a line it checks every field against its kind and writes the document the
//! per-record path (`validate_snapshot`, then `bson.encode`) would store for it, byte for
//! byte: `_id` first, the payload's keys in the payload's order, doubles for metrics,
//! int32 for counts, null optional fields left out, a UTC date for the timestamp.
//!
//! It vouches only for what it can be sure of, like the Arrow batch path before it: a
//! line with anything else (a field outside the contract, a repeated key, a null where a
//! value is required, a value out of range, an odd date form, an escape it does not
//! decode, JSON that is not strict) is simply not vouched for, and Python sends it
//! through the per-record path, which accepts or rejects it with its own reason. So the
//! contract's rules and their wording stay in `schema.py`; this only recognises their
//! plain cases.

use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

const DOUBLE: u8 = 0x01;
const STRING: u8 = 0x02;
const DOCUMENT: u8 = 0x03;
const ARRAY: u8 = 0x04;
const OBJECT_ID: u8 = 0x07;
const DATE: u8 = 0x09;
const INT32: u8 = 0x10;

/// Not vouched for: the line goes to the per-record path, which gives the verdict.
struct Unsure;

type Sure<T> = Result<T, Unsure>;

/// The numbers a field takes, as `schema.LIMITS` gives them: from `minimum` to `maximum`,
/// both included; `whole`: whole numbers, stored as integers.
#[derive(Clone, Copy)]
struct Limits {
    minimum: f64,
    maximum: f64,
    whole: bool,
}

impl Limits {
    /// Whether a finite number passes (infinite ones never reach here). A whole number is
    /// vouched for only in BSON int32's range, which is how Python's encoder stores it;
    /// larger ones are stored as int64: rare, left to the per-record path.
    fn accepts(self, x: f64) -> bool {
        x >= self.minimum
            && x <= self.maximum
            && (!self.whole || (x.fract() == 0.0 && (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&x)))
    }
}

struct Field {
    name: Vec<u8>,
    limits: Limits,
    array: bool, // an array of numbers within `limits`
    required: bool,
}

struct Child {
    key: Vec<u8>,
    repeated: bool,
    required: bool,
    table: Table,
}

/// One object of the contract: its fields and child tables (performanceData has only
/// children). `name`: the key of its non-empty string name, in a named table; `bound`:
/// (part, whole), two fields of which the part may not exceed the whole, in a bounded one.
struct Table {
    fields: Vec<Field>,
    name: Option<Vec<u8>>,
    bound: Option<(Vec<u8>, Vec<u8>)>,
    children: Vec<Child>,
}

type FieldSpec = (String, bool, bool, (f64, f64, bool));
type TableSpec<'py> =
    (Vec<FieldSpec>, Option<String>, Option<(String, String)>, Vec<(String, bool, bool, Bound<'py, PyAny>)>);

impl Table {
    /// `spec`: (fields: [(name, array, required, (minimum, maximum, whole))], name's key
    /// or None, (part, whole) or None, children: [(key, repeated, required, spec)]).
    fn from_spec(spec: &Bound<PyAny>) -> PyResult<Table> {
        let (fields, name, bound, children): TableSpec = spec.extract()?;
        let fields = fields
            .into_iter()
            .map(|(name, array, required, (minimum, maximum, whole))| {
                if minimum.is_nan() || maximum.is_nan() {
                    return Err(PyValueError::new_err(format!("{name}: limits must be numbers")));
                }
                Ok(Field { name: name.into_bytes(), limits: Limits { minimum, maximum, whole }, array, required })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let children = children
            .into_iter()
            .map(|(key, repeated, required, sub)| {
                Ok(Child { key: key.into_bytes(), repeated, required, table: Table::from_spec(&sub)? })
            })
            .collect::<PyResult<Vec<_>>>()?;
        if fields.len() + children.len() + 1 > 64 {
            return Err(PyValueError::new_err("a table of more than 63 fields"));
        }
        Ok(Table {
            fields,
            name: name.map(String::into_bytes),
            bound: bound.map(|(part, whole)| (part.into_bytes(), whole.into_bytes())),
            children,
        })
    }
}

/// A JSON number as orjson reads it: an integer literal stays an integer.
#[derive(Clone, Copy)]
enum Number {
    Int(i128), // i64 or u64 range
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            // Through a 64-bit integer: one instruction, where i128 takes a library call.
            Number::Int(v) => i64::try_from(v).map_or(v as u64 as f64, |v| v as f64),
            Number::Float(v) => v,
        }
    }
}

/// Where a string read lies: in the line (no escapes), or decoded in `Reader::text`.
#[derive(Clone, Copy)]
enum Text {
    Raw(usize, usize),
    Decoded,
}

/// A strict JSON reader over one line.
struct Reader<'a> {
    s: &'a [u8],
    i: usize,
    text: Vec<u8>, // the last string read that had escapes, decoded
}

impl<'a> Reader<'a> {
    fn skip_space(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.i += 1;
        }
    }

    /// The next non-space byte, not consumed.
    fn peek(&mut self) -> Sure<u8> {
        self.skip_space();
        self.s.get(self.i).copied().ok_or(Unsure)
    }

    fn eat(&mut self, byte: u8) -> Sure<()> {
        if self.peek()? != byte {
            return Err(Unsure);
        }
        self.i += 1;
        Ok(())
    }

    /// `null` (consumed) or not (nothing consumed).
    fn null(&mut self) -> Sure<bool> {
        if self.peek()? == b'n' {
            if self.s[self.i..].starts_with(b"null") {
                self.i += 4;
                return Ok(true);
            }
            return Err(Unsure);
        }
        Ok(false)
    }

    /// A string, valid UTF-8 without NUL characters: where it lies in the line, or, when
    /// it has escapes, decoded into `self.text` (see `Reader::get`).
    fn string(&mut self) -> Sure<Text> {
        self.eat(b'"')?;
        let begin = self.i;
        let mut decoded = false;
        loop {
            let start = self.i;
            while let Some(&c) = self.s.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            if decoded {
                self.text.extend_from_slice(&self.s[start..self.i]);
            }
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    if !decoded {
                        decoded = true;
                        self.text.clear();
                        self.text.extend_from_slice(&self.s[begin..self.i]);
                    }
                    self.escape()?;
                }
                _ => return Err(Unsure),
            }
        }
        let text = if decoded { Text::Decoded } else { Text::Raw(begin, self.i - 1) };
        let bytes = self.get(text);
        if (decoded && bytes.contains(&0)) || (!bytes.is_ascii() && std::str::from_utf8(bytes).is_err()) {
            return Err(Unsure);
        }
        Ok(text)
    }

    /// The bytes of a string read by `string`.
    fn get(&self, text: Text) -> &[u8] {
        match text {
            Text::Raw(a, b) => &self.s[a..b],
            Text::Decoded => &self.text,
        }
    }

    fn escape(&mut self) -> Sure<()> {
        let c = *self.s.get(self.i + 1).ok_or(Unsure)?;
        self.i += 2;
        let simple = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = self.hex4()?;
                if (0xD800..0xDC00).contains(&code) {
                    // A high surrogate must be followed by its low one.
                    if self.s.get(self.i) != Some(&b'\\') || self.s.get(self.i + 1) != Some(&b'u') {
                        return Err(Unsure);
                    }
                    self.i += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(Unsure);
                    }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                } else if (0xDC00..0xE000).contains(&code) {
                    return Err(Unsure);
                }
                let ch = char::from_u32(code).ok_or(Unsure)?;
                let mut buf = [0u8; 4];
                self.text.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ => return Err(Unsure),
        };
        self.text.push(simple);
        Ok(())
    }

    fn hex4(&mut self) -> Sure<u32> {
        let digits = self.s.get(self.i..self.i + 4).ok_or(Unsure)?;
        let mut code = 0u32;
        for &d in digits {
            code = code * 16 + char::from(d).to_digit(16).ok_or(Unsure)?;
        }
        self.i += 4;
        Ok(code)
    }

    /// A number in strict JSON grammar. Integers beyond 64 bits (orjson reads them as
    /// doubles) and infinities are not vouched for. The digits are gathered as they are
    /// checked, so a plain literal is read in one pass (see `exact_double`).
    fn number(&mut self) -> Sure<Number> {
        self.skip_space();
        let start = self.i;
        let s = self.s;
        let mut i = self.i;
        let negative = s.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let digits = i;
        let mut mantissa: u64 = 0;
        let mut significant = 0u32; // digits from the first non-zero one
        let mut exponent: i64 = 0;
        while let Some(&c) = s.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            significant += u32::from(mantissa != 0 || c != b'0');
            if significant <= 19 {
                mantissa = mantissa * 10 + u64::from(c - b'0');
            } else {
                exponent += 1; // a digit left out of the mantissa (such literals take the full parser)
            }
            i += 1;
        }
        if i == digits || (s[digits] == b'0' && i - digits > 1) {
            return Err(Unsure);
        }
        let mut integer = true;
        if s.get(i) == Some(&b'.') {
            integer = false;
            i += 1;
            let frac = i;
            while let Some(&c) = s.get(i) {
                if !c.is_ascii_digit() {
                    break;
                }
                significant += u32::from(mantissa != 0 || c != b'0');
                if significant <= 19 {
                    mantissa = mantissa * 10 + u64::from(c - b'0');
                    exponent -= 1;
                }
                i += 1;
            }
            if i == frac {
                return Err(Unsure);
            }
        }
        if matches!(s.get(i), Some(b'e' | b'E')) {
            integer = false;
            i += 1;
            let sign = match s.get(i) {
                Some(b'-') => {
                    i += 1;
                    -1
                }
                Some(b'+') => {
                    i += 1;
                    1
                }
                _ => 1,
            };
            let exp = i;
            let mut value: i64 = 0;
            while let Some(&c) = s.get(i) {
                if !c.is_ascii_digit() {
                    break;
                }
                value = (value * 10 + i64::from(c - b'0')).min(1 << 20);
                i += 1;
            }
            if i == exp {
                return Err(Unsure);
            }
            exponent += sign * value;
        }
        self.i = i;
        if integer {
            if significant <= 19 {
                let value = i128::from(mantissa);
                return if !negative {
                    Ok(Number::Int(value))
                } else if value <= 1 << 63 {
                    Ok(Number::Int(-value))
                } else {
                    Err(Unsure)
                };
            }
            return integer_value(&s[digits..i], negative).map(Number::Int).ok_or(Unsure);
        }
        let value = match exact_double(mantissa, significant, exponent) {
            Some(v) => {
                if negative {
                    -v
                } else {
                    v
                }
            }
            None => std::str::from_utf8(&s[start..i]).ok().and_then(|t| t.parse::<f64>().ok()).ok_or(Unsure)?,
        };
        if !value.is_finite() {
            return Err(Unsure);
        }
        Ok(Number::Float(value))
    }
}

/// An integer literal's value (digits only, sign apart) if it fits i64, or u64 when
/// positive, as orjson reads them; None beyond (orjson makes a double of it).
fn integer_value(digits: &[u8], negative: bool) -> Option<i128> {
    if digits.len() > 20 {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let value = i128::from(value);
    if negative {
        (value <= 1 << 63).then_some(-value)
    } else {
        Some(value)
    }
}

const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// `mantissa` x 10^`exponent` when the mantissa has at most 15 significant digits
/// (below 2^53) and the power of ten is within 22: both are exact doubles, so one IEEE
/// multiply or divide gives the correctly rounded value (Clinger's fast path), as a full
/// parser would. None otherwise, for the full parser.
fn exact_double(mantissa: u64, significant: u32, exponent: i64) -> Option<f64> {
    if significant > 15 || exponent.abs() > 22 {
        return None;
    }
    let m = mantissa as f64; // exact: below 10^15
    let power = POWERS_OF_TEN[exponent.unsigned_abs() as usize];
    Some(if exponent >= 0 { m * power } else { m / power })
}

/// BSON being written: documents open as a length placeholder, patched when closed.
struct Out {
    buf: Vec<u8>,
}

impl Out {
    fn element(&mut self, type_code: u8, key: &[u8]) {
        self.buf.push(type_code);
        self.buf.extend_from_slice(key);
        self.buf.push(0);
    }

    fn index_key(&mut self, type_code: u8, index: usize) {
        self.buf.push(type_code);
        let mut digits = itoa_buf(index);
        self.buf.append(&mut digits);
        self.buf.push(0);
    }

    fn open(&mut self) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        at
    }

    fn close(&mut self, at: usize) {
        self.buf.push(0);
        let length = (self.buf.len() - at) as i32;
        self.buf[at..at + 4].copy_from_slice(&length.to_le_bytes());
    }

    fn string(&mut self, text: &[u8]) {
        self.buf.extend_from_slice(&((text.len() + 1) as i32).to_le_bytes());
        self.buf.extend_from_slice(text);
        self.buf.push(0);
    }
}

fn itoa_buf(mut n: usize) -> Vec<u8> {
    let mut digits = Vec::with_capacity(4);
    loop {
        digits.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    digits
}

/// A number field's value, checked, written as the per-record path stores it.
fn write_number(r: &mut Reader, out: &mut Out, key: &[u8], limits: Limits) -> Sure<f64> {
    let number = r.number()?;
    let x = number.as_f64();
    if !x.is_finite() || !limits.accepts(x) {
        return Err(Unsure);
    }
    if limits.whole {
        out.element(INT32, key);
        out.buf.extend_from_slice(&(x as i32).to_le_bytes());
    } else {
        out.element(DOUBLE, key);
        out.buf.extend_from_slice(&x.to_le_bytes());
    }
    Ok(x)
}

fn write_number_array(r: &mut Reader, out: &mut Out, key: &[u8], limits: Limits) -> Sure<()> {
    out.element(ARRAY, key);
    let at = out.open();
    array_items(r, |r, index| {
        let x = r.number()?.as_f64();
        if !limits.accepts(x) {
            return Err(Unsure);
        }
        if limits.whole {
            out.index_key(INT32, index);
            out.buf.extend_from_slice(&(x as i32).to_le_bytes());
        } else {
            out.index_key(DOUBLE, index);
            out.buf.extend_from_slice(&x.to_le_bytes());
        }
        Ok(())
    })?;
    out.close(at);
    Ok(())
}

/// Calls `each` for every item of an array (the reader then at the item) with its index,
/// in order: the one loop over the items of number arrays and of arrays of tables.
fn array_items<'a>(r: &mut Reader<'a>, mut each: impl FnMut(&mut Reader<'a>, usize) -> Sure<()>) -> Sure<()> {
    r.eat(b'[')?;
    if r.peek()? == b']' {
        r.i += 1;
        return Ok(());
    }
    let mut index = 0usize;
    loop {
        each(r, index)?;
        index += 1;
        match r.peek()? {
            b',' => r.i += 1,
            b']' => {
                r.i += 1;
                return Ok(());
            }
            _ => return Err(Unsure),
        }
    }
}

/// Calls `each` for every key of an object (the reader then at its value), in order.
fn object_keys<'a>(r: &mut Reader<'a>, mut each: impl FnMut(&mut Reader<'a>, &[u8]) -> Sure<()>) -> Sure<()> {
    r.eat(b'{')?;
    if r.peek()? == b'}' {
        r.i += 1;
        return Ok(());
    }
    loop {
        let line = r.s;
        let owned;
        let key: &[u8] = match r.string()? {
            Text::Raw(a, b) => &line[a..b],
            Text::Decoded => {
                owned = r.text.clone();
                &owned
            }
        };
        r.eat(b':')?;
        each(r, key)?;
        match r.peek()? {
            b',' => r.i += 1,
            b'}' => {
                r.i += 1;
                return Ok(());
            }
            _ => return Err(Unsure),
        }
    }
}

/// One object of `table` as an embedded document (`key` its element name).
fn write_table(r: &mut Reader, out: &mut Out, table: &Table, element: impl FnOnce(&mut Out)) -> Sure<()> {
    if r.peek()? != b'{' {
        return Err(Unsure);
    }
    element(out);
    let at = out.open();
    let mut seen = 0u64;
    let (mut used, mut total) = (None, None);
    object_keys(r, |r, key| {
        let slot = if table.name.as_deref() == Some(key) {
            if r.null()? {
                return Err(Unsure);
            }
            let name = r.string()?;
            let name = r.get(name);
            // Printable ASCII in it: certainly not blank to str.strip().
            if !name.iter().any(|c| (0x21..=0x7e).contains(c)) {
                return Err(Unsure);
            }
            out.element(STRING, key);
            out.string(name);
            0
        } else if let Some(f) = table.fields.iter().position(|f| f.name == key) {
            let field = &table.fields[f];
            if r.null()? {
                if field.required {
                    return Err(Unsure);
                }
            } else if field.array {
                write_number_array(r, out, key, field.limits)?;
            } else {
                let x = write_number(r, out, key, field.limits)?;
                if let Some((part, whole)) = &table.bound {
                    if key == part.as_slice() {
                        used = Some(x);
                    } else if key == whole.as_slice() {
                        total = Some(x);
                    }
                }
            }
            1 + f
        } else if let Some(c) = table.children.iter().position(|c| c.key == key) {
            write_child(r, out, &table.children[c])?;
            1 + table.fields.len() + c
        } else {
            return Err(Unsure); // a field outside the contract: kept as it is, by the per-record path
        };
        if seen & (1 << slot) != 0 {
            return Err(Unsure); // a repeated key
        }
        seen |= 1 << slot;
        Ok(())
    })?;
    if table.name.is_some() && seen & 1 == 0 {
        return Err(Unsure);
    }
    for (f, field) in table.fields.iter().enumerate() {
        if field.required && seen & (1 << (1 + f)) == 0 {
            return Err(Unsure);
        }
    }
    for (c, child) in table.children.iter().enumerate() {
        if child.required && seen & (1 << (1 + table.fields.len() + c)) == 0 {
            return Err(Unsure);
        }
    }
    if let (Some(used), Some(total)) = (used, total) {
        if used > total {
            return Err(Unsure);
        }
    }
    out.close(at);
    Ok(())
}

/// A child table's value: null (left out; a required one is not vouched for), an object,
/// or for a repeated table an array of objects.
fn write_child(r: &mut Reader, out: &mut Out, child: &Child) -> Sure<()> {
    if r.null()? {
        return if child.required { Err(Unsure) } else { Ok(()) };
    }
    if !child.repeated {
        return write_table(r, out, &child.table, |out| out.element(DOCUMENT, &child.key));
    }
    out.element(ARRAY, &child.key);
    let at = out.open();
    array_items(r, |r, index| write_table(r, out, &child.table, |out| out.index_key(DOCUMENT, index)))?;
    out.close(at);
    Ok(())
}

/// Epoch milliseconds of `YYYY-MM-DDTHH:MM:SS[.mmm](Z|+00:00)` naming a real instant.
/// With exactly three digits of fraction both `datetime.fromisoformat` and Extended
/// JSON's `$date` reader give the same millisecond (checked for all 1,000 of them).
fn iso_millis(text: &[u8]) -> Sure<i64> {
    let (body, zone) = match text.len() {
        20 | 24 => text.split_at(text.len() - 1),
        25 | 29 => text.split_at(text.len() - 6),
        _ => return Err(Unsure),
    };
    if zone != b"Z" && zone != b"+00:00" {
        return Err(Unsure);
    }
    let shape = b"dddd-dd-ddTdd:dd:dd.ddd";
    if body.len() != 19 && body.len() != 23 {
        return Err(Unsure);
    }
    for (c, s) in body.iter().zip(shape) {
        let ok = if *s == b'd' { c.is_ascii_digit() } else { c == s };
        if !ok {
            return Err(Unsure);
        }
    }
    let num = |a: usize, b: usize| body[a..b].iter().fold(0i64, |v, c| v * 10 + i64::from(c - b'0'));
    let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
    let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
    let fraction = if body.len() == 23 { num(20, 23) } else { 0 };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if year < 1 || !(1..=12).contains(&month) || hour >= 24 || minute >= 60 || second >= 60 {
        return Err(Unsure);
    }
    let last = month_days[month as usize] + i64::from(leap && month == 2);
    if day < 1 || day > last {
        return Err(Unsure);
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + fraction)
}

/// The rules of the whole payload, from Python.
#[pyclass(frozen)]
pub struct LineEncoder {
    id_fields: Vec<Vec<u8>>,
    id_rule: IdRule,
    windows: Vec<Vec<u8>>,
    performance: Vec<u8>,
    date_key: Vec<u8>,
    root: Table,
    org_id: Option<Vec<u8>>,
    max_bytes: usize,
}

/// One line's document and what lastSeen needs of it.
struct Line {
    org: std::ops::Range<usize>,
    asset: std::ops::Range<usize>,
    millis: i64,
}

const TIMESTAMP: &[u8] = b"timestamp";
const TIME_WINDOW: &[u8] = b"timeWindow";

/// The identifier rule, from `schema.ID_PATTERN`'s parts: ASCII characters an identifier
/// may start with, may hold, and its most characters.
struct IdRule {
    start: [bool; 128],
    chars: [bool; 128],
    max_len: usize,
}

impl IdRule {
    fn new(start: &str, chars: &str, max_len: usize) -> PyResult<IdRule> {
        let table = |set: &str| -> PyResult<[bool; 128]> {
            let mut table = [false; 128];
            for c in set.bytes() {
                *table.get_mut(usize::from(c)).ok_or_else(|| PyValueError::new_err("id_rule: ASCII characters only"))? =
                    true;
            }
            Ok(table)
        };
        Ok(IdRule { start: table(start)?, chars: table(chars)?, max_len })
    }

    fn allows(&self, text: &[u8]) -> bool {
        let ok = |table: &[bool; 128], c: u8| table.get(usize::from(c)).copied().unwrap_or(false);
        !text.is_empty()
            && text.len() <= self.max_len
            && ok(&self.start, text[0])
            && text[1..].iter().all(|&c| ok(&self.chars, c))
    }
}

impl LineEncoder {
    /// The document of one line appended to `out` (with `id` as its `_id`), or Unsure
    /// (`out` then holds a partial document the caller cuts off).
    fn line(&self, line: &[u8], id: &[u8], out: &mut Out) -> Sure<Line> {
        let mut r = Reader { s: line, i: 0, text: Vec::new() };
        let start = out.buf.len();
        let at = out.open();
        out.element(OBJECT_ID, b"_id");
        out.buf.extend_from_slice(id);
        let mut seen = 0u64;
        let (mut org, mut asset, mut millis) = (0..0, 0..0, 0i64);
        let slots = self.id_fields.len();
        object_keys(&mut r, |r, key| {
            let slot = if let Some(f) = self.id_fields.iter().position(|f| *f == key) {
                let text = r.string()?;
                let text = r.get(text);
                if !self.id_rule.allows(text) || (f == 0 && self.org_id.as_ref().is_some_and(|o| o != text)) {
                    return Err(Unsure);
                }
                out.element(STRING, key);
                let begin = out.buf.len() + 4 - start;
                out.string(text);
                let range = begin..begin + text.len();
                match f {
                    0 => org = range,
                    2 => asset = range,
                    _ => {}
                }
                f
            } else if key == TIMESTAMP {
                millis = if r.peek()? == b'{' {
                    let mut stamp = None;
                    object_keys(r, |r, inner| {
                        if inner != self.date_key || stamp.is_some() {
                            return Err(Unsure);
                        }
                        let text = r.string()?;
                        stamp = Some(iso_millis(r.get(text))?);
                        Ok(())
                    })?;
                    stamp.ok_or(Unsure)?
                } else {
                    let text = r.string()?;
                    iso_millis(r.get(text))?
                };
                out.element(DATE, TIMESTAMP);
                out.buf.extend_from_slice(&millis.to_le_bytes());
                slots
            } else if key == TIME_WINDOW {
                let text = r.string()?;
                let text = r.get(text);
                if !self.windows.iter().any(|w| w == text) {
                    return Err(Unsure);
                }
                out.element(STRING, TIME_WINDOW);
                out.string(text);
                slots + 1
            } else if key == self.performance {
                write_table(r, out, &self.root, |out| out.element(DOCUMENT, key))?;
                slots + 2
            } else {
                return Err(Unsure); // `_id` and fields outside the contract: the per-record path
            };
            if seen & (1 << slot) != 0 {
                return Err(Unsure);
            }
            seen |= 1 << slot;
            Ok(())
        })?;
        r.skip_space();
        if r.i != line.len() || seen != (1 << (slots + 3)) - 1 {
            return Err(Unsure);
        }
        out.close(at);
        if out.buf.len() - start > self.max_bytes {
            return Err(Unsure); // too large to store: refused by the per-record path, with its size
        }
        Ok(Line { org, asset, millis })
    }
}

/// Per org and asset (joined by a NUL): the newest timestamp in epoch ms and how many documents.
type Seen = HashMap<Vec<u8>, (i64, u64)>;

/// What `LineEncoder.encode` returns to Python (see there).
type Encoded<'py> = (Bound<'py, PyBytes>, Bound<'py, PyList>, Bound<'py, PyDict>);

#[pymethods]
impl LineEncoder {
    /// `id_fields`: schema.ID_FIELDS (orgId first, assetId third); `id_rule`: (the
    /// characters an identifier starts with, those it holds, its most characters), all
    /// ASCII, as schema.ID_PATTERN is built; `windows`: the time
    /// windows' names; `performance`: the name of the metrics' object, whose tables
    /// `spec` describes (see `Table::from_spec`); `date_key`: Extended JSON's date
    /// wrapper; `org_id`: only lines of this org are vouched for; `max_bytes`: the
    /// largest document the server stores.
    #[new]
    #[pyo3(signature = (id_fields, id_rule, windows, performance, spec, date_key, org_id, max_bytes))]
    #[allow(clippy::too_many_arguments)] // one per part of the contract, named at the call
    fn new(
        id_fields: Vec<String>,
        id_rule: (String, String, usize),
        windows: Vec<String>,
        performance: String,
        spec: &Bound<PyAny>,
        date_key: String,
        org_id: Option<String>,
        max_bytes: usize,
    ) -> PyResult<LineEncoder> {
        if id_fields.len() != 3 {
            return Err(PyValueError::new_err("id_fields: orgId, agentId, assetId"));
        }
        Ok(LineEncoder {
            id_fields: id_fields.into_iter().map(String::into_bytes).collect(),
            id_rule: IdRule::new(&id_rule.0, &id_rule.1, id_rule.2)?,
            windows: windows.into_iter().map(String::into_bytes).collect(),
            performance: performance.into_bytes(),
            date_key: date_key.into_bytes(),
            root: Table::from_spec(spec)?,
            org_id: org_id.map(String::into_bytes),
            max_bytes,
        })
    }

    /// Documents for the lines of `lines` (bytes each) that the contract's plain cases
    /// cover. Their `_id`s: ObjectIds of `prefix` (seconds and random value, 9 bytes)
    /// and counters from `first` on (mod 2**24), in order of the vouched lines.
    ///
    /// Returns (vouched, documents, last_seen): one byte per line (1: vouched for), the
    /// BSON documents of the vouched lines in line order, and a dict of (org, asset) of
    /// theirs to [newest timestamp in epoch milliseconds, count].
    fn encode<'py>(
        &self,
        py: Python<'py>,
        lines: &Bound<'py, PyList>,
        prefix: &[u8],
        first: u32,
    ) -> PyResult<Encoded<'py>> {
        let held: Vec<Bound<'py, PyBytes>> =
            lines.iter().map(|l| l.cast_into::<PyBytes>().map_err(PyErr::from)).collect::<PyResult<_>>()?;
        let prefix: [u8; 9] = prefix.try_into().map_err(|_| PyValueError::new_err("prefix: 9 bytes"))?;
        let slices: Vec<&[u8]> = held.iter().map(|b| b.as_bytes()).collect();
        let (vouched, data, ends, seen) = py.detach(|| self.encode_all(&slices, &prefix, first));
        let documents = PyList::empty(py);
        let mut begin = 0;
        for end in ends {
            documents.append(PyBytes::new(py, &data[begin..end]))?;
            begin = end;
        }
        let last_seen = PyDict::new(py);
        for (key, (newest, count)) in seen {
            // Identifiers are checked ASCII.
            let text = std::str::from_utf8(&key).map_err(|e| PyValueError::new_err(e.to_string()))?;
            let (org, asset) = text.split_once('\0').unwrap_or((text, ""));
            let key = (PyString::new(py, org), PyString::new(py, asset));
            last_seen.set_item(key, PyList::new(py, [newest, count as i64])?)?;
        }
        Ok((PyBytes::new(py, &vouched), documents, last_seen))
    }
}

impl LineEncoder {
    fn encode_all(&self, lines: &[&[u8]], prefix: &[u8; 9], first: u32) -> (Vec<u8>, Vec<u8>, Vec<usize>, Seen) {
        let mut out = Out { buf: Vec::with_capacity(lines.iter().map(|l| l.len()).sum()) };
        let mut vouched = vec![0u8; lines.len()];
        let mut ends = Vec::with_capacity(lines.len());
        let mut seen: Seen = HashMap::new();
        let mut key = Vec::new();
        let mut used = 0u32;
        let mut id = [0u8; 12];
        id[..9].copy_from_slice(prefix);
        for (n, line) in lines.iter().enumerate() {
            let start = out.buf.len();
            let counter = (first.wrapping_add(used) & 0xFF_FFFF).to_be_bytes();
            id[9..].copy_from_slice(&counter[1..]);
            match self.line(line, &id, &mut out) {
                Ok(doc) => {
                    vouched[n] = 1;
                    used += 1;
                    ends.push(out.buf.len());
                    // Keyed by org and asset joined with a NUL (neither holds one), so
                    // that a lookup borrows the bytes and only a new asset allocates.
                    key.clear();
                    key.extend_from_slice(&out.buf[start + doc.org.start..start + doc.org.end]);
                    key.push(0);
                    key.extend_from_slice(&out.buf[start + doc.asset.start..start + doc.asset.end]);
                    match seen.get_mut(key.as_slice()) {
                        Some(entry) => *entry = (entry.0.max(doc.millis), entry.1 + 1),
                        None => {
                            seen.insert(key.clone(), (doc.millis, 1));
                        }
                    }
                }
                Err(Unsure) => out.buf.truncate(start),
            }
        }
        (vouched, out.buf, ends, seen)
    }
}

/// Registers the loader's classes in the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LineEncoder>()
}

//! BSON documents read element by element, keys compared in place with the column expected.
//!
//! The decode reads every element of a snapshot, and most of its cost was reading the
//! keys: the `bson` crate's iterator scans each key for its terminator and checks it is
//! UTF-8 before the caller sees it, only for the caller to compare it with a column name.
//! Here the caller passes the name it expects next (see `fields`) and the walker compares
//! the key's bytes with it where they lie: one short comparison, no scan, no UTF-8 check
//! (a column name is UTF-8, so a key equal to it is too). Any other key is scanned and
//! checked as before.
//!
//! Everything else is read as the BSON specification lays it out (bsonspec.org), with
//! the checks the `bson` crate made, so the same documents are refused: every length is
//! checked against the bytes left in its document, strings and keys end with their
//! terminator and are UTF-8, a boolean is 0 or 1, an unknown type byte is an error, an
//! embedded document's length and terminator are checked where it is met and its own
//! elements when it is read.

/// Why bytes are not BSON, and where: `path` holds the keys from the innermost out.
pub(crate) struct Malformed {
    path: Vec<String>,
    reason: String,
}

impl Malformed {
    fn new(reason: impl Into<String>) -> Malformed {
        Malformed { path: Vec::new(), reason: reason.into() }
    }

    /// The same error, one level out: inside the element `key`.
    pub(crate) fn at(mut self, key: &[u8]) -> Malformed {
        self.path.push(String::from_utf8_lossy(key).into_owned());
        self
    }

    /// One line: the dotted path of the element, outermost key first, then the reason.
    pub(crate) fn message(&self) -> String {
        if self.path.is_empty() {
            return format!("malformed BSON: {}", self.reason);
        }
        let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
        format!("malformed BSON at {}: {}", path.join("."), self.reason)
    }
}

type Read<T> = Result<T, Malformed>;

/// A document whose length prefix is its length and whose last byte is its terminator.
#[derive(Clone, Copy)]
pub(crate) struct Doc<'a> {
    bytes: &'a [u8],
}

impl<'a> Doc<'a> {
    /// `bytes` as one whole document.
    pub(crate) fn new(bytes: &'a [u8]) -> Read<Doc<'a>> {
        let declared = length(bytes, "a document")?;
        if declared != bytes.len() {
            return Err(Malformed::new(format!("a document declares {declared} bytes but has {}", bytes.len())));
        }
        embedded(bytes, "a document")
    }

    pub(crate) fn elements(self) -> Elements<'a> {
        Elements { bytes: self.bytes, at: 4 }
    }
}

/// An element's key: the one the caller expected, or another (checked UTF-8).
#[derive(Clone, Copy)]
pub(crate) enum Key<'a> {
    Expected,
    Other(&'a str),
}

/// An element's value. Types the decode never stores are named only, for its messages.
#[derive(Clone, Copy)]
pub(crate) enum Value<'a> {
    Double(f64),
    String(&'a str),
    Document(Doc<'a>),
    Array(Doc<'a>),
    Boolean(bool),
    Null,
    Int32(i32),
    Int64(i64),
    DateTime(i64),
    ObjectId([u8; 12]),
    Other(&'static str),
}

/// A document's elements in order; after an error, none.
pub(crate) struct Elements<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Elements<'a> {
    /// The next element (None after the last), its key compared with `expected` first.
    pub(crate) fn next(&mut self, expected: Option<&[u8]>) -> Option<Read<(Key<'a>, Value<'a>)>> {
        let terminator = self.bytes.len() - 1;
        if self.at == terminator {
            return None;
        }
        let element = self.element(expected);
        self.at = match element {
            Ok((_, _, end)) => end,
            Err(_) => terminator,
        };
        Some(element.map(|(key, value, _)| (key, value)))
    }

    /// The element at `self.at`: key, value and where the next one starts.
    fn element(&self, expected: Option<&[u8]>) -> Read<(Key<'a>, Value<'a>, usize)> {
        let bytes = self.bytes;
        let Some(&tag) = bytes.get(self.at) else {
            return Err(Malformed::new("the last element runs over its document's terminator"));
        };
        let key_at = self.at + 1;
        let (key, name, value_at) = match expected {
            Some(name) if bytes.get(key_at..key_at + name.len()) == Some(name) && bytes.get(key_at + name.len()) == Some(&0) => {
                (Key::Expected, name, key_at + name.len() + 1)
            }
            _ => {
                let name = terminated(&bytes[key_at..]).ok_or_else(|| Malformed::new("a key has no terminator before its document ends"))?;
                let key = std::str::from_utf8(name).map_err(|_| Malformed::new("a key is not UTF-8").at(name))?;
                (Key::Other(key), name, key_at + name.len() + 1)
            }
        };
        let (value, size) = value(tag, &bytes[value_at..]).map_err(|e| e.at(name))?;
        Ok((key, value, value_at + size))
    }
}

/// The bytes before the first NUL of `rest` (None: there is none).
fn terminated(rest: &[u8]) -> Option<&[u8]> {
    rest.iter().position(|&b| b == 0).map(|end| &rest[..end])
}

fn fixed<const N: usize>(rest: &[u8], what: &str) -> Read<[u8; N]> {
    rest.get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Malformed::new(format!("{what} needs {N} bytes, {} remain in its document", rest.len())))
}

/// A length prefix (int32), refused when negative.
fn length(rest: &[u8], what: &str) -> Read<usize> {
    let [a, b, c, d, ..] = *rest else {
        return Err(Malformed::new(format!("{what}'s length needs 4 bytes, {} remain in its document", rest.len())));
    };
    let declared = i32::from_le_bytes([a, b, c, d]);
    usize::try_from(declared).map_err(|_| Malformed::new(format!("{what} declares a negative length ({declared})")))
}

/// `what` fits in `rest`: `size` bytes of it are left.
fn within(rest: &[u8], size: usize, what: &str) -> Read<()> {
    if size > rest.len() {
        return Err(Malformed::new(format!("{what} of {size} bytes runs past its document ({} bytes remain)", rest.len())));
    }
    Ok(())
}

/// A length-prefixed string at the start of `rest`: (the text, bytes taken).
fn string<'a>(rest: &'a [u8], what: &str) -> Read<(&'a str, usize)> {
    let declared = length(rest, what)?;
    if declared < 1 {
        return Err(Malformed::new(format!("{what} declares {declared} bytes, too few for its terminator")));
    }
    let size = declared.checked_add(4).ok_or_else(|| Malformed::new(format!("{what} is too long")))?;
    within(rest, size, what)?;
    if rest[size - 1] != 0 {
        return Err(Malformed::new(format!("{what} does not end with its terminator")));
    }
    let text = std::str::from_utf8(&rest[4..size - 1]).map_err(|_| Malformed::new(format!("{what} is not UTF-8")))?;
    Ok((text, size))
}

/// An embedded document at the start of `rest` (its length and terminator checked).
fn embedded<'a>(rest: &'a [u8], what: &str) -> Read<Doc<'a>> {
    let size = length(rest, what)?;
    if size < 5 {
        return Err(Malformed::new(format!("{what} declares {size} bytes, fewer than the 5 of an empty one")));
    }
    within(rest, size, what)?;
    if rest[size - 1] != 0 {
        return Err(Malformed::new(format!("{what} does not end with its terminator")));
    }
    Ok(Doc { bytes: &rest[..size] })
}

/// A C string at the start of `rest`, checked UTF-8: the bytes it takes.
fn cstring(rest: &[u8], what: &str) -> Read<usize> {
    let text = terminated(rest).ok_or_else(|| Malformed::new(format!("{what} has no terminator before its document ends")))?;
    std::str::from_utf8(text).map_err(|_| Malformed::new(format!("{what} is not UTF-8")))?;
    Ok(text.len() + 1)
}

/// Binary data: a length, a subtype, the bytes (the old subtype 2 repeats the length inside).
fn binary(rest: &[u8]) -> Read<usize> {
    let declared = length(rest, "binary data")?;
    let size = declared + 5;
    within(rest, size, "binary data")?;
    if size >= i32::MAX as usize {
        return Err(Malformed::new(format!("binary data of {declared} bytes is over BSON's maximum")));
    }
    if rest[4] == 2 {
        let inner = length(&rest[5..size], "old binary data (subtype 2)")?;
        if inner.checked_add(4) != Some(declared) {
            return Err(Malformed::new(format!(
                "old binary data (subtype 2) declares {inner} bytes inside {declared}, not 4 fewer"
            )));
        }
    }
    Ok(size)
}

/// JavaScript code with scope: a total length, the code (a string), the scope (a document).
fn code_with_scope(rest: &[u8]) -> Read<usize> {
    let size = length(rest, "code with scope")?;
    within(rest, size, "code with scope")?;
    if size < 14 {
        return Err(Malformed::new(format!("code with scope declares {size} bytes, fewer than its minimum of 14")));
    }
    let element = &rest[..size];
    let (_, code) = string(&element[4..], "code with scope's code")?;
    Doc::new(&element[4 + code..]).map_err(|e| Malformed::new(format!("code with scope's scope: {}", e.reason)))?;
    Ok(size)
}

/// The value of type `tag` at the start of `rest`, and the bytes it takes.
fn value<'a>(tag: u8, rest: &'a [u8]) -> Read<(Value<'a>, usize)> {
    Ok(match tag {
        0x01 => (Value::Double(f64::from_le_bytes(fixed(rest, "a double")?)), 8),
        0x02 => {
            let (text, size) = string(rest, "a string")?;
            (Value::String(text), size)
        }
        0x03 => {
            let doc = embedded(rest, "an embedded document")?;
            (Value::Document(doc), doc.bytes.len())
        }
        0x04 => {
            let doc = embedded(rest, "an array")?;
            (Value::Array(doc), doc.bytes.len())
        }
        0x05 => (Value::Other("binary"), binary(rest)?),
        0x06 => (Value::Other("undefined"), 0),
        0x07 => (Value::ObjectId(fixed(rest, "an objectId")?), 12),
        0x08 => match fixed::<1>(rest, "a boolean")? {
            [0] => (Value::Boolean(false), 1),
            [1] => (Value::Boolean(true), 1),
            [other] => return Err(Malformed::new(format!("a boolean must be 0 or 1, not {other}"))),
        },
        0x09 => (Value::DateTime(i64::from_le_bytes(fixed(rest, "a datetime")?)), 8),
        0x0A => (Value::Null, 0),
        0x0B => {
            let pattern = cstring(rest, "a regex's pattern")?;
            (Value::Other("regex"), pattern + cstring(&rest[pattern..], "a regex's options")?)
        }
        0x0C => {
            let (_, namespace) = string(rest, "a dbPointer's namespace")?;
            within(rest, namespace + 12, "a dbPointer")?;
            (Value::Other("dbPointer"), namespace + 12)
        }
        0x0D => (Value::Other("code"), string(rest, "code")?.1),
        0x0E => (Value::Other("symbol"), string(rest, "a symbol")?.1),
        0x0F => (Value::Other("codeWithScope"), code_with_scope(rest)?),
        0x10 => (Value::Int32(i32::from_le_bytes(fixed(rest, "an int32")?)), 4),
        0x11 => (Value::Other("timestamp"), fixed::<8>(rest, "a timestamp")?.len()),
        0x12 => (Value::Int64(i64::from_le_bytes(fixed(rest, "an int64")?)), 8),
        0x13 => (Value::Other("decimal128"), fixed::<16>(rest, "a decimal128")?.len()),
        0x7F => (Value::Other("maxkey"), 0),
        0xFF => (Value::Other("minkey"), 0),
        other => return Err(Malformed::new(format!("unknown element type 0x{other:02x}"))),
    })
}

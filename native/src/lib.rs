//! Raw BSON snapshot batches decoded straight into Arrow column buffers.
//!
//! Python describes the columns it wants (a tree of nodes, see `Node::from_spec`) and
//! passes the raw batches the server sent; this module walks each document once (`walk`:
//! no document is materialised, keys are compared in place) and returns, per node, the
//! buffers of Arrow arrays: validity bitmaps, values, offsets. Python wraps them with
//! `pyarrow.Array.from_buffers` without copying.
//!
//! Types are read as pymongoarrow 1.15 reads them, so that both decoders give equal
//! frames and refuse the same documents: a double column takes doubles, int32, int64 and
//! booleans; an int64 column also takes doubles (truncated); a double NaN is null in any
//! column; a struct given a non-document is a struct of nulls; a list given a
//! non-array, non-null value is an empty list; any other mismatch refuses the whole
//! document, which is then left out of the buffers and reported with its position.

mod fields;
mod loader;
mod order;
mod walk;

use std::cmp::Ordering;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use fields::{Fields, Slot};
use order::{root_order, Orders};
use walk::{Doc, Key, Malformed, Value};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    F64,
    I64,
    Str,
    Ts,
    Oid,
    F64List,
}

impl Kind {
    fn parse(name: &str) -> PyResult<Kind> {
        Ok(match name {
            "f64" => Kind::F64,
            "i64" => Kind::I64,
            "str" => Kind::Str,
            "ts" => Kind::Ts,
            "oid" => Kind::Oid,
            "f64list" => Kind::F64List,
            other => return Err(PyValueError::new_err(format!("unknown column kind {other:?}"))),
        })
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::F64 | Kind::F64List => "double",
            Kind::I64 => "int64",
            Kind::Str => "string",
            Kind::Ts => "datetime",
            Kind::Oid => "objectId",
        }
    }
}

/// Why a document was refused: a type the column does not take (in pymongoarrow's
/// words), or bytes that are not BSON (where, and why).
enum Refusal {
    Type(String),
    Malformed(Malformed),
}

impl Refusal {
    /// The same refusal seen from one level out, inside the element `key`.
    fn within(self, key: &str) -> Refusal {
        match self {
            Refusal::Malformed(e) => Refusal::Malformed(e.at(key.as_bytes())),
            other => other,
        }
    }

    fn reason(self) -> String {
        match self {
            Refusal::Type(reason) => reason,
            Refusal::Malformed(e) => e.message(),
        }
    }
}

impl From<Malformed> for Refusal {
    fn from(e: Malformed) -> Refusal {
        Refusal::Malformed(e)
    }
}

type Step = Result<(), Refusal>;

/// The BSON type's name as pymongoarrow words it, so both decoders give the same reason.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Double(_) => "double",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Document(_) => "document",
        Value::Boolean(_) => "boolean",
        Value::Null => "null",
        Value::Int32(_) => "int32",
        Value::Int64(_) => "int64",
        Value::DateTime(_) => "datetime",
        Value::ObjectId(_) => "objectId",
        Value::Other(name) => name,
    }
}

fn refuse(kind: Kind, value: &Value) -> Refusal {
    Refusal::Type(format!("Got unexpected type `{}` instead of expected type `{}`", type_name(value), kind.expected()))
}

/// A double, as a double column reads it (None: the value is not a number).
fn as_double(value: &Value) -> Option<f64> {
    match *value {
        Value::Double(v) => Some(v),
        Value::Int32(v) => Some(f64::from(v)),
        Value::Int64(v) => Some(v as f64),
        Value::Boolean(v) => Some(if v { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn is_null(value: &Value) -> bool {
    matches!(value, Value::Null) || matches!(value, Value::Double(v) if v.is_nan())
}

/// One column: one value per row of its node.
struct Leaf {
    name: String,
    kind: Kind,
    valid: Vec<u8>,     // one byte per row, packed into a bitmap at the end
    f64s: Vec<f64>,     // F64 values; F64List elements
    i64s: Vec<i64>,     // I64 values; Ts milliseconds
    bytes: Vec<u8>,     // Str UTF-8 data; Oid 12 bytes a row
    offsets: Vec<i32>,  // Str and F64List: rows + 1 offsets
    inner: Vec<u8>,     // F64List: element validity
}

impl Leaf {
    fn new(name: String, kind: Kind) -> Leaf {
        Leaf { name, kind, valid: Vec::new(), f64s: Vec::new(), i64s: Vec::new(), bytes: Vec::new(),
               offsets: vec![0], inner: Vec::new() }
    }

    fn rows(&self) -> usize {
        self.valid.len()
    }

    fn push_null(&mut self) {
        self.valid.push(0);
        match self.kind {
            Kind::F64 => self.f64s.push(0.0),
            Kind::I64 | Kind::Ts => self.i64s.push(0),
            Kind::Oid => self.bytes.extend_from_slice(&[0; 12]),
            Kind::Str | Kind::F64List => self.offsets.push(*self.offsets.last().unwrap_or(&0)),
        }
    }

    fn push(&mut self, value: Value) -> Step {
        if is_null(&value) {
            self.push_null();
            return Ok(());
        }
        match (self.kind, value) {
            (Kind::F64, v) => match as_double(&v) {
                Some(x) => self.f64s.push(x),
                None => return Err(refuse(self.kind, &v)),
            },
            (Kind::I64, Value::Double(x)) => self.i64s.push(x as i64),
            (Kind::I64, v) => match as_double(&v) {
                Some(_) => self.i64s.push(match v {
                    Value::Int32(x) => i64::from(x),
                    Value::Int64(x) => x,
                    _ => i64::from(matches!(v, Value::Boolean(true))),
                }),
                None => return Err(refuse(self.kind, &v)),
            },
            (Kind::Str, Value::String(s)) => {
                self.bytes.extend_from_slice(s.as_bytes());
                self.offsets.push(self.bytes.len() as i32);
            }
            (Kind::Ts, Value::DateTime(millis)) => self.i64s.push(millis),
            (Kind::Oid, Value::ObjectId(o)) => self.bytes.extend_from_slice(&o),
            (Kind::F64List, Value::Array(items)) => self.push_list(items).map_err(|r| r.within(&self.name))?,
            (Kind::F64List, _) => self.offsets.push(self.f64s.len() as i32),
            (_, v) => return Err(refuse(self.kind, &v)),
        }
        self.valid.push(1);
        Ok(())
    }

    fn push_list(&mut self, items: Doc) -> Step {
        let mut items = items.elements();
        while let Some(item) = items.next(None) {
            let (_, item) = item?;
            if is_null(&item) {
                self.f64s.push(0.0);
                self.inner.push(0);
            } else if let Some(x) = as_double(&item) {
                self.f64s.push(x);
                self.inner.push(1);
            } else {
                return Err(refuse(self.kind, &item));
            }
        }
        self.offsets.push(self.f64s.len() as i32);
        Ok(())
    }

    /// Compare two rows as Polars sorts ascending: nulls first, strings by their bytes.
    fn compare(&self, a: usize, b: usize) -> Ordering {
        match (self.valid[a], self.valid[b]) {
            (0, 0) => return Ordering::Equal,
            (0, _) => return Ordering::Less,
            (_, 0) => return Ordering::Greater,
            _ => {}
        }
        match self.kind {
            Kind::F64 => self.f64s[a].total_cmp(&self.f64s[b]),
            Kind::I64 | Kind::Ts => self.i64s[a].cmp(&self.i64s[b]),
            Kind::Oid => self.bytes[a * 12..a * 12 + 12].cmp(&self.bytes[b * 12..b * 12 + 12]),
            Kind::Str => self.str_at(a).cmp(self.str_at(b)),
            Kind::F64List => Ordering::Equal,
        }
    }

    fn str_at(&self, row: usize) -> &[u8] {
        &self.bytes[self.offsets[row] as usize..self.offsets[row + 1] as usize]
    }

    /// Drop every row from `rows` on (a refused document's partial writes).
    fn truncate(&mut self, rows: usize) {
        self.valid.truncate(rows);
        match self.kind {
            Kind::F64 => self.f64s.truncate(rows),
            Kind::I64 | Kind::Ts => self.i64s.truncate(rows),
            Kind::Oid => self.bytes.truncate(rows * 12),
            Kind::Str => {
                self.offsets.truncate(rows + 1);
                self.bytes.truncate(self.offsets[rows] as usize);
            }
            Kind::F64List => {
                self.offsets.truncate(rows + 1);
                let end = self.offsets[rows] as usize;
                self.f64s.truncate(end);
                self.inner.truncate(end);
            }
        }
    }
}

/// A child object of a node: a struct (same rows as its parent) or, `repeated`, a list
/// of structs (rows of its own, one per element, with offsets in the parent's rows).
struct Child {
    name: String,
    repeated: bool,
    node: Node,
    valid: Vec<u8>,    // repeated: list validity per parent row
    offsets: Vec<i32>, // repeated: parent rows + 1 offsets into the node's rows
}

impl Child {
    fn fill(&mut self, value: Option<Value>) -> Step {
        if !self.repeated {
            return self.node.fill(match value {
                Some(Value::Document(doc)) => Some(doc),
                _ => None,
            });
        }
        match value {
            None => self.valid.push(0),
            Some(v) if is_null(&v) => self.valid.push(0),
            Some(Value::Array(items)) => {
                let mut items = items.elements();
                while let Some(item) = items.next(None) {
                    let (index, item) = item?;
                    let doc = match item {
                        Value::Document(doc) => Some(doc),
                        _ => None,
                    };
                    self.node.fill(doc).map_err(|r| match index {
                        Key::Other(index) => r.within(index),
                        Key::Expected => r,
                    })?;
                }
                self.valid.push(1);
            }
            Some(_) => self.valid.push(1),
        }
        self.offsets.push(self.node.rows as i32);
        Ok(())
    }

    fn parent_rows(&self) -> usize {
        self.valid.len()
    }

    fn truncate(&mut self, parent_rows: usize) {
        if !self.repeated {
            self.node.truncate(parent_rows);
            return;
        }
        self.valid.truncate(parent_rows);
        self.offsets.truncate(parent_rows + 1);
        self.node.truncate(self.offsets[parent_rows] as usize);
    }
}

/// A document level: its columns and its child objects.
struct Node {
    rows: usize,
    leaves: Vec<Leaf>,
    children: Vec<Child>,
    fields: Fields,
}

impl Node {
    /// `spec`: (leaves: [(name, kind)], children: [(name, repeated, spec)]).
    fn from_spec(spec: &Bound<PyAny>) -> PyResult<Node> {
        type Spec<'py> = (Vec<(String, String)>, Vec<(String, bool, Bound<'py, PyAny>)>);
        let (leaves, children): Spec = spec.extract()?;
        let leaves = leaves
            .into_iter()
            .map(|(name, kind)| Ok(Leaf::new(name, Kind::parse(&kind)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let children = children
            .into_iter()
            .map(|(name, repeated, sub)| {
                Ok(Child { name, repeated, node: Node::from_spec(&sub)?, valid: Vec::new(), offsets: vec![0] })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let fields = Fields::new(leaves.iter().map(|l| l.name.as_str()), children.iter().map(|c| c.name.as_str()));
        Ok(Node { rows: 0, leaves, children, fields })
    }

    /// One row from `doc` (None: a missing or non-document object: every column null).
    fn fill(&mut self, doc: Option<Doc>) -> Step {
        let row = self.rows;
        if let Some(doc) = doc {
            self.fields.rewind();
            let mut elements = doc.elements();
            while let Some(element) = elements.next(self.fields.expected()) {
                let (key, value) = element?;
                // A repeated key is read once, as pymongoarrow reads its first occurrence.
                match self.fields.find(key) {
                    Some(Slot::Leaf(i)) if self.leaves[i].rows() == row => self.leaves[i].push(value)?,
                    Some(Slot::Child(i)) => {
                        let child = &mut self.children[i];
                        let filled = if child.repeated { child.parent_rows() > row } else { child.node.rows > row };
                        if !filled {
                            child.fill(Some(value)).map_err(|r| r.within(&child.name))?;
                        }
                    }
                    _ => {}
                }
            }
        }
        for leaf in self.leaves.iter_mut().filter(|l| l.rows() == row) {
            leaf.push_null();
        }
        for child in &mut self.children {
            let filled = if child.repeated { child.parent_rows() > row } else { child.node.rows > row };
            if !filled {
                child.fill(None)?;
            }
        }
        self.rows = row + 1;
        Ok(())
    }

    fn truncate(&mut self, rows: usize) {
        self.rows = rows;
        for leaf in &mut self.leaves {
            leaf.truncate(rows);
        }
        for child in &mut self.children {
            child.truncate(rows);
        }
    }
}

/// One byte per row (0/1) as an Arrow validity bitmap; None when every row is valid.
fn bitmap<'py>(py: Python<'py>, flags: &[u8]) -> Option<Bound<'py, PyBytes>> {
    if flags.iter().all(|&f| f == 1) {
        return None;
    }
    let mut bits = vec![0u8; flags.len().div_ceil(8)];
    for (i, &f) in flags.iter().enumerate() {
        bits[i / 8] |= f << (i % 8);
    }
    Some(PyBytes::new(py, &bits))
}

fn raw<'py, T: Copy>(py: Python<'py>, values: &[T]) -> Bound<'py, PyBytes> {
    // SAFETY: plain numbers (f64, i64, i32) viewed as their bytes, in native (little-endian) order.
    let bytes = unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) };
    PyBytes::new(py, bytes)
}

fn leaf_dict<'py>(py: Python<'py>, leaf: &Leaf) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("validity", bitmap(py, &leaf.valid))?;
    let values = match leaf.kind {
        Kind::F64 | Kind::F64List => raw(py, &leaf.f64s),
        Kind::I64 | Kind::Ts => raw(py, &leaf.i64s),
        Kind::Str | Kind::Oid => PyBytes::new(py, &leaf.bytes),
    };
    out.set_item("values", values)?;
    if matches!(leaf.kind, Kind::Str | Kind::F64List) {
        out.set_item("offsets", raw(py, &leaf.offsets))?;
    }
    if leaf.kind == Kind::F64List {
        out.set_item("inner_validity", bitmap(py, &leaf.inner))?;
    }
    Ok(out)
}

/// Per double column of a repeated child: the sum of each list's non-null values (0 for
/// an empty list), null where the list is.
fn sums<'py>(py: Python<'py>, child: &Child) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for leaf in child.node.leaves.iter().filter(|l| l.kind == Kind::F64) {
        let mut values = Vec::with_capacity(child.valid.len());
        for (row, &valid) in child.valid.iter().enumerate() {
            let (lo, hi) = (child.offsets[row] as usize, child.offsets[row + 1] as usize);
            let total: f64 = if valid == 1 {
                (lo..hi).filter(|&i| leaf.valid[i] == 1).map(|i| leaf.f64s[i]).sum()
            } else {
                0.0
            };
            values.push(total);
        }
        let column = PyDict::new(py);
        column.set_item("validity", bitmap(py, &child.valid))?;
        column.set_item("values", raw(py, &values))?;
        out.set_item(&leaf.name, column)?;
    }
    Ok(out)
}

fn node_dict<'py>(py: Python<'py>, node: &Node, order: Option<&Orders>) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("rows", node.rows)?;
    out.set_item("order", order.map(|o| raw(py, &o.rows)))?;
    let leaves = PyDict::new(py);
    for leaf in &node.leaves {
        leaves.set_item(&leaf.name, leaf_dict(py, leaf)?)?;
    }
    out.set_item("leaves", leaves)?;
    let children = PyDict::new(py);
    for (i, child) in node.children.iter().enumerate() {
        let entry = PyDict::new(py);
        entry.set_item("repeated", child.repeated)?;
        let sub = order.and_then(|o| o.children[i].as_ref());
        entry.set_item("node", node_dict(py, &child.node, sub)?)?;
        if child.repeated {
            entry.set_item("validity", bitmap(py, &child.valid))?;
            entry.set_item("offsets", raw(py, &child.offsets))?;
            entry.set_item("sums", sums(py, child)?)?;
        }
        children.set_item(&child.name, entry)?;
    }
    out.set_item("children", children)?;
    Ok(out)
}

/// Decode the documents of `batches` (each bytes-like, one or more whole BSON documents
/// back to back) into the columns `spec` describes.
///
/// Returns (columns, refused): `columns` a dict per node (`rows`, `leaves`, `children`,
/// `order`) of Arrow buffers; `refused` a list of (position of the document among all of
/// the batches' documents, reason) for the documents left out, malformed ones among them
/// ("malformed BSON at <dotted path>: <reason>"). With `sort` = (keys, item), each node's
/// `order` holds its rows' sorted order as uint32 (see `Orders`), else None. Batches
/// that cannot be cut into documents raise ValueError.
#[pyfunction]
#[pyo3(signature = (batches, spec, sort=None))]
fn decode_batches<'py>(
    py: Python<'py>,
    batches: &Bound<'py, PyList>,
    spec: &Bound<'py, PyAny>,
    sort: Option<(Vec<String>, String)>,
) -> PyResult<(Bound<'py, PyDict>, Vec<(usize, String)>)> {
    let mut root = Node::from_spec(spec)?;
    let mut refused = Vec::new();
    let mut position = 0usize;
    for batch in batches.iter() {
        let data: &[u8] = batch.extract()?;
        let mut offset = 0usize;
        while offset < data.len() {
            if data.len() - offset < 5 {
                return Err(PyValueError::new_err("malformed BSON: a batch ends inside a document"));
            }
            let length = i32::from_le_bytes([data[offset], data[offset + 1], data[offset + 2], data[offset + 3]]);
            let end = offset + usize::try_from(length).unwrap_or(0);
            if length < 5 || end > data.len() {
                return Err(PyValueError::new_err("malformed BSON: a document's length runs past its batch"));
            }
            let doc = Doc::new(&data[offset..end])
                .map_err(|e| PyValueError::new_err(format!("{} (document {position})", e.message())))?;
            let rows = root.rows;
            if let Err(refusal) = root.fill(Some(doc)) {
                root.truncate(rows);
                refused.push((position, refusal.reason()));
            }
            position += 1;
            offset = end;
        }
    }
    let order = match sort {
        Some((keys, item)) => Some(root_order(&root, &keys, &item)?),
        None => None,
    };
    Ok((node_dict(py, &root, order.as_ref())?, refused))
}

#[pymodule]
fn perf_analytics_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_batches, m)?)?;
    loader::register(m)
}

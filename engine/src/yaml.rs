//! YAML loading for DAG files: one document, turned into a tree whose every
//! node and mapping key remembers its 1-based `line:col`, so validation can
//! report `PATH:LINE:COL: message`, with hard limits so hostile files (huge,
//! deeply nested, or alias bombs) are rejected cheaply.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Tag};

mod merge;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub(crate) const START: Pos = Pos { line: 1, col: 1 };

    pub fn new(line: usize, col: usize) -> Self {
        Pos { line, col }
    }

    /// saphyr's markers have 1-based lines but 0-based columns (pinned by the
    /// `saphyr_marker_bases` test, so an upgrade that changes this is noticed).
    fn from_marker(marker: &Marker) -> Self {
        Pos {
            line: marker.line(),
            col: marker.col() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A value and the place in the text where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// The user-facing name of this kind of value, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "list",
            Value::Map(_) => "mapping",
        }
    }
}

/// A mapping key. Keys are always scalars and keep their source text
/// verbatim (`1:` gives the key `"1"`), because DAG keys are names.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted text, checked before any parsing.
    pub max_bytes: usize,
    /// Most collections (lists/mappings) nested inside each other.
    pub max_depth: usize,
    /// Most nodes in the final tree (mapping keys included), counting every
    /// alias copy in full.
    pub max_nodes: usize,
    /// Most bytes of scalar and key text in the final tree, counting every
    /// alias copy. `max_nodes` alone would let a few KiB of aliases copy a
    /// 1 MiB string many thousands of times.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 2 * 1024 * 1024,
            max_depth: 64,
            max_nodes: 200_000,
            max_text_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

impl YamlError {
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        YamlError {
            pos,
            message: message.into(),
        }
    }
}

impl Node {
    /// The value stored under `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, node)| node)
    }

    /// Like [`Node::get`], but also returns the key, whose position is where
    /// errors about the key itself (e.g. "unknown key") should point.
    pub fn entry(&self, key: &str) -> Option<(&Key, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, n)| (k, n))
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// Integers count as numbers too, since users write `timeout: 30` where a
    /// float is expected.
    pub fn as_f64(&self) -> Option<f64> {
        match self.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub(crate) fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn type_name(&self) -> &'static str {
        self.value.type_name()
    }

    /// Recursion depth is bounded by the `max_depth` the tree was parsed with.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            // JSON has no NaN or infinities.
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Parse exactly one document. Returns the root node, or every error found
/// (syntax and limit errors stop parsing; duplicate and non-scalar keys are all
/// reported), sorted by position.
pub fn parse(text: &str, limits: &Limits) -> Result<Node, Vec<YamlError>> {
    if text.len() > limits.max_bytes {
        return Err(vec![YamlError::new(
            Pos::START,
            format!("file is larger than {} bytes", limits.max_bytes),
        )]);
    }
    // saphyr would make a leading BOM part of the first scalar (the first key
    // would be "\u{feff}name"); editors hide it, so columns ignore it too.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut builder = Builder::new(text, limits);
    if let Err(fatal) = builder.run() {
        builder.errors.push(fatal);
    }
    builder.finish()
}

/// Resolve a plain, untagged scalar by the YAML 1.2 core schema.
fn plain_value(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let radix = [("0x", 16), ("0o", 8)]
        .into_iter()
        .find_map(|(prefix, radix)| radix_value(s.strip_prefix(prefix)?, radix));
    if let Some(v) = radix {
        return v;
    }
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        // Too big for i64: a number is still what the user meant.
        return match s.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => s.parse::<f64>().map_or_else(|_| str_value(s), Value::Float),
        };
    }
    if is_core_float(unsigned)
        && let Ok(f) = s.parse::<f64>()
    {
        return Value::Float(f);
    }
    str_value(s)
}

fn str_value(s: &str) -> Value {
    Value::Str(s.to_owned())
}

fn radix_value(digits: &str, radix: u32) -> Option<Value> {
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    Some(match i64::from_str_radix(digits, radix) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::Float(digits.chars().fold(0.0, |acc, c| {
            acc * f64::from(radix) + f64::from(c.to_digit(radix).unwrap_or(0))
        })),
    })
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the core schema's float
/// form without its sign. Rust's own float syntax is looser (`inf`, `NaN`,
/// `infinity`), so it cannot be the gatekeeper.
fn is_core_float(s: &str) -> bool {
    let b = s.as_bytes();
    let digits_from = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let int_end = digits_from(0);
    let mut i = int_end;
    let mut mantissa_digits = int_end;
    if i < b.len() && b[i] == b'.' {
        let frac_end = digits_from(i + 1);
        mantissa_digits += frac_end - (i + 1);
        i = frac_end;
    }
    if mantissa_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_end = digits_from(i);
        if exp_end == i {
            return false;
        }
        i = exp_end;
    }
    i == b.len()
}

/// `!!str` and the non-specific `!` both force a plain scalar to be a string.
fn forces_str(tag: Option<&Tag>) -> bool {
    tag.is_some_and(|t| {
        (t.is_yaml_core_schema() && t.suffix == "str") || (t.handle.is_empty() && t.suffix == "!")
    })
}

/// What a subtree costs once every alias in it is expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    nodes: usize,
    text_bytes: usize,
    /// Collection levels: 0 for a scalar, 1 for a flat list.
    height: usize,
}

impl Cost {
    fn add_child(&mut self, child: Cost) {
        self.nodes += child.nodes;
        self.text_bytes += child.text_bytes;
        self.height = self.height.max(child.height + 1);
    }
}

/// The document is first built as an arena in which an alias is just a
/// reference to its anchor's node. Expansion happens only at the end, after
/// every budget has been checked against the recorded costs, so an alias bomb
/// is refused without copying anything.
struct RawNode {
    pos: Pos,
    cost: Cost,
    kind: RawKind,
}

enum RawKind {
    /// The source text is kept rather than a typed value, because the same
    /// scalar may later be used (via an alias) as a key, which needs the text.
    Scalar {
        text: String,
        /// Typed by the core schema; otherwise (quoted, block, `!!str`) a string.
        plain: bool,
    },
    Seq(Vec<usize>),
    Map {
        entries: Vec<(Key, usize)>,
        merges: Vec<merge::Merge>,
    },
    Alias(usize),
}

struct Frame {
    pos: Pos,
    anchor: usize,
    cost: Cost,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<usize>),
    Map {
        entries: Vec<(Key, usize)>,
        first_seen: HashMap<String, Pos>,
        slot: KeySlot,
        merges: Vec<merge::Merge>,
    },
}

enum KeySlot {
    Expecting,
    Have(Key),
    /// A plain `<<` key: its value is merged into the mapping (YAML's merge key).
    Merge(Pos),
    /// The key was bad (already reported); its value is parsed but dropped.
    Skip,
}

struct Builder<'a> {
    text: &'a str,
    limits: &'a Limits,
    arena: Vec<RawNode>,
    /// saphyr anchor id -> arena index, filled only once the anchored node is
    /// complete; an alias to a registered-but-missing id is recursive.
    anchors: HashMap<usize, usize>,
    stack: Vec<Frame>,
    root: Option<usize>,
    total: Cost,
    documents: usize,
    errors: Vec<YamlError>,
}

impl<'a> Builder<'a> {
    fn new(text: &'a str, limits: &'a Limits) -> Self {
        Builder {
            text,
            limits,
            arena: Vec::new(),
            anchors: HashMap::new(),
            stack: Vec::new(),
            root: None,
            total: Cost::default(),
            documents: 0,
            errors: Vec::new(),
        }
    }

    /// `Err` is a fatal error that stops parsing.
    fn run(&mut self) -> Result<(), YamlError> {
        for item in Parser::new_from_str(self.text) {
            let (event, span) = item.map_err(|e| self.scan_error(&e))?;
            let pos = Pos::from_marker(&span.start);
            match event {
                Event::DocumentStart(_) => {
                    self.documents += 1;
                    if self.documents > 1 {
                        return Err(YamlError::new(
                            pos,
                            "a DAG file holds one YAML document; found a second one",
                        ));
                    }
                }
                Event::Scalar(text, style, anchor, tag) => {
                    self.charge(pos, 1, text.len(), false)?;
                    let plain = style == ScalarStyle::Plain && !forces_str(tag.as_deref());
                    let cost = Cost {
                        nodes: 1,
                        text_bytes: text.len(),
                        height: 0,
                    };
                    let kind = RawKind::Scalar {
                        text: text.into_owned(),
                        plain,
                    };
                    self.complete(RawNode { pos, cost, kind }, anchor);
                }
                Event::Alias(id) => self.alias(id, pos, span.start.index())?,
                Event::SequenceStart(anchor, _) => {
                    self.open(pos, anchor, FrameKind::Seq(vec![]))?
                }
                Event::MappingStart(anchor, _) => self.open(
                    pos,
                    anchor,
                    FrameKind::Map {
                        entries: Vec::new(),
                        first_seen: HashMap::new(),
                        slot: KeySlot::Expecting,
                        merges: Vec::new(),
                    },
                )?,
                Event::SequenceEnd | Event::MappingEnd => self.close(),
                Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
            }
        }
        Ok(())
    }

    fn scan_error(&self, e: &ScanError) -> YamlError {
        let pos = Pos::from_marker(e.marker());
        // saphyr's wording is about parser internals and omits the name.
        if e.info() == "while parsing node, found unknown anchor" {
            return YamlError::new(
                pos,
                self.describe_alias("unknown alias", e.marker().index()),
            );
        }
        YamlError::new(pos, format!("YAML syntax error: {}", e.info()))
    }

    /// Events carry only anchor ids, so the name is read back from the text.
    /// This walks the text, which is fine on the error path only.
    fn describe_alias(&self, what: &str, char_index: usize) -> String {
        let name = self
            .text
            .char_indices()
            .nth(char_index)
            .and_then(|(byte, _)| self.text[byte..].strip_prefix('*'))
            .map(|rest| {
                let end = rest
                    .find(|c: char| c.is_whitespace() || ",[]{}".contains(c))
                    .unwrap_or(rest.len());
                &rest[..end]
            });
        match name {
            Some(name) if !name.is_empty() => format!("{what} '*{name}'"),
            _ => what.to_owned(),
        }
    }

    fn charge(
        &mut self,
        pos: Pos,
        nodes: usize,
        text_bytes: usize,
        alias: bool,
    ) -> Result<(), YamlError> {
        let hint = if alias { " (alias expansion?)" } else { "" };
        self.total.nodes += nodes;
        if self.total.nodes > self.limits.max_nodes {
            return Err(YamlError::new(
                pos,
                format!(
                    "document expands to more than {} nodes{hint}",
                    self.limits.max_nodes
                ),
            ));
        }
        self.total.text_bytes += text_bytes;
        if self.total.text_bytes > self.limits.max_text_bytes {
            return Err(YamlError::new(
                pos,
                format!(
                    "document expands to more than {} bytes of text{hint}",
                    self.limits.max_text_bytes
                ),
            ));
        }
        Ok(())
    }

    fn depth_error(&self, pos: Pos) -> YamlError {
        YamlError::new(
            pos,
            format!("nesting deeper than {} levels", self.limits.max_depth),
        )
    }

    fn open(&mut self, pos: Pos, anchor: usize, kind: FrameKind) -> Result<(), YamlError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.depth_error(pos));
        }
        self.charge(pos, 1, 0, false)?;
        self.stack.push(Frame {
            pos,
            anchor,
            cost: Cost {
                nodes: 1,
                text_bytes: 0,
                height: 1,
            },
            kind,
        });
        Ok(())
    }

    fn close(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        let kind = match frame.kind {
            FrameKind::Seq(items) => RawKind::Seq(items),
            FrameKind::Map {
                entries, merges, ..
            } => RawKind::Map { entries, merges },
        };
        let node = RawNode {
            pos: frame.pos,
            cost: frame.cost,
            kind,
        };
        self.complete(node, frame.anchor);
    }

    fn alias(&mut self, id: usize, pos: Pos, char_index: usize) -> Result<(), YamlError> {
        let Some(&target) = self.anchors.get(&id) else {
            // saphyr registers an anchor when its node starts, so the alias
            // can only be to a node that is still open, i.e. contains it.
            return Err(YamlError::new(
                pos,
                self.describe_alias("alias", char_index) + " refers to a node that contains it",
            ));
        };
        let cost = self.arena[target].cost;
        if self.stack.len() + cost.height > self.limits.max_depth {
            return Err(self.depth_error(pos));
        }
        self.charge(pos, cost.nodes, cost.text_bytes, true)?;
        let node = RawNode {
            pos,
            cost,
            kind: RawKind::Alias(target),
        };
        self.complete(node, 0);
        Ok(())
    }

    /// The innermost collection is a mapping waiting for a key.
    fn expecting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame {
                kind: FrameKind::Map {
                    slot: KeySlot::Expecting,
                    ..
                },
                ..
            })
        )
    }

    /// Store a finished node and hand it to the enclosing collection.
    fn complete(&mut self, node: RawNode, anchor: usize) {
        let index = self.arena.len();
        let cost = node.cost;
        self.arena.push(node);
        if anchor != 0 {
            self.anchors.insert(anchor, index);
        }
        let wants_key = self.expecting_key();
        let key = if wants_key { self.key_of(index) } else { None };
        let merge_key = wants_key && self.is_merge_key(index);
        let merge_error = if self.merging() {
            self.merge_error(index)
        } else {
            None
        };
        let Some(frame) = self.stack.last_mut() else {
            self.root.get_or_insert(index);
            return;
        };
        frame.cost.add_child(cost);
        match &mut frame.kind {
            FrameKind::Seq(items) => items.push(index),
            FrameKind::Map {
                entries,
                first_seen,
                slot,
                merges,
            } => {
                *slot = match std::mem::replace(slot, KeySlot::Expecting) {
                    KeySlot::Expecting => match key {
                        None => KeySlot::Skip,
                        Some(key) => match first_seen.get(&key.name) {
                            Some(first) => {
                                self.errors.push(YamlError::new(
                                    key.pos,
                                    format!(
                                        "duplicate key '{}' (first at line {})",
                                        key.name, first.line
                                    ),
                                ));
                                KeySlot::Skip
                            }
                            None => {
                                first_seen.insert(key.name.clone(), key.pos);
                                if merge_key {
                                    KeySlot::Merge(key.pos)
                                } else {
                                    KeySlot::Have(key)
                                }
                            }
                        },
                    },
                    KeySlot::Have(key) => {
                        entries.push((key, index));
                        KeySlot::Expecting
                    }
                    KeySlot::Merge(pos) => {
                        match merge_error {
                            Some(message) => self.errors.push(YamlError::new(pos, message)),
                            None => merges.push(merge::Merge {
                                at: entries.len(),
                                value: index,
                            }),
                        }
                        KeySlot::Expecting
                    }
                    KeySlot::Skip => KeySlot::Expecting,
                };
            }
        }
    }

    /// The key for a node in key position, or `None` after reporting why it
    /// cannot be one.
    fn key_of(&mut self, index: usize) -> Option<Key> {
        let pos = self.arena[index].pos;
        let mut target = index;
        let kind_name = loop {
            match &self.arena[target].kind {
                RawKind::Alias(t) => target = *t,
                RawKind::Scalar { text, .. } => {
                    return Some(Key {
                        name: text.clone(),
                        pos,
                    });
                }
                RawKind::Seq(_) => break "list",
                RawKind::Map { .. } => break "mapping",
            }
        };
        self.errors.push(YamlError::new(
            pos,
            format!("a mapping key must be a plain value, not a {kind_name}"),
        ));
        None
    }

    fn finish(mut self) -> Result<Node, Vec<YamlError>> {
        if self.errors.is_empty() {
            if let Some(root) = self.root {
                let node = self.expand(root, self.arena[root].pos);
                if !node.is_null() {
                    return Ok(node);
                }
            }
            self.errors.push(YamlError::new(Pos::START, "empty file"));
        }
        self.errors.sort_by_key(|e| e.pos);
        Err(self.errors)
    }

    /// Recursion depth and total output size were bounded by the budgets
    /// checked while building the arena.
    fn expand(&self, index: usize, pos: Pos) -> Node {
        let raw = &self.arena[index];
        let value = match &raw.kind {
            RawKind::Scalar { text, plain: true } => plain_value(text),
            RawKind::Scalar { text, plain: false } => Value::Str(text.clone()),
            RawKind::Seq(items) => Value::Seq(
                items
                    .iter()
                    .map(|&i| self.expand(i, self.arena[i].pos))
                    .collect(),
            ),
            RawKind::Map { entries, merges } => Value::Map(self.expand_map(entries, merges)),
            // The copy's root sits where the alias is written; its insides
            // only exist in the text at the anchor, so they keep those places.
            RawKind::Alias(target) => return self.expand(*target, raw.pos),
        };
        Node { pos, value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Node {
        parse(text, &Limits::default()).unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
    }

    fn errs(text: &str) -> Vec<YamlError> {
        errs_with(text, &Limits::default())
    }

    fn errs_with(text: &str, limits: &Limits) -> Vec<YamlError> {
        match parse(text, limits) {
            Ok(node) => panic!("{text:?} parsed: {node:?}"),
            Err(e) => e,
        }
    }

    fn one_err(text: &str) -> YamlError {
        let mut e = errs(text);
        assert_eq!(e.len(), 1, "{e:?}");
        e.remove(0)
    }

    fn scalar(text: &str) -> Value {
        ok(&format!("v: {text}\n")).get("v").unwrap().value.clone()
    }

    fn p(line: usize, col: usize) -> Pos {
        Pos::new(line, col)
    }

    #[test]
    fn saphyr_marker_bases() {
        // Pins saphyr's convention that Pos::from_marker relies on.
        let events: Vec<_> = Parser::new_from_str("a: b\n")
            .map(|r| r.unwrap())
            .filter(|(e, _)| matches!(e, Event::Scalar(..)))
            .map(|(_, span)| (span.start.line(), span.start.col()))
            .collect();
        assert_eq!(events, vec![(1, 0), (1, 3)]);
    }

    #[test]
    fn block_positions() {
        let text = "\
name: demo
tasks:
  - id: extract
    retries: 3
    env:
      KEY: \"v\"
";
        let root = ok(text);
        assert_eq!(root.pos, p(1, 1));
        let (name_key, name) = root.entry("name").unwrap();
        assert_eq!(name_key.pos, p(1, 1));
        assert_eq!(name.pos, p(1, 7));
        let tasks = root.get("tasks").unwrap();
        assert_eq!(tasks.pos, p(3, 3));
        let task = &tasks.as_seq().unwrap()[0];
        assert_eq!(task.pos, p(3, 5));
        let (retries_key, retries) = task.entry("retries").unwrap();
        assert_eq!(retries_key.pos, p(4, 5));
        assert_eq!(retries.pos, p(4, 14));
        let (k, v) = task.get("env").unwrap().entry("KEY").unwrap();
        assert_eq!(k.pos, p(6, 7));
        assert_eq!(v.pos, p(6, 12));
        assert_eq!(v.as_str(), Some("v"));
    }

    #[test]
    fn flow_positions() {
        let root = ok("top: {a: [1, {bb: x}], 'c': \"y\"}\n");
        let top = root.get("top").unwrap();
        assert_eq!(top.pos, p(1, 6));
        let a = top.get("a").unwrap();
        assert_eq!(a.pos, p(1, 10));
        let inner = &a.as_seq().unwrap()[1];
        assert_eq!(inner.pos, p(1, 14));
        let (bb_key, bb) = inner.entry("bb").unwrap();
        assert_eq!(bb_key.pos, p(1, 15));
        assert_eq!(bb.pos, p(1, 19));
        let (c_key, c) = top.entry("c").unwrap();
        assert_eq!(c_key.pos, p(1, 24));
        assert_eq!(c.pos, p(1, 29));
    }

    #[test]
    fn columns_count_characters_and_ignore_bom() {
        let root = ok("\u{feff}é: ü\r\nk: v\r\n");
        let (k, v) = root.entry("é").unwrap();
        assert_eq!((k.pos, v.pos), (p(1, 1), p(1, 4)));
        assert_eq!(root.get("k").unwrap().pos, p(2, 4));
    }

    #[test]
    fn null_scalars() {
        for s in ["null", "Null", "NULL", "~", ""] {
            assert_eq!(scalar(s), Value::Null, "{s:?}");
        }
        assert_eq!(ok("a:\nb: 1\n").get("a").unwrap().value, Value::Null);
    }

    #[test]
    fn bool_scalars() {
        for s in ["true", "True", "TRUE"] {
            assert_eq!(scalar(s), Value::Bool(true), "{s}");
        }
        for s in ["false", "False", "FALSE"] {
            assert_eq!(scalar(s), Value::Bool(false), "{s}");
        }
        // YAML 1.1 booleans are plain strings in 1.2.
        for s in ["yes", "no", "on", "off", "tRUE"] {
            assert_eq!(scalar(s), Value::Str(s.into()), "{s}");
        }
    }

    #[test]
    fn int_scalars() {
        let cases = [
            ("0", 0),
            ("42", 42),
            ("-17", -17),
            ("+5", 5),
            ("007", 7),
            ("0x1F", 31),
            ("0xff", 255),
            ("0o17", 15),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for (s, want) in cases {
            assert_eq!(scalar(s), Value::Int(want), "{s}");
        }
    }

    #[test]
    fn int_overflow_becomes_float() {
        assert_eq!(
            scalar("9223372036854775808"),
            Value::Float(9_223_372_036_854_775_808.0)
        );
        assert_eq!(scalar("-99999999999999999999"), Value::Float(-1e20));
        assert_eq!(
            scalar("0x10000000000000000"),
            Value::Float(18_446_744_073_709_551_616.0)
        );
    }

    #[test]
    fn float_scalars() {
        let cases = [
            ("1.5", 1.5),
            ("-2e3", -2000.0),
            (".5", 0.5),
            ("1.", 1.0),
            ("+1.25E-2", 0.0125),
            ("6.02e+23", 6.02e23),
            (".inf", f64::INFINITY),
            ("+.Inf", f64::INFINITY),
            ("-.inf", f64::NEG_INFINITY),
        ];
        for (s, want) in cases {
            assert_eq!(scalar(s), Value::Float(want), "{s}");
        }
        for s in [".nan", ".NaN", ".NAN"] {
            assert!(matches!(scalar(s), Value::Float(f) if f.is_nan()), "{s}");
        }
    }

    #[test]
    fn non_numbers_stay_strings() {
        for s in [
            "2026-01-01",
            "1_000",
            "0x",
            "0xg1",
            "-0x10",
            "0b101",
            "1e",
            ".",
            "-.",
            "e5",
            "inf",
            "nan",
            "1.2.3",
            "12:30",
            "v1",
        ] {
            assert_eq!(scalar(s), Value::Str(s.into()), "{s}");
        }
    }

    #[test]
    fn quoted_and_block_scalars_are_strings() {
        let root = ok("a: '1'\nb: \"true\"\nc: \"null\"\nd: |\n  42\ne: >\n  1.5\nf: ''\n");
        let want = [
            ("a", "1"),
            ("b", "true"),
            ("c", "null"),
            ("d", "42\n"),
            ("e", "1.5\n"),
            ("f", ""),
        ];
        for (k, v) in want {
            assert_eq!(root.get(k).unwrap().value, Value::Str(v.into()), "{k}");
        }
    }

    #[test]
    fn str_tag_forces_string() {
        let root = ok("a: !!str 5\nb: !!str\nc: ! true\nd: !custom 7\n");
        assert_eq!(root.get("a").unwrap().value, Value::Str("5".into()));
        assert_eq!(root.get("b").unwrap().value, Value::Str(String::new()));
        assert_eq!(root.get("c").unwrap().value, Value::Str("true".into()));
        assert_eq!(root.get("d").unwrap().value, Value::Int(7));
    }

    #[test]
    fn keys_keep_their_text() {
        let root = ok("1: a\ntrue: b\n'x y': c\n'<<': d\n");
        let names: Vec<_> = root
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| k.name.as_str())
            .collect();
        assert_eq!(names, ["1", "true", "x y", "<<"]);
    }

    #[test]
    fn duplicate_keys_all_reported() {
        let text = "\
dag: x
tasks:
  - id: a
    retries: 1
    retries: 2
dag: y
";
        let e = errs(text);
        assert_eq!(
            e,
            vec![
                YamlError::new(p(5, 5), "duplicate key 'retries' (first at line 4)"),
                YamlError::new(p(6, 1), "duplicate key 'dag' (first at line 1)"),
            ]
        );
        assert_eq!(
            e[0].to_string(),
            "duplicate key 'retries' (first at line 4)"
        );
    }

    #[test]
    fn duplicate_keys_in_flow_mapping() {
        let e = one_err("{a: 1, b: 2, a: 3}");
        assert_eq!(e.pos, p(1, 14));
        assert_eq!(e.message, "duplicate key 'a' (first at line 1)");
    }

    #[test]
    fn non_scalar_key_is_an_error() {
        let e = one_err("? [a, b]\n: 1\nok: 2\n");
        assert_eq!(e.pos, p(1, 3));
        assert_eq!(e.message, "a mapping key must be a plain value, not a list");
    }

    #[test]
    fn aliases_expand_to_copies() {
        let text = "\
defaults: &defaults
  retries: 3
  tags: [a, b]
one: *defaults
two:
  - *defaults
name: &n hello
*n : aliased key
";
        let root = ok(text);
        let defaults = root.get("defaults").unwrap();
        let one = root.get("one").unwrap();
        assert_eq!(one.value, defaults.value);
        // The copy's root is where the alias is written; its insides point
        // at the anchored text.
        assert_eq!(one.pos, p(4, 6));
        assert_eq!(one.get("retries").unwrap().pos, p(2, 12));
        let two = &root.get("two").unwrap().as_seq().unwrap()[0];
        assert_eq!(two.value, defaults.value);
        assert_eq!(two.pos, p(6, 5));
        let (k, v) = root.entry("hello").unwrap();
        assert_eq!(k.pos, p(8, 1));
        assert_eq!(v.as_str(), Some("aliased key"));
        assert_eq!(
            root.to_json()["one"],
            serde_json::json!({"retries": 3, "tags": ["a", "b"]})
        );
    }

    #[test]
    fn merge_key_joins_mappings_and_own_keys_win() {
        let text = "\
base: &base
  retries: 2
  pool: etl
task:
  <<: *base
  retries: 5
";
        let root = ok(text);
        let task = root.get("task").unwrap();
        let names: Vec<_> = task
            .as_map()
            .unwrap()
            .iter()
            .map(|(k, _)| &k.name)
            .collect();
        assert_eq!(names, ["pool", "retries"]);
        assert_eq!(task.get("retries").unwrap().value, Value::Int(5));
        // A merged key points at the text it was copied from.
        assert_eq!(task.entry("pool").unwrap().0.pos, p(3, 3));
    }

    #[test]
    fn merge_list_earlier_mapping_wins() {
        let text =
            "a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  w: 0\nd: {<<: {q: 1}}\n";
        let root = ok(text);
        assert_eq!(
            root.get("c").unwrap().to_json(),
            serde_json::json!({"x": 1, "y": 1, "z": 2, "w": 0})
        );
        assert_eq!(
            root.get("d").unwrap().to_json(),
            serde_json::json!({"q": 1})
        );
    }

    #[test]
    fn merge_of_a_non_mapping_is_an_error() {
        let e = one_err("a: 1\nb:\n  <<: 3\n");
        assert_eq!(e.pos, p(3, 3));
        assert_eq!(
            e.message,
            "'<<' merges a mapping or a list of mappings, not a scalar"
        );
        let e = one_err("a: &a {x: 1}\nb:\n  <<: [*a, [1]]\n");
        assert_eq!(
            e.message,
            "'<<' merges a mapping or a list of mappings; item 2 is a list"
        );
        let e = one_err("a: &a {x: 1}\nb:\n  <<: *a\n  <<: *a\n");
        assert_eq!(e.message, "duplicate key '<<' (first at line 3)");
    }

    #[test]
    fn merge_bomb_is_still_bounded() {
        let mut text = String::from("a0: &a0 {k: v}\n");
        for i in 1..40 {
            text.push_str(&format!(
                "a{i}: &a{i}\n  <<: [*a{p}, *a{p}]\n  k{i}: [*a{p}, *a{p}]\n",
                p = i - 1
            ));
        }
        let e = errs(&text);
        assert!(e[0].message.contains("alias expansion"), "{e:?}");
    }

    #[test]
    fn redefined_anchor_uses_latest() {
        let root = ok("a: &x 1\nb: *x\nc: &x 2\nd: *x\n");
        assert_eq!(root.get("b").unwrap().value, Value::Int(1));
        assert_eq!(root.get("d").unwrap().value, Value::Int(2));
    }

    #[test]
    fn unknown_alias() {
        let e = one_err("a: 1\nb: *nope\n");
        assert_eq!(e.pos, p(2, 4));
        assert_eq!(e.message, "unknown alias '*nope'");
    }

    #[test]
    fn recursive_alias() {
        let e = one_err("a: &x [1, *x]\n");
        assert_eq!(e.pos, p(1, 11));
        assert_eq!(e.message, "alias '*x' refers to a node that contains it");
    }

    fn billion_laughs() -> String {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 9].join(",");
            text.push_str(&format!("{n}: &{n} [{refs}]\n", n = w[1]));
        }
        text
    }

    #[test]
    fn billion_laughs_rejected() {
        let text = billion_laughs();
        let e = errs(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].message,
            "document expands to more than 200000 nodes (alias expansion?)"
        );
        // b=91, c=820, d=7381, e=66430 nodes; the third *e in f overflows.
        assert_eq!(e[0].pos.line, 6);
    }

    #[test]
    fn alias_text_budget() {
        let big = "x".repeat(1000);
        let text = format!("a: &a {big}\nb: [{}]\n", vec!["*a"; 50].join(", "));
        let limits = Limits {
            max_text_bytes: 20_000,
            ..Limits::default()
        };
        let e = errs_with(&text, &limits);
        assert_eq!(
            e[0].message,
            "document expands to more than 20000 bytes of text (alias expansion?)"
        );
        assert_eq!(e[0].pos.line, 2);
    }

    #[test]
    fn node_limit_without_aliases() {
        let limits = Limits {
            max_nodes: 10,
            ..Limits::default()
        };
        let e = errs_with("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]", &limits);
        assert_eq!(e[0].message, "document expands to more than 10 nodes");
        assert_eq!(e[0].pos, p(1, 29));
    }

    #[test]
    fn depth_limit() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        assert!(parse("a: {b: [1]}", &limits).is_ok());
        let e = errs_with("a: {b: [[1]]}", &limits);
        assert_eq!(
            e,
            vec![YamlError::new(p(1, 9), "nesting deeper than 3 levels")]
        );

        let e = errs(&"[".repeat(200));
        assert_eq!(
            e,
            vec![YamlError::new(p(1, 65), "nesting deeper than 64 levels")]
        );
        let e = errs(&"- ".repeat(1_000_000));
        assert_eq!(
            e,
            vec![YamlError::new(p(1, 129), "nesting deeper than 64 levels")]
        );
        // saphyr's scanner caps flow nesting at 255 itself while looking
        // ahead, before any event reaches us; either way it ends quickly.
        let e = errs(&"[".repeat(1_000_000));
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn depth_limit_counts_alias_expansion() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let e = errs_with("a: &x [[1]]\nb: [*x]\n", &limits);
        assert_eq!(
            e,
            vec![YamlError::new(p(2, 5), "nesting deeper than 3 levels")]
        );
    }

    #[test]
    fn size_limit() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(parse("a: 1234567", &limits).is_ok());
        // Not even valid YAML: the size check comes before parsing.
        let e = errs_with("a: [[[[ 12345", &limits);
        assert_eq!(
            e,
            vec![YamlError::new(p(1, 1), "file is larger than 10 bytes")]
        );
    }

    #[test]
    fn multiple_documents() {
        let e = one_err("a: 1\n---\nb: 2\n");
        assert_eq!(e.pos, p(2, 1));
        assert_eq!(
            e.message,
            "a DAG file holds one YAML document; found a second one"
        );
        let e = one_err("a: 1\n...\nb: 2\n");
        assert_eq!(e.pos, p(3, 1));
        // A leading marker or a trailing end marker is still one document.
        assert_eq!(
            ok("---\na: 1\n...\n").get("a").unwrap().value,
            Value::Int(1)
        );
    }

    #[test]
    fn empty_file() {
        for text in ["", "\n\n", "# just a comment\n", "---\n", "~\n", "null"] {
            assert_eq!(
                errs(text),
                vec![YamlError::new(p(1, 1), "empty file")],
                "{text:?}"
            );
        }
    }

    #[test]
    fn syntax_error_position() {
        let e = one_err("a: 1\nb: [1, 2\n");
        assert_eq!(e.pos, p(3, 1));
        assert_eq!(
            e.message,
            "YAML syntax error: while parsing a flow sequence, expected ',' or ']'"
        );
        let e = one_err("a: b: c\n");
        assert_eq!(e.pos, p(1, 5));
        assert_eq!(
            e.message,
            "YAML syntax error: mapping values are not allowed in this context"
        );
    }

    #[test]
    fn errors_before_a_syntax_error_are_kept() {
        let e = errs("a: 1\na: 2\nb: [\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].message, "duplicate key 'a' (first at line 1)");
        assert!(e[1].message.starts_with("YAML syntax error: "));
    }

    #[test]
    fn scalar_root_is_allowed() {
        assert_eq!(ok("hello").value, Value::Str("hello".into()));
    }

    #[test]
    fn to_json() {
        let root = ok("\
s: text
i: 7
big: 9223372036854775808
f: 1.5
inf: .inf
nan: .nan
b: false
n: ~
l: [1, '2', {x: y}]
z_last: 0
a_first: 0
");
        let want = serde_json::json!({
            "s": "text",
            "i": 7,
            "big": 9_223_372_036_854_775_808.0,
            "f": 1.5,
            "inf": null,
            "nan": null,
            "b": false,
            "n": null,
            "l": [1, "2", {"x": "y"}],
            "z_last": 0,
            "a_first": 0,
        });
        let got = root.to_json();
        assert_eq!(got, want);
        assert!(got["i"].is_i64());
        let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.last().map(String::as_str), Some("a_first"));
    }

    #[test]
    fn type_names() {
        let root = ok("[~, true, 1, 1.5, s, [], {}]");
        let names: Vec<_> = root.as_seq().unwrap().iter().map(Node::type_name).collect();
        assert_eq!(
            names,
            [
                "null", "boolean", "integer", "number", "string", "list", "mapping"
            ]
        );
        assert_eq!(root.type_name(), "list");
    }
}

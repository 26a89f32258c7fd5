//! A YAML document as a tree where every node knows its line.
//!
//! serde stops at the first field it cannot deserialize; an answers file must report every
//! problem at once, each with its line. So the file is first read into this loose tree
//! (only YAML syntax errors stop here), and `answers` then checks every key and value.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line of the node in the file (0 if unknown).
    pub line: u64,
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
    /// Keys in file order, each with its own line.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// How the type is named in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The key as text (keys are scalars in every file we read).
    pub fn key_text(&self) -> String {
        match &self.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Null => "~".into(),
            other => format!("<{}>", other.type_name()),
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    pub line: u64,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node { line: 1, value: Value::Null });
    }
    let spanned: Spanned<Value> = serde_saphyr::from_str(text).map_err(|e| SyntaxError {
        line: e.location().map(|l| l.line()).unwrap_or(0),
        // The crate's message may carry a rendered snippet; the first line is the message.
        message: e.to_string().lines().next().unwrap_or("invalid YAML").to_owned(),
    })?;
    Ok(Node { line: spanned.referenced.line(), value: spanned.value })
}

fn node(s: Spanned<Value>) -> Node {
    Node { line: s.referenced.line(), value: s.value }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v).map(Value::Int).or(Ok(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Value>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            entries.push((node(key), node(value)));
        }
        Ok(Value::Map(entries))
    }
}

/// A YAML string literal that reads back as exactly `s` (JSON strings are YAML).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_has_its_line() {
        let n = parse("a: 1\nb:\n  - x\n  - true\nc: {d: \"7\"}\n").unwrap();
        let Value::Map(entries) = n.value else { panic!() };
        assert_eq!(entries[0].0.key_text(), "a");
        assert_eq!(entries[0].1, Node { line: 1, value: Value::Int(1) });
        let Value::Seq(items) = &entries[1].1.value else { panic!() };
        assert_eq!(items[0], Node { line: 3, value: Value::Str("x".into()) });
        assert_eq!(items[1], Node { line: 4, value: Value::Bool(true) });
        assert_eq!(entries[2].0.line, 5);
        let Value::Map(inner) = &entries[2].1.value else { panic!() };
        assert_eq!(inner[0].1.value, Value::Str("7".into()));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
    }

    #[test]
    fn quoted_strings_read_back() {
        let s = "it's \"quoted\": yes # no";
        let n = parse(&format!("k: {}\n", quote(s))).unwrap();
        let Value::Map(e) = n.value else { panic!() };
        assert_eq!(e[0].1.value, Value::Str(s.into()));
    }
}

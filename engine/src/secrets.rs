//! Secrets and the masker that keeps their values out of everything flow writes.
//!
//! The only source today is the environment (`FLOW_SECRET_NAME`). Every log line, output, error
//! message and rendered value passes through [`Masker::mask`] before it is stored or shown.

use std::collections::BTreeMap;
use std::sync::Arc;

pub const ENV_PREFIX: &str = "FLOW_SECRET_";
pub const MASK: &str = "***";

#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Arc<BTreeMap<String, String>>,
}

impl Secrets {
    pub fn from_env() -> Secrets {
        Secrets::from_pairs(std::env::vars().filter_map(|(k, v)| {
            k.strip_prefix(ENV_PREFIX)
                .filter(|name| !name.is_empty())
                .map(|name| (name.to_string(), v))
        }))
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets {
            values: Arc::new(pairs.into_iter().collect()),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values().cloned())
    }

    /// Name -> value, as templates see them under `secrets`.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect()
    }
}

/// Replaces every occurrence of a secret value with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    // Longest first, so that a secret containing another is masked whole.
    values: Arc<Vec<String>>,
}

impl Masker {
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Masker {
            values: Arc::new(values),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in self.values.iter() {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }

    /// Masks every string (and object key) inside a JSON value.
    pub fn mask_json(&self, value: &mut serde_json::Value) {
        if self.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(s) => *s = self.mask(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.mask_json(v)),
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (k, mut v) in entries {
                    self.mask_json(&mut v);
                    map.insert(self.mask(&k), v);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_secret_first_and_inside_json() {
        let m = Masker::new(["hunter2".to_string(), "hunter2-extra".to_string()]);
        assert_eq!(m.mask("a hunter2-extra b hunter2"), "a *** b ***");
        let mut v = serde_json::json!({"k": ["x hunter2 y"], "hunter2": 1});
        m.mask_json(&mut v);
        assert_eq!(v, serde_json::json!({"k": ["x *** y"], "***": 1}));
    }

    #[test]
    fn reads_prefixed_names() {
        let s = Secrets::from_pairs([("TOKEN".to_string(), "abc".to_string())]);
        assert_eq!(s.get("TOKEN"), Some("abc"));
        assert_eq!(s.masker().mask("xabcx"), "x***x");
    }
}

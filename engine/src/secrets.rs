//! Secrets and the masker that keeps their values out of everything flow writes.
//!
//! The only source today is the environment (`FLOW_SECRET_NAME`). Every log line, output, error
//! message and rendered value passes through [`Masker::mask`] before it is stored or shown.
//! Beside the secrets, the masker hides values that are not templates' to read but must never be
//! shown either ([`Secrets::hiding`]: the database URL's password, passwords written in
//! `flow.toml`). A secret of several lines (a PEM key, JSON credentials) is also masked line by
//! line, since logs are written a line at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const ENV_PREFIX: &str = "FLOW_SECRET_";
pub(crate) const MASK: &str = "***";

/// The shortest line of a multi-line secret masked on its own: shorter ones (`{`, `}`,
/// `-----END`) would mask ordinary text everywhere.
pub(crate) const MIN_LINE_MASKED: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Arc<BTreeMap<String, String>>,
    /// Masked, but not secrets a template may read.
    hidden: Arc<Vec<String>>,
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
            hidden: Arc::default(),
        }
    }

    /// These values are masked wherever a secret is, and are not readable as `secrets.*`.
    pub fn hiding(mut self, values: impl IntoIterator<Item = String>) -> Secrets {
        let mut hidden = self.hidden.as_ref().clone();
        hidden.extend(values.into_iter().filter(|v| !v.is_empty()));
        self.hidden = Arc::new(hidden);
        self
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    pub fn masker(&self) -> Masker {
        Masker::new(self.values.values().chain(self.hidden.iter()).cloned())
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
        let mut values: Vec<String> = values
            .into_iter()
            .flat_map(|v| {
                let lines: Vec<String> = if v.contains('\n') {
                    v.lines()
                        .map(str::trim)
                        .filter(|l| l.chars().count() >= MIN_LINE_MASKED)
                        .map(str::to_string)
                        .collect()
                } else {
                    Vec::new()
                };
                std::iter::once(v).chain(lines)
            })
            .filter(|v| !v.is_empty())
            .collect();
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
    fn a_multi_line_secret_is_masked_whole_and_line_by_line() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n  abc\n}\n-----END PRIVATE KEY-----\n";
        let m = Secrets::from_pairs([("KEY".to_string(), pem.to_string())]).masker();
        assert_eq!(m.mask(&format!("key: {pem}")), "key: ***");
        // A log is written a line at a time; each long line of the key is masked on its own.
        assert_eq!(
            m.mask("line MIIEvQIBADANBgkqhkiG9w0BAQEFAASC end"),
            "line *** end"
        );
        assert_eq!(m.mask("-----END PRIVATE KEY-----"), "***");
        // Short lines are not: they would mask ordinary text.
        assert_eq!(m.mask("abc } x"), "abc } x");
    }

    #[test]
    fn hidden_values_are_masked_but_not_readable() {
        let s = Secrets::from_pairs([("A".to_string(), "alpha-1".to_string())])
            .hiding(["db-password".to_string(), String::new()]);
        assert_eq!(s.masker().mask("alpha-1 db-password"), "*** ***");
        assert!(s.get("db-password").is_none());
        assert_eq!(s.to_json().len(), 1);
    }

    #[test]
    fn reads_prefixed_names() {
        let s = Secrets::from_pairs([("TOKEN".to_string(), "abc".to_string())]);
        assert_eq!(s.get("TOKEN"), Some("abc"));
        assert_eq!(s.masker().mask("xabcx"), "x***x");
    }
}

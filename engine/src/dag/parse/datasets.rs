//! `schedule:` as a mapping (`{ cron, datasets, mode }`) and a task's `produces:`.

use std::collections::BTreeSet;

use super::{Cx, ScheduleKey};
use crate::dag::{DatasetMode, DatasetRef, DatasetSchedule, uri_problem};
use crate::yaml::{Node, Value};

const SCHEDULE_KEYS: &[&str] = &["cron", "datasets", "mode"];
const DATASET_KEYS: &[&str] = &["uri", "external"];

impl Cx {
    /// `schedule: { cron: ..., datasets: [...], mode: any|all }`.
    pub(super) fn schedule_map(&mut self, n: &Node) -> ScheduleKey {
        let Some(entries) = self.map(n, "'schedule'") else {
            return ScheduleKey::default();
        };
        self.unknown_keys(entries, &[SCHEDULE_KEYS], "'schedule'");
        let mut key = match n.get("cron") {
            Some(c) if !c.is_null() => self.cron(c, "cron"),
            _ => ScheduleKey::default(),
        };
        let mode = match n.get("mode") {
            None => DatasetMode::Any,
            Some(m) => match self.string(m, "mode").as_deref() {
                Some("any") => DatasetMode::Any,
                Some("all") => DatasetMode::All,
                Some(other) => {
                    self.problem(
                        m.pos,
                        format!("unknown mode '{other}' (expected any or all)"),
                    );
                    DatasetMode::Any
                }
                None => DatasetMode::Any,
            },
        };
        match n.get("datasets") {
            Some(d) => {
                let datasets = self.dataset_refs(d);
                if !datasets.is_empty() {
                    key.datasets = Some(DatasetSchedule { datasets, mode });
                }
            }
            None => self.problem(
                n.pos,
                "'schedule' as a mapping needs 'datasets' (a cron alone is written \
                 schedule: \"0 3 * * *\")",
            ),
        }
        key
    }

    fn dataset_refs(&mut self, d: &Node) -> Vec<DatasetRef> {
        let Value::Seq(items) = &d.value else {
            self.problem(
                d.pos,
                format!("'datasets' must be a list, found {}", d.type_name()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.problem(d.pos, "'datasets' is empty: name at least one dataset URI");
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for item in items {
            let Some(r) = self.dataset_ref(item) else {
                continue;
            };
            if !seen.insert(r.uri.clone()) {
                self.problem(item.pos, format!("dataset '{}' is listed twice", r.uri));
                continue;
            }
            out.push(r);
        }
        out
    }

    /// A dataset URI, or `{ uri: ..., external: true }`.
    fn dataset_ref(&mut self, item: &Node) -> Option<DatasetRef> {
        let (uri_node, external) = match &item.value {
            Value::Map(fields) => {
                self.unknown_keys(fields, &[DATASET_KEYS], "a dataset");
                let external = item
                    .get("external")
                    .and_then(|e| self.boolean(e, "external"))
                    .unwrap_or(false);
                let Some(uri) = item.get("uri") else {
                    self.problem(item.pos, "a dataset mapping needs 'uri'");
                    return None;
                };
                (uri, external)
            }
            _ => (item, false),
        };
        let uri = self.string(uri_node, "datasets")?;
        if let Some(message) = uri_problem(&uri) {
            self.problem(uri_node.pos, message);
            return None;
        }
        Some(DatasetRef {
            uri,
            external,
            pos: uri_node.pos,
        })
    }

    /// A task's `produces:` list of dataset URIs.
    pub(super) fn produces(&mut self, n: &Node) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (uri, pos) in self.string_list(n, "produces") {
            match uri_problem(&uri) {
                Some(message) => self.problem(pos, message),
                None if out.contains(&uri) => {
                    self.problem(pos, format!("dataset '{uri}' is listed twice"))
                }
                None => out.push(uri),
            }
        }
        out
    }
}

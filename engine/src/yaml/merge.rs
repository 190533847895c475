//! YAML's merge key (`<<: *base`, `<<: [*a, *b]`): the merged mappings' entries join the
//! mapping, and a key written in the mapping itself wins over a merged one, as in YAML 1.1's
//! merge type that PyYAML, Ruby and docker-compose files rely on.
//!
//! Only a plain `<<` merges; a quoted `'<<'` stays an ordinary key. The merged values are
//! aliases (or inline mappings) whose cost was charged when they were read, so merging cannot
//! grow the tree past the limits.

use std::collections::HashSet;

use super::{Builder, Key, Node, RawKind, Value};

/// A `<<` entry of a mapping: where it was written among the mapping's own entries, and the
/// arena node it merges.
pub(super) struct Merge {
    pub(super) at: usize,
    pub(super) value: usize,
}

impl Builder<'_> {
    fn resolve(&self, mut index: usize) -> usize {
        while let RawKind::Alias(target) = self.arena[index].kind {
            index = target;
        }
        index
    }

    fn kind_name(&self, index: usize) -> &'static str {
        match &self.arena[self.resolve(index)].kind {
            RawKind::Scalar { .. } | RawKind::Alias(_) => "scalar",
            RawKind::Seq(_) => "list",
            RawKind::Map { .. } => "mapping",
        }
    }

    /// The innermost mapping is waiting for the value of a `<<` key.
    pub(super) fn merging(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(super::Frame {
                kind: super::FrameKind::Map {
                    slot: super::KeySlot::Merge(_),
                    ..
                },
                ..
            })
        )
    }

    pub(super) fn is_merge_key(&self, index: usize) -> bool {
        matches!(&self.arena[index].kind, RawKind::Scalar { text, plain: true } if text == "<<")
    }

    /// Why the value of a `<<` key cannot be merged, if it cannot.
    pub(super) fn merge_error(&self, index: usize) -> Option<String> {
        const WANTS: &str = "'<<' merges a mapping or a list of mappings";
        match &self.arena[self.resolve(index)].kind {
            RawKind::Map { .. } => None,
            RawKind::Seq(items) => items
                .iter()
                .position(|&i| self.kind_name(i) != "mapping")
                .map(|n| format!("{WANTS}; item {} is a {}", n + 1, self.kind_name(items[n]))),
            _ => Some(format!("{WANTS}, not a {}", self.kind_name(index))),
        }
    }

    /// A mapping's entries with its merges spliced in where each `<<` was written.
    pub(super) fn expand_map(
        &self,
        entries: &[(Key, usize)],
        merges: &[Merge],
    ) -> Vec<(Key, Node)> {
        let own = entries
            .iter()
            .map(|(k, i)| (k.clone(), self.expand(*i, self.arena[*i].pos)));
        if merges.is_empty() {
            return own.collect();
        }
        let mut taken: HashSet<String> = entries.iter().map(|(k, _)| k.name.clone()).collect();
        let mut out = Vec::with_capacity(entries.len());
        let mut pending = merges.iter().peekable();
        for (n, entry) in own.enumerate() {
            while let Some(m) = pending.next_if(|m| m.at == n) {
                self.merge_into(m.value, &mut taken, &mut out);
            }
            out.push(entry);
        }
        for m in pending {
            self.merge_into(m.value, &mut taken, &mut out);
        }
        out
    }

    /// Earlier entries win: the mapping's own keys, then earlier merges, then earlier items of
    /// a merged list.
    fn merge_into(&self, value: usize, taken: &mut HashSet<String>, out: &mut Vec<(Key, Node)>) {
        let sources = match &self.arena[self.resolve(value)].kind {
            RawKind::Seq(items) => items.clone(),
            _ => vec![value],
        };
        for source in sources {
            let node = self.expand(source, self.arena[source].pos);
            let Value::Map(merged) = node.value else {
                continue;
            };
            for (k, v) in merged {
                if taken.insert(k.name.clone()) {
                    out.push((k, v));
                }
            }
        }
    }
}

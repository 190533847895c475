//! The `tasks` map of a DAG file: each task's operator and keys, its policy, `depends_on`,
//! `when` and `for_each`, then the order that puts every upstream first.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value as Json;

use super::{Cx, POLICY_KEYS, Policy, TASK_KEYS, did_you_mean, is_extension, is_id};
use crate::dag::{ForEach, Task};
use crate::keys::{Catalog, OperatorKeys};
use crate::yaml::{Key, Node, Pos, Value};

impl Cx {
    pub(super) fn tasks(
        &mut self,
        node: &Node,
        catalog: &dyn Catalog,
        defaults: &Policy,
    ) -> Vec<(Task, Pos)> {
        let Some(entries) = self.map(node, "'tasks'") else {
            return Vec::new();
        };
        let entries: Vec<(Key, Node)> = entries
            .iter()
            .filter(|(k, _)| !is_extension(&k.name))
            .cloned()
            .collect();
        let entries = entries.as_slice();
        if entries.is_empty() {
            self.problem(node.pos, "'tasks' is empty: a DAG needs at least one task");
        }
        let mut out = Vec::new();
        for (k, n) in entries {
            if let Some(task) = self.task(k, n, entries, catalog, defaults) {
                out.push((task, k.pos));
            }
        }
        out
    }

    /// One task; None when it has a problem that leaves no task to check further (no operator,
    /// not a map). `siblings` are every task of the DAG, for `depends_on`.
    fn task(
        &mut self,
        k: &Key,
        n: &Node,
        siblings: &[(Key, Node)],
        catalog: &dyn Catalog,
        defaults: &Policy,
    ) -> Option<Task> {
        if !is_id(&k.name) {
            self.problem(
                k.pos,
                format!(
                    "task id '{}' may only hold lowercase letters, digits and '_'",
                    k.name
                ),
            );
        }
        let fields = self.map(n, &format!("task '{}'", k.name))?;
        let operator = self.operator(k, n, catalog);
        let config = match operator.as_deref().and_then(|o| catalog.keys(o)) {
            Some(keys) => self.task_config(k, n, fields, &keys, operator.as_deref().unwrap_or("")),
            None => serde_json::Map::new(),
        };
        let policy = self.policy(n, defaults);
        let depends_on: Vec<(String, Pos)> = n
            .get("depends_on")
            .map(|d| self.string_list(d, "depends_on"))
            .unwrap_or_default();
        let when = n.get("when").and_then(|w| match &w.value {
            // `when: false` written plainly is as clear as the template form.
            Value::Bool(b) => Some(b.to_string()),
            _ => self.string(w, "when"),
        });
        let for_each = n.get("for_each").and_then(|f| self.for_each(f));
        let produces = n
            .get("produces")
            .map(|p| self.produces(p))
            .unwrap_or_default();
        // Text search over-approximates (a literal mention also counts): a false positive costs
        // one query per try, a miss would render an empty list.
        let mentions = |t: &str| t.contains("triggering_events");
        let reads_triggering_events = mentions(&Json::Object(config.clone()).to_string())
            || when.as_deref().is_some_and(mentions)
            || matches!(&for_each, Some(ForEach::Template(t)) if mentions(t));
        self.check_depends_on(k, &depends_on, siblings);
        Some(Task {
            id: k.name.clone(),
            operator: operator?,
            output_reads: crate::dag::OutputReads::of(&config),
            secret_reads: crate::dag::secret_reads(&config),
            config,
            depends_on: depends_on.into_iter().map(|(d, _)| d).collect(),
            trigger_rule: policy.trigger_rule,
            when,
            retry: policy.retry,
            timeout: policy.timeout,
            pool: policy.pool,
            queue: policy.queue,
            priority: policy.priority,
            for_each,
            sla: policy.sla,
            on_failure: policy.on_failure,
            on_retry: policy.on_retry,
            produces,
            reads_triggering_events,
        })
    }

    /// The task's `operator`, when the catalog knows it.
    fn operator(&mut self, k: &Key, n: &Node, catalog: &dyn Catalog) -> Option<String> {
        let Some(o) = n.get("operator") else {
            self.problem(
                k.pos,
                format!("task '{}' is missing required key 'operator'", k.name),
            );
            return None;
        };
        let name = self.string(o, "operator")?;
        if catalog.keys(&name).is_some() {
            return Some(name);
        }
        let hint = did_you_mean(&name, catalog.names());
        self.problem(o.pos, format!("unknown operator '{name}'{hint}"));
        None
    }

    /// The operator's keys of a task, as JSON; unknown and missing keys are problems.
    fn task_config(
        &mut self,
        k: &Key,
        n: &Node,
        fields: &[(Key, Node)],
        keys: &OperatorKeys,
        operator: &str,
    ) -> serde_json::Map<String, Json> {
        self.unknown_keys(
            fields,
            &[TASK_KEYS, POLICY_KEYS, keys.required, keys.optional],
            &format!("task '{}'", k.name),
        );
        for req in keys.required {
            if n.get(req).is_none() {
                self.problem(
                    k.pos,
                    format!(
                        "task '{}' (operator {operator}) is missing required key '{req}'",
                        k.name
                    ),
                );
            }
        }
        let mut config = serde_json::Map::new();
        for (fk, fv) in fields {
            if keys.required.contains(&fk.name.as_str())
                || keys.optional.contains(&fk.name.as_str())
            {
                config.insert(fk.name.clone(), fv.to_json());
                self.check_connections(&fk.name, fv);
            }
        }
        config
    }

    fn for_each(&mut self, f: &Node) -> Option<ForEach> {
        match &f.value {
            Value::Seq(_) => match f.to_json() {
                Json::Array(items) => Some(ForEach::Items(items)),
                _ => None,
            },
            Value::Str(s) => Some(ForEach::Template(s.clone())),
            _ => {
                self.problem(
                    f.pos,
                    format!(
                        "'for_each' must be a list or a template that renders to a JSON list, found {}",
                        f.type_name()
                    ),
                );
                None
            }
        }
    }

    fn check_depends_on(
        &mut self,
        k: &Key,
        depends_on: &[(String, Pos)],
        siblings: &[(Key, Node)],
    ) {
        let mut seen = BTreeSet::new();
        for (d, pos) in depends_on {
            if !seen.insert(d.clone()) {
                self.problem(
                    *pos,
                    format!("task '{}' lists '{d}' twice in depends_on", k.name),
                );
            }
            if d == &k.name {
                self.problem(*pos, format!("task '{}' depends on itself", k.name));
            } else if !siblings.iter().any(|(other, _)| &other.name == d) {
                let hint = did_you_mean(d, siblings.iter().map(|(o, _)| o.name.as_str()));
                self.problem(
                    *pos,
                    format!("task '{}' depends on unknown task '{d}'{hint}", k.name),
                );
            }
        }
    }

    /// Orders tasks so that upstreams come first; reports each cycle in full.
    pub(super) fn order(
        &mut self,
        tasks: Vec<(Task, Pos)>,
        positions: &HashMap<String, Pos>,
    ) -> Option<Vec<Task>> {
        use petgraph::graphmap::DiGraphMap;
        let ids: Vec<&str> = tasks.iter().map(|(t, _)| t.id.as_str()).collect();
        let mut g: DiGraphMap<&str, ()> = DiGraphMap::new();
        for id in &ids {
            g.add_node(id);
        }
        for (t, _) in &tasks {
            for d in &t.depends_on {
                if ids.contains(&d.as_str()) {
                    g.add_edge(d.as_str(), t.id.as_str(), ());
                }
            }
        }
        match petgraph::algo::toposort(&g, None) {
            Ok(order) => {
                let mut by_id: BTreeMap<String, Task> = tasks
                    .iter()
                    .map(|(t, _)| (t.id.clone(), t.clone()))
                    .collect();
                Some(order.iter().filter_map(|id| by_id.remove(*id)).collect())
            }
            Err(_) => {
                for scc in petgraph::algo::kosaraju_scc(&g) {
                    if scc.len() < 2 {
                        continue;
                    }
                    let cycle = cycle_path(&g, &scc);
                    let pos = positions.get(cycle[0]).copied().unwrap_or_default();
                    self.problem(pos, format!("dependency cycle: {}", cycle.join(" -> ")));
                }
                None
            }
        }
    }
}

fn cycle_path<'a>(
    g: &petgraph::graphmap::DiGraphMap<&'a str, ()>,
    scc: &[&'a str],
) -> Vec<&'a str> {
    // Walk from the alphabetically first member along edges that stay inside the component;
    // every node in a strongly connected component lies on a cycle, so the walk closes.
    let members: BTreeSet<&str> = scc.iter().copied().collect();
    let start = *members.iter().next().unwrap_or(&scc[0]);
    let mut path = vec![start];
    let mut seen: BTreeSet<&str> = BTreeSet::from([start]);
    let mut cur = start;
    loop {
        let mut next: Vec<&str> = g.neighbors(cur).filter(|n| members.contains(n)).collect();
        next.sort();
        if next.contains(&start) && path.len() > 1 {
            path.push(start);
            return path;
        }
        match next.into_iter().find(|n| !seen.contains(n)) {
            Some(n) => {
                seen.insert(n);
                path.push(n);
                cur = n;
            }
            None => {
                path.push(start);
                return path;
            }
        }
    }
}

//! Fuzzing DAG files: parse and validate must answer any text with a DAG or positioned problems,
//! never a panic or a hang. [`parse_any`] is the target; the short run below (proptest, in every
//! `cargo test`) mutates the shipped and test DAGs, and `fuzz/` (cargo-fuzz, libFuzzer) runs the
//! same target for as long as one likes (SECURITY.md has its figures).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flow_engine::dag::parse::{ParseOptions, parse_dag};
use flow_engine::operator::Registry;

/// Parses and validates `text` as a DAG file with every built-in operator; the answer is
/// dropped: only a panic (or a hang) is a failure.
pub fn parse_any(text: &str) {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(|| crate::registry(crate::Connections::default()));
    let opts = ParseOptions {
        connections: Some(vec!["lake".into(), "warehouse".into()]),
        ..ParseOptions::default()
    };
    let _ = parse_dag(Path::new("fuzz.yaml"), text, registry, &opts);
}

/// The seed corpus: the example DAGs and the test fixtures, valid and invalid.
pub fn seed_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    for dir in [
        "dags",
        "engine/tests/fixtures/valid",
        "engine/tests/fixtures/invalid",
        "engine/tests/fixtures/duplicate_id",
    ] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        out.extend(files);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of YAML and template syntax that mutations splice in, so that the run reaches deep
    /// states (anchors, flow collections, templates, shell quoting) rather than only YAML errors.
    const DICTIONARY: &[&str] = &[
        ":",
        ": ",
        "- ",
        "\n",
        "\n  ",
        "\n    ",
        "{{ ",
        " }}",
        "{%",
        "%}",
        "{#",
        "'",
        "\"",
        "&a ",
        "*a",
        "<<: *a",
        "!!str ",
        "!!binary ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "#",
        "---\n",
        "...\n",
        "? ",
        "|\n",
        ">-\n",
        "\t",
        "\\",
        "\u{0}",
        "é",
        "\u{feff}",
        "tasks:",
        "depends_on: [",
        "for_each: ",
        "params.",
        "item",
        "tasks.a.output",
        "| shell_quote",
        "| urlencode",
        "<<EOF\n",
        "$(id)",
        "`id`",
        "operator: shell\n",
        "operator: http\n",
        "url: ",
        "command: ",
        "when: ",
        "schedule: ",
        "0 3 * * *",
        "every 5m",
        "@daily",
        "allowed_hosts: [",
        "bind: {",
        "{% for x in params.regions %}",
        "{% endfor %}",
        "{% filter shell_quote %}",
        "{% macro m(x) %}",
        "{% include 'x' %}",
        "99999999999999999999",
        "-1",
        "1e309",
        "null",
        "~",
        "true",
        "yes",
    ];

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(usize, String),
        Delete(usize, usize),
        DuplicateLine(usize),
        SwapLines(usize, usize),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let text = prop_oneof![
            3 => proptest::sample::select(DICTIONARY).prop_map(str::to_string),
            1 => "\\PC{0,12}",
        ];
        prop_oneof![
            4 => (any::<usize>(), text).prop_map(|(at, s)| Edit::Insert(at, s)),
            2 => (any::<usize>(), 1usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
            1 => any::<usize>().prop_map(Edit::DuplicateLine),
            1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        ]
    }

    fn boundary(text: &str, at: usize) -> usize {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    }

    fn apply(mut text: String, edit: &Edit) -> String {
        match edit {
            Edit::Insert(at, s) => {
                let at = boundary(&text, *at);
                text.insert_str(at, s);
                text
            }
            Edit::Delete(at, n) => {
                let start = boundary(&text, *at);
                let end = boundary(&text, start.saturating_add(*n).min(text.len()));
                text.replace_range(start..end.max(start), "");
                text
            }
            Edit::DuplicateLine(_) | Edit::SwapLines(..) if text.is_empty() => text,
            Edit::DuplicateLine(i) => {
                let mut lines: Vec<&str> = text.lines().collect();
                let i = i % lines.len().max(1);
                if let Some(line) = lines.get(i).copied() {
                    lines.insert(i, line);
                }
                lines.join("\n")
            }
            Edit::SwapLines(a, b) => {
                let mut lines: Vec<&str> = text.lines().collect();
                let n = lines.len().max(1);
                if !lines.is_empty() {
                    lines.swap(a % n, b % n);
                }
                lines.join("\n")
            }
        }
    }

    fn seeds() -> &'static [String] {
        static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
        SEEDS.get_or_init(|| {
            seed_files()
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap())
                .collect()
        })
    }

    #[test]
    fn the_seed_corpus_is_there() {
        // The shipped DAGs and every fixture: a moved folder must not leave the run on nothing.
        assert!(seeds().len() >= 30, "{} seed files", seeds().len());
        for s in seeds() {
            parse_any(s);
        }
    }

    proptest! {
        // The short run of every `cargo test`: seconds. FLOW_FUZZ_CASES sets more for a longer one.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("FLOW_FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1500),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn mutated_dag_files_never_panic(seed in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..12)) {
            let mut text = seed.get(seeds()).clone();
            for e in &edits {
                text = apply(text, e);
            }
            parse_any(&text);
        }
    }
}

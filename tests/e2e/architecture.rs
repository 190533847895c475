//! The codebase's shape, checked as a test so it holds wherever the tests run: file and function
//! sizes, no module circle inside a crate, and the import rules of docs/ARCHITECTURE.md.
//!
//! Sources are read with syn; what `#[cfg(test)]` or `#[test]` marks, and files that only a test
//! module includes, are tests and exempt from the sizes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 80;

/// The crates checked: (name, source folder under the workspace root). `flow-bench` is a binary
/// of the ui package with a crate root of its own.
const CRATES: &[(&str, &str)] = &[
    ("engine", "engine/src"),
    ("operators", "operators/src"),
    ("ui", "ui/src"),
    ("flow-bench", "ui/src/bin/flow-bench"),
];

/// A rule: modules of `krate` under `from` (module paths, `crate::...`) must not name a path
/// starting with any of `to` (`crate::x` inside the crate, or another crate's name).
struct Rule {
    krate: &'static str,
    from: &'static [&'static str],
    to: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        krate: "engine",
        from: &[
            "crate::dag",
            "crate::plan",
            "crate::schedule",
            "crate::state",
            "crate::template",
            "crate::yaml",
            "crate::time",
            "crate::secrets",
        ],
        to: &[
            "crate::store",
            "crate::executor",
            "crate::scheduler",
            "sqlx",
            "tokio",
            "nix",
            "ureq",
        ],
        why: "the pure core (parsing, validation, schedules, planning, templates) touches no \
              database, process or socket",
    },
    Rule {
        krate: "engine",
        from: &["crate"],
        to: &["flow_operators", "flow_ui", "axum", "askama", "datafusion"],
        why: "the engine knows no concrete operator and no screen",
    },
    Rule {
        krate: "operators",
        from: &["crate"],
        to: &[
            "flow_engine::scheduler",
            "flow_engine::executor",
            "flow_ui",
            "axum",
        ],
        why: "an operator sees only its context (flow_engine::operator), never the loop that runs it",
    },
    Rule {
        krate: "ui",
        from: &["crate::api"],
        to: &["crate::web"],
        why: "the API and the pages share crate::state, never each other",
    },
    Rule {
        krate: "ui",
        from: &["crate::web"],
        to: &["crate::api"],
        why: "the API and the pages share crate::state, never each other",
    },
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One source file of a crate.
struct Source {
    path: PathBuf,
    /// `crate::a::b` as segments, without `crate`.
    module: Vec<String>,
    ast: syn::File,
}

fn module_of(src_dir: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src_dir).unwrap().with_extension("");
    let mut segs: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        segs.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        segs.pop();
    }
    segs
}

fn sources(src_dir: &str) -> Vec<Source> {
    let src = workspace().join(src_dir);
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                // Binaries other than the crate's own are crate roots of their own.
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let ast = syn::parse_file(&text)
                .unwrap_or_else(|e| panic!("{}: does not parse: {e}", path.display()));
            Source {
                module: module_of(&src, &path),
                path,
                ast,
            }
        })
        .collect()
}

fn is_test_attr(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let p = a.path();
        if p.is_ident("test") || p.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        p.is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// The modules only tests include (`#[cfg(test)] mod x;` in a file), as module paths.
fn test_modules(sources: &[Source]) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for s in sources {
        for item in &s.ast.items {
            if let syn::Item::Mod(m) = item
                && m.content.is_none()
                && is_test_attr(&m.attrs)
            {
                let mut path = s.module.clone();
                path.push(m.ident.to_string());
                out.insert(path);
            }
        }
    }
    out
}

fn is_test_file(s: &Source, tests: &BTreeSet<Vec<String>>) -> bool {
    tests.iter().any(|t| s.module.starts_with(t))
}

fn lines(span: proc_macro2::Span) -> usize {
    span.end().line - span.start().line + 1
}

/// Lines of a file that are not test items.
fn product_lines(s: &Source) -> usize {
    let total = std::fs::read_to_string(&s.path).unwrap().lines().count();
    let tests: usize = s
        .ast
        .items
        .iter()
        .filter(|i| match i {
            syn::Item::Mod(m) => is_test_attr(&m.attrs),
            syn::Item::Fn(f) => is_test_attr(&f.attrs),
            syn::Item::Impl(i) => is_test_attr(&i.attrs),
            _ => false,
        })
        .map(|i| lines(i.span()))
        .sum();
    total - tests
}

/// Functions longer than the limit, and every path the file names, with its module.
#[derive(Default)]
struct Walk {
    module: Vec<String>,
    long_fns: Vec<String>,
    /// (module the path is named in, the path resolved to `crate::...` when relative)
    paths: Vec<(Vec<String>, Vec<String>)>,
}

impl Walk {
    fn check_fn(&mut self, name: &syn::Ident, sig: &syn::Signature, body: &syn::Block) {
        let n = body.span().end().line - sig.span().start().line + 1;
        if n > MAX_FN_LINES {
            self.long_fns.push(format!(
                "{}::{name} ({n} lines, from line {})",
                self.module.join("::"),
                sig.span().start().line
            ));
        }
    }

    /// `self::`, `super::` and `crate::` made absolute (`crate`, segments...).
    fn resolve(&self, segs: &[String]) -> Vec<String> {
        let mut base = self.module.clone();
        let mut rest = segs;
        match segs.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &segs[1..];
            }
            Some("self") => rest = &segs[1..],
            Some("super") => {
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            _ => return segs.to_vec(),
        }
        let mut out = vec!["crate".to_string()];
        out.extend(base);
        out.extend(rest.iter().cloned());
        out
    }

    fn add_path(&mut self, segs: Vec<String>) {
        let resolved = self.resolve(&segs);
        self.paths.push((self.module.clone(), resolved));
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut segs = prefix.clone();
                if n.ident != "self" {
                    segs.push(n.ident.to_string());
                }
                self.add_path(segs);
            }
            syn::UseTree::Rename(r) => {
                let mut segs = prefix.clone();
                segs.push(r.ident.to_string());
                self.add_path(segs);
            }
            syn::UseTree::Glob(_) => self.add_path(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

impl<'a> Visit<'a> for Walk {
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        if is_test_attr(&m.attrs) {
            return;
        }
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_item_impl(&mut self, i: &'a syn::ItemImpl) {
        if !is_test_attr(&i.attrs) {
            syn::visit::visit_item_impl(self, i);
        }
    }

    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        if is_test_attr(&f.attrs) {
            return;
        }
        self.check_fn(&f.sig.ident, &f.sig, &f.block);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'a syn::ImplItemFn) {
        if is_test_attr(&f.attrs) {
            return;
        }
        self.check_fn(&f.sig.ident, &f.sig, &f.block);
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'a syn::TraitItemFn) {
        if let Some(body) = &f.default {
            self.check_fn(&f.sig.ident, &f.sig, body);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }

    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'a syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segs.len() > 1 {
            self.add_path(segs);
        }
        syn::visit::visit_path(self, p);
    }
}

/// What one crate's product code (tests excluded) holds.
struct Crate {
    name: &'static str,
    long_files: Vec<String>,
    long_fns: Vec<String>,
    /// (module, resolved path) pairs.
    paths: Vec<(Vec<String>, Vec<String>)>,
}

fn walk(name: &'static str, src_dir: &str) -> Crate {
    let sources = sources(src_dir);
    let tests = test_modules(&sources);
    let mut out = Crate {
        name,
        long_files: Vec::new(),
        long_fns: Vec::new(),
        paths: Vec::new(),
    };
    for s in sources.iter().filter(|s| !is_test_file(s, &tests)) {
        let n = product_lines(s);
        if n > MAX_FILE_LINES {
            out.long_files
                .push(format!("{} ({n} lines)", s.path.display()));
        }
        let mut w = Walk {
            module: s.module.clone(),
            ..Walk::default()
        };
        w.visit_file(&s.ast);
        out.long_fns.extend(w.long_fns);
        out.paths.extend(w.paths);
    }
    out
}

fn crates() -> Vec<Crate> {
    CRATES.iter().map(|(name, src)| walk(name, src)).collect()
}

#[test]
fn no_product_file_or_function_is_too_long() {
    let mut problems = Vec::new();
    for c in crates() {
        for f in &c.long_files {
            problems.push(format!("file over {MAX_FILE_LINES} lines: {f}"));
        }
        for f in &c.long_fns {
            problems.push(format!(
                "{}: function over {MAX_FN_LINES} lines: {f}",
                c.name
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "split these by concern (see docs/ARCHITECTURE.md):\n{}",
        problems.join("\n")
    );
}

/// The top-level module graph of a crate: an edge a -> b when a module under `crate::a` names
/// a path under `crate::b`.
fn module_graph(c: &Crate) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &c.paths {
        let (Some(from), Some("crate"), Some(to)) = (
            module.first(),
            path.first().map(String::as_str),
            path.get(1),
        ) else {
            continue;
        };
        if from != to {
            graph.entry(from.clone()).or_default().insert(to.clone());
        }
    }
    graph
}

/// A circle in the graph, if there is one, as the modules around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_circle_inside_a_crate() {
    for c in crates() {
        let graph = module_graph(&c);
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{}: modules import each other in a circle: {}",
                c.name,
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn imports_follow_the_layer_rules() {
    let crates = crates();
    let mut problems = Vec::new();
    for rule in RULES {
        let c = crates.iter().find(|c| c.name == rule.krate).unwrap();
        for (module, path) in &c.paths {
            let module = std::iter::once("crate".to_string())
                .chain(module.iter().cloned())
                .collect::<Vec<_>>()
                .join("::");
            let path = path.join("::");
            let applies = rule
                .from
                .iter()
                .any(|f| module == *f || module.starts_with(&format!("{f}::")));
            let forbidden = rule
                .to
                .iter()
                .any(|t| path == *t || path.starts_with(&format!("{t}::")));
            if applies && forbidden {
                problems.push(format!(
                    "{}: {module} names {path}: {}",
                    rule.krate, rule.why
                ));
            }
        }
    }
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checks themselves: a circle and a forbidden import are found when present.
#[test]
fn the_shape_checks_find_what_they_look_for() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &[][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let src = "mod x { use super::y::Z; fn f() { crate::w::g(); } }";
    let mut w = Walk {
        module: vec!["top".into()],
        ..Walk::default()
    };
    w.visit_file(&syn::parse_file(src).unwrap());
    let named: Vec<String> = w.paths.iter().map(|(_, p)| p.join("::")).collect();
    assert!(named.contains(&"crate::top::y::Z".to_string()), "{named:?}");
    assert!(named.contains(&"crate::w::g".to_string()), "{named:?}");
    let long = format!("fn f() {{\n{}}}\n", "let _ = 1;\n".repeat(MAX_FN_LINES));
    let mut w = Walk::default();
    w.visit_file(&syn::parse_file(&long).unwrap());
    assert_eq!(w.long_fns.len(), 1, "{:?}", w.long_fns);
}

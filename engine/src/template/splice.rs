//! Where a template splices values into the text it renders, for the checks of keys whose text
//! another parser reads (a shell, a URL): every emitted expression in source order, with the
//! raw text between, whether it ends in the key's quoting filter, and the first name it reads
//! that is not flow's own.
//!
//! The walk is deliberately conservative: a name it cannot trace (a loop variable, a `set`
//! variable, a macro argument) counts as outside, so `{% for r in params.regions %}{{ r }}`
//! needs the quoting filter and `{{ r | shell_quote }}` has it. Another template (`include`,
//! `import`, `extends`) is refused outright.

use minijinja::machinery::{self, ast};
use minijinja::syntax::SyntaxConfig;

/// The template's pieces in source order. `trusted` says whether a dotted name a template reads
/// (`ds`, `params.count`) is one of flow's own values; `filter` is the quoting filter that
/// makes an outside value safe in this kind of text.
pub fn pieces<'s>(
    source: &'s str,
    trusted: &dyn Fn(&str) -> bool,
    filter: &str,
) -> Result<Vec<Piece<'s>>, String> {
    let tree = machinery::parse(source, "<template>", SyntaxConfig::default())
        .map_err(super::describe_error)?;
    // A name the template binds itself (`{% for ds in params.dates %}`, `{% set task_id = ... %}`,
    // a macro or its argument) is not flow's value of that name, whatever it is called.
    let mut bound = std::collections::BTreeSet::new();
    bind_names(&tree, &mut bound);
    let trusted = &|name: &str| {
        let head = name.split('.').next().unwrap_or_default();
        !bound.contains(head) && trusted(name)
    };
    let mut walk = Walk {
        source,
        trusted,
        filter,
        pieces: Vec::new(),
    };
    walk.stmt(&tree, true);
    walk.pieces.sort_by_key(|p| p.offset);
    Ok(walk.pieces)
}

pub struct Piece<'s> {
    pub offset: u32,
    /// 1-based line within the template text.
    pub line: usize,
    /// The emitted expression as written; empty for raw text and constructs.
    pub expr: String,
    pub kind: Kind<'s>,
}

pub enum Kind<'s> {
    /// Template text, as the shell will read it.
    Raw(&'s str),
    /// A value spliced in: whether the quoting filter is its outermost one (and no later filter
    /// block rewrites it), and the first name it reads that is not flow's own.
    Emit {
        quoted: bool,
        outside: Option<String>,
    },
}

struct Walk<'s, 't> {
    source: &'s str,
    trusted: &'t dyn Fn(&str) -> bool,
    filter: &'t str,
    pieces: Vec<Piece<'s>>,
}

impl<'s> Walk<'s, '_> {
    /// `quoting_holds` is false under a `{% filter %}` block other than the quoting one: such a
    /// filter rewrites the text after quoting (`replace("'", "")`), so there even a quoted
    /// outside value is refused.
    fn stmt(&mut self, stmt: &ast::Stmt<'s>, quoting_holds: bool) {
        use ast::Stmt;
        match stmt {
            Stmt::Template(t) => self.body(&t.children, quoting_holds),
            Stmt::EmitRaw(r) => self.pieces.push(Piece {
                offset: r.span().start_offset,
                line: usize::from(r.span().start_line),
                expr: String::new(),
                kind: Kind::Raw(r.raw),
            }),
            Stmt::EmitExpr(e) => {
                let quoted = quoting_holds
                    && matches!(&e.expr, ast::Expr::Filter(f) if f.name == self.filter);
                // The statement's span is the whole expression; an attribute lookup's own span
                // starts at its last dot.
                self.emit(e.span(), quoted);
            }
            // The variable a set block fills is untraced, so emitting it needs quoting anyway.
            Stmt::Set(_) | Stmt::SetBlock(_) | Stmt::Do(_) => {}
            Stmt::ForLoop(f) => {
                self.body(&f.body, quoting_holds);
                self.body(&f.else_body, quoting_holds);
            }
            Stmt::IfCond(c) => {
                self.body(&c.true_body, quoting_holds);
                self.body(&c.false_body, quoting_holds);
            }
            Stmt::WithBlock(w) => self.body(&w.body, quoting_holds),
            // Escaping rewrites the quoting filter's `'` (as `&#x27;`): quoting cannot hold.
            Stmt::AutoEscape(a) => self.body(&a.body, false),
            Stmt::FilterBlock(f) => {
                let quotes_all = matches!(&f.filter,
                    ast::Expr::Filter(flt) if flt.name == self.filter && flt.expr.is_none());
                if quotes_all && quoting_holds {
                    // The whole block becomes one quoted word, whatever it holds.
                    self.pieces.push(Piece {
                        offset: f.span().start_offset,
                        line: usize::from(f.span().start_line),
                        expr: String::new(),
                        kind: Kind::Emit {
                            quoted: true,
                            outside: Some(format!("a {} block", self.filter)),
                        },
                    });
                } else {
                    self.body(&f.body, false);
                }
            }
            Stmt::Block(b) => self.body(&b.body, quoting_holds),
            Stmt::Macro(m) => self.body(&m.body, quoting_holds),
            Stmt::CallBlock(c) => {
                self.emit(c.call_expr_span, false);
                self.body(&c.macro_decl.body, quoting_holds);
            }
            Stmt::Extends(s) => self.construct(s.span(), "another template"),
            Stmt::Include(s) => self.construct(s.span(), "another template"),
            Stmt::Import(s) => self.construct(s.span(), "another template"),
            Stmt::FromImport(s) => self.construct(s.span(), "another template"),
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    fn body(&mut self, stmts: &[ast::Stmt<'s>], quoting_holds: bool) {
        for s in stmts {
            self.stmt(s, quoting_holds);
        }
    }

    /// Records an emitted expression with the first name it reads that is not flow's own
    /// (minijinja's own analysis of the expression alone, so names bound by an enclosing loop
    /// or `set` show up as untraced).
    fn emit(&mut self, span: machinery::Span, quoted: bool) {
        let text = self
            .source
            .get(span.start_offset as usize..span.end_offset as usize)
            .unwrap_or_default()
            .trim();
        let outside = match super::references(&format!("{{{{ {text} }}}}")) {
            Ok(names) => names.into_iter().find(|n| !(self.trusted)(n)),
            // The whole template parsed, so its parts do; refuse what cannot be read anyway.
            Err(_) => Some(text.to_string()),
        };
        self.pieces.push(Piece {
            offset: span.start_offset,
            line: usize::from(span.start_line),
            expr: text.to_string(),
            kind: Kind::Emit { quoted, outside },
        });
    }

    fn construct(&mut self, span: machinery::Span, what: &str) {
        self.pieces.push(Piece {
            offset: span.start_offset,
            line: usize::from(span.start_line),
            expr: String::new(),
            kind: Kind::Emit {
                quoted: false,
                outside: Some(what.into()),
            },
        });
    }
}

/// Every name `stmt` binds anywhere: loop, `set` and `with` targets, macros and their arguments.
fn bind_names<'s>(stmt: &ast::Stmt<'s>, out: &mut std::collections::BTreeSet<&'s str>) {
    use ast::Stmt;
    let body = |stmts: &[ast::Stmt<'s>], out: &mut std::collections::BTreeSet<&'s str>| {
        stmts.iter().for_each(|s| bind_names(s, out))
    };
    match stmt {
        Stmt::Template(t) => body(&t.children, out),
        Stmt::ForLoop(f) => {
            target_names(&f.target, out);
            body(&f.body, out);
            body(&f.else_body, out);
        }
        Stmt::IfCond(c) => {
            body(&c.true_body, out);
            body(&c.false_body, out);
        }
        Stmt::WithBlock(w) => {
            w.assignments.iter().for_each(|(t, _)| target_names(t, out));
            body(&w.body, out);
        }
        Stmt::Set(s) => target_names(&s.target, out),
        Stmt::SetBlock(s) => {
            target_names(&s.target, out);
            body(&s.body, out);
        }
        Stmt::AutoEscape(a) => body(&a.body, out),
        Stmt::FilterBlock(f) => body(&f.body, out),
        Stmt::Block(b) => body(&b.body, out),
        Stmt::Macro(m) => {
            out.insert(m.name);
            m.args.iter().for_each(|a| target_names(a, out));
            body(&m.body, out);
        }
        Stmt::CallBlock(c) => {
            c.macro_decl.args.iter().for_each(|a| target_names(a, out));
            body(&c.macro_decl.body, out);
        }
        _ => {}
    }
}

fn target_names<'s>(expr: &ast::Expr<'s>, out: &mut std::collections::BTreeSet<&'s str>) {
    match expr {
        ast::Expr::Var(v) => {
            out.insert(v.id);
        }
        ast::Expr::Tuple(t) => t.items.iter().for_each(|i| target_names(i, out)),
        ast::Expr::List(l) => l.items.iter().for_each(|i| target_names(i, out)),
        ast::Expr::GetAttr(g) => target_names(&g.expr, out),
        _ => {}
    }
}

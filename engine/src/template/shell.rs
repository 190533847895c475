//! Templates that become shell text: outside values reach them only quoted, and only where
//! quoting holds.
//!
//! A value from outside the DAG file (a param given at trigger time, an upstream task's output, a
//! map item) spliced into `/bin/sh -c` text can run anything as the scheduler's user (Airflow's
//! CVE-2022-40127 was exactly this, in its example DAGs). So a template in a shell key may emit
//! such a value only as `{{ ... | shell_quote }}`, the filter outermost, at a place where the
//! shell reads an unquoted word: inside `'...'` the filter's own quotes would end the string,
//! and inside `"..."`, a here-document or a comment they do not protect at all. Everything
//! else a shell key emits must be flow's own values. [`unquoted`] finds each place that breaks
//! the rule from the template's syntax tree and a small POSIX shell lexer ([`Lexer`]), before
//! anything runs.
//!
//! The check is deliberately conservative: a name it cannot trace (a loop variable, a `set`
//! variable, a macro argument) counts as outside, so `{% for r in params.regions %}{{ r }}`
//! is refused and `{{ r | shell_quote }}` is not.

use minijinja::machinery::{self, ast};
use minijinja::syntax::SyntaxConfig;

mod lexer;

pub use lexer::{Context, Lexer};

/// The filter that makes a value one shell word (or, for a list, one word per item).
pub const SHELL_QUOTE: &str = "shell_quote";

/// One place in a template where a value that is not flow's own reaches the shell unprotected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unquoted {
    /// 1-based line within the template text.
    pub line: usize,
    /// The emitted expression as written (`params.model`); empty for a construct.
    pub expr: String,
    /// The first outside name the expression reads (`params.model`), or what the construct is.
    pub name: String,
    /// Where the shell reads it; for a quoted emit, never [`Context::Word`].
    pub context: Context,
    /// True when the emit ends in `shell_quote` (so it is the place, not the filter, that fails).
    pub quoted: bool,
}

/// POSIX single-quote quoting: `'` + the text with each `'` written as `'\''` + `'`. Inside single
/// quotes the shell reads every byte literally, so the result is always exactly one word.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Every place in `source` that emits an outside value other than as `shell_quote`d at an
/// unquoted word. `trusted` says whether a dotted name a template reads (`ds`, `params.count`)
/// is one of flow's own values, or a typed scalar that cannot carry shell syntax.
pub fn unquoted(source: &str, trusted: &dyn Fn(&str) -> bool) -> Result<Vec<Unquoted>, String> {
    let tree = machinery::parse(source, "<template>", SyntaxConfig::default())
        .map_err(super::describe_error)?;
    let mut walk = Walk {
        source,
        trusted,
        pieces: Vec::new(),
    };
    walk.stmt(&tree, true);
    // The shell reads the rendered text in source order; a loop body repeated or a branch left
    // out keeps the quoting of balanced text, which is what DAG files hold.
    walk.pieces.sort_by_key(|p| p.offset);
    let mut lexer = Lexer::default();
    let mut found = Vec::new();
    for piece in walk.pieces {
        match piece.kind {
            Kind::Raw(text) => lexer.feed(text),
            Kind::Emit { quoted, outside } => {
                let context = lexer.context();
                let Some(name) = outside else { continue };
                if quoted && context == Context::Word {
                    continue;
                }
                found.push(Unquoted {
                    line: piece.line,
                    expr: piece.expr,
                    name,
                    context,
                    quoted,
                });
            }
        }
    }
    Ok(found)
}

struct Piece<'s> {
    offset: u32,
    line: usize,
    expr: String,
    kind: Kind<'s>,
}

enum Kind<'s> {
    /// Template text, as the shell will read it.
    Raw(&'s str),
    /// A value spliced in: whether `shell_quote` is its outermost filter (and no later filter
    /// block rewrites it), and the first name it reads that is not flow's own.
    Emit {
        quoted: bool,
        outside: Option<String>,
    },
}

struct Walk<'s, 't> {
    source: &'s str,
    trusted: &'t dyn Fn(&str) -> bool,
    pieces: Vec<Piece<'s>>,
}

impl<'s> Walk<'s, '_> {
    /// `quoting_holds` is false under a `{% filter %}` block other than `shell_quote`: such a
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
                    && matches!(&e.expr, ast::Expr::Filter(f) if f.name == SHELL_QUOTE);
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
            Stmt::AutoEscape(a) => self.body(&a.body, quoting_holds),
            Stmt::FilterBlock(f) => {
                let quotes_all = matches!(&f.filter,
                    ast::Expr::Filter(flt) if flt.name == SHELL_QUOTE && flt.expr.is_none());
                if quotes_all && quoting_holds {
                    // The whole block becomes one quoted word, whatever it holds.
                    self.pieces.push(Piece {
                        offset: f.span().start_offset,
                        line: usize::from(f.span().start_line),
                        expr: String::new(),
                        kind: Kind::Emit {
                            quoted: true,
                            outside: Some("a shell_quote block".into()),
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

#[cfg(test)]
mod tests;

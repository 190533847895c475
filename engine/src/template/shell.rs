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
//! the rule from the template's syntax tree ([`super::splice`]) and a small POSIX shell lexer
//! ([`Lexer`]), before anything runs.

use super::splice::{self, Emit, Piece};

mod lexer;

pub use lexer::Context;
pub(crate) use lexer::Lexer;

/// The filter that makes a value one shell word (or, for a list, one word per item).
pub(crate) const SHELL_QUOTE: &str = "shell_quote";

/// One place in a template where a value that is not flow's own reaches the shell unprotected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unquoted {
    /// 1-based line within the template text.
    pub line: usize,
    /// The emitted expression as written (`params.model`); empty for a construct.
    pub expr: String,
    /// The first outside name the expression reads (`params.model`), or what the construct is.
    pub name: String,
    /// Where the shell reads it; for a quoted emit, never [`Context::Word`] unless `glued`.
    pub context: Context,
    /// True when the emit ends in `shell_quote` (so it is the place, not the filter, that fails).
    pub quoted: bool,
    /// A quoted value that may be a list, glued to other text in one word: its items after the
    /// first would become words of their own.
    pub glued: bool,
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
/// unquoted word, on any path through the template. `trusted` says whether a dotted name a
/// template reads (`ds`, `params.count`) is one of flow's own values, or a typed scalar that
/// cannot carry shell syntax; `list` whether it is known to be a list (an array param): glued
/// to other text, its items after the first would be words of their own. A value that only
/// may be one (an output, an item) is checked where it renders ([`verify`]).
pub(crate) fn unquoted(
    source: &str,
    trusted: &dyn Fn(&str) -> bool,
    list: &dyn Fn(&str) -> bool,
) -> Result<Vec<Unquoted>, String> {
    let nodes = splice::tree(source, SHELL_QUOTE)?;
    let mut check = ShellCheck {
        trusted,
        list,
        found: Vec::new(),
    };
    splice::follow(&mut check, &nodes, State::default());
    check.found.sort_by_key(|u| u.line);
    Ok(check.found)
}

/// The check of a shell key's text as rendered, behind [`unquoted`]: there every value is
/// known (a secret that holds a quote, the branch a run took), so the place of each value
/// `shell_quote` made is read exactly. Each must stand at an unquoted word, and a quoted list
/// apart from the text around it.
pub(crate) fn verify(
    source: &str,
    out: &str,
    spans: &[minijinja::OutputSpan],
) -> Result<(), String> {
    let mut lexer = Lexer::default();
    let mut at = 0;
    for span in spans {
        let range = span.output_range();
        if range.start < at || range.end > out.len() {
            continue;
        }
        lexer.feed(&out[at..range.start]);
        let expr = source.get(span.source_range()).unwrap_or_default().trim();
        if span.kind() == minijinja::OutputSpanKind::Expression && is_quote_emit(expr) {
            let place = format!("`{{{{ {expr} }}}}` (line {} of the template)", span.line());
            let context = lexer.context();
            if context != Context::Word {
                return Err(format!(
                    "{place} would stand inside {} in the text as rendered (a value before it \
                     holds shell quoting); nothing ran. Pass the values in env: instead",
                    context.describe()
                ));
            }
            let text = &out[range.clone()];
            let after = out[range.end..].chars().next();
            let glued = !lexer.at_word_start() || after.is_some_and(|c| !ends_word(c));
            if glued && several_words(text) {
                return Err(format!(
                    "{place} is a list glued to other text, so its items would become words \
                     of their own; nothing ran. Put it as a word of its own"
                ));
            }
        }
        lexer.feed(&out[range.clone()]);
        at = range.end;
    }
    Ok(())
}

/// An expression whose outermost filter is the quoting one, or a `{% filter %}` block of it.
fn is_quote_emit(expr: &str) -> bool {
    use minijinja::machinery::{ast, parse_expr};
    expr == SHELL_QUOTE
        || matches!(parse_expr(expr), Ok(ast::Expr::Filter(f)) if f.name == SHELL_QUOTE)
}

/// True when the shell reads `text` as more than one word.
fn several_words(text: &str) -> bool {
    let mut lexer = Lexer::default();
    let mut buf = [0u8; 4];
    text.chars().any(|c| {
        let splits = c.is_whitespace() && lexer.context() == Context::Word;
        lexer.feed(c.encode_utf8(&mut buf));
        splits
    })
}

/// Where the shell is after some text, and a quoted value that must not touch what follows.
#[derive(Debug, Clone, PartialEq, Default)]
struct State {
    lexer: Lexer,
    /// A quoted value that may be a list, just emitted: the next text must start a new word.
    open_list: Option<Unquoted>,
}

struct ShellCheck<'t> {
    trusted: &'t dyn Fn(&str) -> bool,
    list: &'t dyn Fn(&str) -> bool,
    found: Vec<Unquoted>,
}

impl ShellCheck<'_> {
    fn report(&mut self, u: Unquoted) {
        // A place reached on several paths is one finding.
        if !self
            .found
            .iter()
            .any(|f| f.line == u.line && f.expr == u.expr && f.name == u.name)
        {
            self.found.push(u);
        }
    }
}

impl splice::Check for ShellCheck<'_> {
    type State = State;

    fn raw(&mut self, state: &mut State, text: &str) {
        if let Some(u) = state.open_list.take()
            && text.chars().next().is_some_and(|c| !ends_word(c))
        {
            self.report(u);
        }
        state.lexer.feed(text);
    }

    fn emit(&mut self, state: &mut State, piece: &Piece<'_>, emit: &Emit) {
        if let Some(u) = state.open_list.take() {
            self.report(u);
        }
        let context = state.lexer.context();
        let outside = emit.outside(self.trusted);
        // A quoted value is only ever right at an unquoted word, whoever's it is: inside
        // quotes its own quotes become part of the text.
        if outside.is_some() || emit.quoted {
            let name = outside.clone().unwrap_or_else(|| piece.expr.clone());
            let mut u = Unquoted {
                line: piece.line,
                expr: piece.expr.clone(),
                name,
                context,
                quoted: emit.quoted,
                glued: false,
            };
            if !emit.quoted || context != Context::Word {
                self.report(u);
            } else if !emit.stringy && outside.as_deref().is_some_and(self.list) {
                u.glued = true;
                if state.lexer.at_word_start() {
                    state.open_list = Some(u);
                } else {
                    self.report(u);
                }
            }
        }
        // flow's own values are dates, ids and numbers: one plain word. A constant is the DAG
        // file's own text and is read as such.
        state.lexer.feed(emit.constant.as_deref().unwrap_or("x"));
    }

    fn lost(&mut self, line: usize) {
        self.report(Unquoted {
            line,
            expr: String::new(),
            name: "branches or a loop whose text leaves the shell's quoting different on \
                   different paths"
                .into(),
            context: Context::Word,
            quoted: false,
            glued: false,
        });
    }
}

/// A character that ends the word before it.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || ";&|()<>".contains(c)
}

#[cfg(test)]
mod against_sh;
#[cfg(test)]
mod tests;

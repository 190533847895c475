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

use super::splice::{self, Kind};

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
    // The shell reads the rendered text in source order; a loop body repeated or a branch left
    // out keeps the quoting of balanced text, which is what DAG files hold.
    let mut lexer = Lexer::default();
    let mut found = Vec::new();
    for piece in splice::pieces(source, trusted, SHELL_QUOTE)? {
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

#[cfg(test)]
mod tests;

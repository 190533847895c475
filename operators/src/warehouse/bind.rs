//! `bind:` for warehouse statements: values go to the server as parameters, never as SQL text.
//!
//! A statement names its parameters `$name`, as the `sql` operator's queries do. PostgreSQL
//! (and Redshift) number theirs, so each `$name` outside strings, quoted names and comments
//! becomes `$1`, `$2`, ... ([`Placeholders`]). The server then says which type it wants at each
//! (a prepare), and every value is sent as text and cast there (`$1::text::TIMESTAMPTZ`), so
//! a date string binds to a timestamp column, a number to a numeric one, without flow knowing
//! every type the warehouse has.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use serde_json::Value as Json;

/// Where a statement names its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders {
    /// (byte offset, byte length, index into `names`) for each `$name` in the text.
    spots: Vec<(usize, usize, usize)>,
    /// The distinct names, in order of first use: `$name` becomes `$k` for `names[k - 1]`.
    pub names: Vec<String>,
}

impl Placeholders {
    /// Finds the `$name` placeholders of `sql`; a numbered one (`$1`) is refused, since a
    /// `bind:` mapping has no order.
    pub fn find(sql: &str) -> Result<Placeholders, String> {
        let dialect = PostgreSqlDialect {};
        let tokens = Tokenizer::new(&dialect, sql)
            .with_unescape(false)
            .tokenize_with_location()
            .map_err(|e| format!("cannot read the statement: {e}"))?;
        let line_starts: Vec<usize> = std::iter::once(0)
            .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let mut spots = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for t in tokens {
            let Token::Placeholder(text) = &t.token else {
                continue;
            };
            let Some(name) = text.strip_prefix('$') else {
                return Err(format!("`{text}` is not a parameter; write $name"));
            };
            if name.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "the statement uses the positional parameter {text}; name it ($start, $end, \
                     ...) and give its value in `bind:`"
                ));
            }
            let start = t.span.start;
            let line = line_starts
                .get(start.line.saturating_sub(1) as usize)
                .copied()
                .ok_or_else(|| format!("cannot place {text} in the statement"))?;
            let offset = sql[line..]
                .char_indices()
                .nth(start.column.saturating_sub(1) as usize)
                .map(|(i, _)| line + i)
                .filter(|o| sql[*o..].starts_with(text.as_str()))
                .ok_or_else(|| format!("cannot place {text} in the statement"))?;
            let index = match names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    names.push(name.to_string());
                    names.len() - 1
                }
            };
            spots.push((offset, text.len(), index));
        }
        Ok(Placeholders { spots, names })
    }

    pub fn is_empty(&self) -> bool {
        self.spots.is_empty()
    }

    /// The statement with each `$name` written as `write(k)` (k from 1).
    pub fn render(&self, sql: &str, write: impl Fn(usize) -> String) -> String {
        let mut out = String::with_capacity(sql.len() + 8 * self.spots.len());
        let mut at = 0;
        for &(offset, len, index) in &self.spots {
            out.push_str(&sql[at..offset]);
            out.push_str(&write(index + 1));
            at = offset + len;
        }
        out.push_str(&sql[at..]);
        out
    }

    /// The values for `$1`, `$2`, ... from `bind:`, as the text the server casts; every name used
    /// must be bound (a `bind:` entry no statement uses is the caller's check).
    pub fn values(&self, bind: &BTreeMap<String, Json>) -> Result<Vec<Option<String>>, String> {
        self.names
            .iter()
            .map(|name| match bind.get(name) {
                None => Err(format!(
                    "the statement uses ${name}, but `bind:` has no `{name}`"
                )),
                Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(other) => Ok(Some(other.to_string())),
            })
            .collect()
    }
}

/// `$k`, cast on the server from text to the type it wants there. Text types need no cast; a
/// type name that is not a plain SQL name is refused rather than written into the statement.
pub fn cast(k: usize, type_name: &str) -> Result<String, String> {
    let plain = !type_name.is_empty()
        && type_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '[' | ']' | ' '));
    if !plain {
        return Err(format!(
            "the warehouse wants the type `{type_name}` at ${k}, which flow cannot cast text to; \
             cast it in the statement"
        ));
    }
    Ok(match type_name.to_ascii_uppercase().as_str() {
        "TEXT" | "UNKNOWN" => format!("${k}"),
        _ => format!("(${k}::text::{type_name})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_numbers_outside_strings_comments_and_quoted_names() {
        let sql = "SELECT '$x', \"$y\", $$ $z $$ -- $w\nFROM t WHERE a = $x AND b > $since /* $v */ AND c = $x";
        let p = Placeholders::find(sql).unwrap();
        assert_eq!(p.names, vec!["x", "since"]);
        assert_eq!(
            p.render(sql, |k| format!("${k}")),
            "SELECT '$x', \"$y\", $$ $z $$ -- $w\nFROM t WHERE a = $1 AND b > $2 /* $v */ AND c = $1"
        );
    }

    #[test]
    fn positions_hold_after_multibyte_text() {
        let sql = "SELECT 'é€' AS s,\n  '日本' AS t WHERE x = $naïve";
        let p = Placeholders::find(sql).unwrap();
        assert_eq!(
            p.render(sql, |k| format!("${k}")),
            "SELECT 'é€' AS s,\n  '日本' AS t WHERE x = $1"
        );
    }

    #[test]
    fn numbered_parameters_and_missing_values_are_refused() {
        assert!(
            Placeholders::find("SELECT $1")
                .unwrap_err()
                .contains("name it")
        );
        let p = Placeholders::find("SELECT $a, $b").unwrap();
        let bind = BTreeMap::from([("a".to_string(), Json::from(1))]);
        assert!(p.values(&bind).unwrap_err().contains("no `b`"));
        let bind = BTreeMap::from([
            ("a".to_string(), Json::from(1)),
            ("b".to_string(), Json::from("it's")),
        ]);
        assert_eq!(
            p.values(&bind).unwrap(),
            vec![Some("1".into()), Some("it's".into())]
        );
    }

    #[test]
    fn casts_are_plain_type_names_only() {
        assert_eq!(cast(1, "TEXT").unwrap(), "$1");
        assert_eq!(cast(2, "TIMESTAMPTZ").unwrap(), "($2::text::TIMESTAMPTZ)");
        assert_eq!(cast(3, "INT4[]").unwrap(), "($3::text::INT4[])");
        assert!(cast(4, "x); DROP TABLE t; --").is_err());
    }
}

//! A query's errors, told with where in the query they are.

use datafusion::common::DataFusionError;
use flow_engine::operator::OperatorError;

/// An error met while the query ran. Running out of the memory limit is worth a retry (another
/// query may have finished); the rest are the query's or the data's.
pub(super) fn run_error(e: &DataFusionError, query: &str) -> OperatorError {
    let text = sql_error(e, query);
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
        || matches!(e.find_root(), DataFusionError::ObjectStore(_))
        || matches!(e.find_root(), DataFusionError::IoError(_))
    {
        OperatorError::Retryable(text)
    } else {
        OperatorError::Fatal(text)
    }
}

/// The error, with where in the query it is: DataFusion's diagnostic span when it has one, else
/// the parser's "Line: L, Column: C"; the query's line is quoted with a caret under the spot.
pub fn sql_error(e: &DataFusionError, query: &str) -> String {
    let mut message = e.strip_backtrace();
    for prefix in ["SQL error: ", "sql parser error: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            message = rest.to_string();
        }
    }
    if let Some(inner) = message
        .strip_prefix("ParserError(\"")
        .and_then(|m| m.strip_suffix("\")"))
    {
        message = inner.replace("\\\"", "\"");
    }
    let spot = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|s| (s.start.line as usize, s.start.column as usize))
        .filter(|(l, _)| *l > 0)
        .or_else(|| parse_line_col(&message))
        .or_else(|| {
            message
                .ends_with("found: EOF")
                .then(|| end_of(query))
                .flatten()
        });
    match spot {
        Some((line, col)) => {
            let mut out = format!("SQL error at query line {line}, column {col}: {message}");
            if let Some(text) = query.lines().nth(line - 1) {
                out.push_str(&format!(
                    "\n  | {text}\n  | {}^",
                    " ".repeat(col.saturating_sub(1).min(text.len()))
                ));
            }
            out
        }
        None => format!("SQL error: {message}"),
    }
}

/// The spot just after the query's last character (where "found: EOF" is).
fn end_of(query: &str) -> Option<(usize, usize)> {
    let (idx, text) = query
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()?;
    Some((idx + 1, text.trim_end().chars().count() + 1))
}

/// The parser's "Line: L, Column: C" in a message.
fn parse_line_col(message: &str) -> Option<(usize, usize)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?)).filter(|(l, _)| *l > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_parser_position() {
        assert_eq!(
            parse_line_col(
                "sql parser error: Expected: end of statement, found: x at Line: 2, Column: 14"
            ),
            Some((2, 14))
        );
        assert_eq!(parse_line_col("no position"), None);
        assert_eq!(
            end_of("SELECT a\n  FROM t WHERE (a > 1  \n\n"),
            Some((2, 22))
        );
    }
}

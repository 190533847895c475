//! Templates that become a URL: a value from outside the DAG file never sets its scheme or
//! host, so a trigger cannot point a request at another machine (server-side request forgery).
//!
//! Such a value may fill the path, query or fragment, percent-encoded (`{{ ... | urlencode }}`,
//! the filter outermost), once the text before it has ended the authority: a `/`, `?` or `#`
//! that is not part of `scheme://`. The scheme and host come from the DAG file's own text or
//! flow's own values (`{{ secrets.BASE_URL }}/v1/...`). A task that must reach hosts chosen at
//! run time lists them in `allowed_hosts:`, which the operator enforces on the rendered URL.

use super::splice::{self, Kind};

/// The filter that makes a value safe in a URL's path or query.
pub const URL_QUOTE: &str = "urlencode";

/// One place where an outside value could change where a URL points, or reaches it unencoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe {
    pub line: usize,
    pub expr: String,
    pub name: String,
    /// True when the value lands before the authority has ended (scheme, host, port).
    pub in_authority: bool,
}

/// Every place in `source` where an outside value is emitted into the scheme or authority, or
/// elsewhere without `urlencode`.
pub fn unsafe_spots(source: &str, trusted: &dyn Fn(&str) -> bool) -> Result<Vec<Unsafe>, String> {
    // In the scheme and authority only secrets may stand: even a number chooses a host
    // (`http://2852039166/` is 169.254.169.254) or a port.
    let strict = splice::pieces(source, &|name| name.starts_with("secrets."), URL_QUOTE)?;
    let mut reader = Reader::default();
    let mut found = Vec::new();
    for (piece, strict) in splice::pieces(source, trusted, URL_QUOTE)?
        .into_iter()
        .zip(strict)
    {
        match piece.kind {
            Kind::Raw(text) => reader.feed(text),
            Kind::Emit { quoted, outside } => {
                let in_authority = !reader.past_authority;
                reader.after_emit();
                let outside = match (in_authority, strict.kind) {
                    (
                        true,
                        Kind::Emit {
                            outside: strict, ..
                        },
                    ) => strict,
                    _ => outside,
                };
                let Some(name) = outside else { continue };
                if quoted && !in_authority {
                    continue;
                }
                found.push(Unsafe {
                    line: piece.line,
                    expr: piece.expr,
                    name,
                    in_authority,
                });
            }
        }
    }
    Ok(found)
}

/// Follows the raw text far enough to know when the authority has ended.
#[derive(Debug, Default)]
struct Reader {
    past_authority: bool,
    /// The last two characters, to tell `scheme://` from a path's `/`.
    last: [char; 2],
}

impl Reader {
    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if self.past_authority {
                return;
            }
            let in_separator = c == '/' && (self.last[1] == ':' || self.last == [':', '/']);
            if !in_separator && matches!(c, '/' | '?' | '#') {
                self.past_authority = true;
            }
            self.last = [self.last[1], c];
        }
    }

    /// An emitted value's own text is unknown: a `/` right after it starts the path.
    fn after_emit(&mut self) {
        self.last = ['\0', '\0'];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(name: &str) -> bool {
        matches!(name, "ds" | "secrets.BASE" | "params.n")
    }

    fn spots(source: &str) -> Vec<(String, bool)> {
        unsafe_spots(source, &trusted)
            .unwrap()
            .into_iter()
            .map(|u| (u.name, u.in_authority))
            .collect()
    }

    #[test]
    fn encoded_values_after_the_authority_pass() {
        for ok in [
            "https://api.example.com/v1/{{ params.model | urlencode }}?d={{ ds }}",
            "https://api.example.com?q={{ params.q | urlencode }}",
            "http://h:8080/#{{ item | urlencode }}",
            "{{ secrets.BASE }}/models/{{ params.model | urlencode }}",
            "https://{{ secrets.BASE }}/x/{{ params.n }}/{{ tasks.a.output.id | urlencode }}",
            "https://api.example.com/{{ params.n }}",
        ] {
            assert_eq!(spots(ok), vec![], "{ok}");
        }
    }

    #[test]
    fn outside_values_in_the_authority_or_unencoded_are_found() {
        let cases: &[(&str, &[(&str, bool)])] = &[
            ("{{ params.url }}", &[("params.url", true)]),
            (
                "https://{{ params.host | urlencode }}/x",
                &[("params.host", true)],
            ),
            // No `/` yet: the value could end the host name (`.evil.example`).
            (
                "https://api.example.com{{ params.p | urlencode }}",
                &[("params.p", true)],
            ),
            (
                "{{ secrets.BASE }}{{ params.p | urlencode }}",
                &[("params.p", true)],
            ),
            (
                "https://api.example.com/{{ params.p }}",
                &[("params.p", false)],
            ),
            // A number is a host too (`http://2852039166/` is 169.254.169.254), or a port.
            ("http://{{ params.n }}/x", &[("params.n", true)]),
            ("http://h:{{ params.n }}/x", &[("params.n", true)]),
            (
                "https://api.example.com/{{ params.p | urlencode | replace('%2F', '/') }}",
                &[("params.p", false)],
            ),
        ];
        for (src, want) in cases {
            let want: Vec<(String, bool)> = want.iter().map(|(n, a)| (n.to_string(), *a)).collect();
            assert_eq!(spots(src), want, "{src}");
        }
    }
}

//! Templates that become a URL: a value from outside the DAG file never sets its scheme or
//! host, so a trigger cannot point a request at another machine (server-side request forgery).
//!
//! Such a value may fill the path, query or fragment, percent-encoded (`{{ ... | urlencode }}`,
//! the filter outermost), once the text before it has ended the authority: a `/`, `?` or `#`
//! that is not part of `scheme://`. The scheme and host come from the DAG file's own text or
//! flow's own values (`{{ secrets.BASE_URL }}/v1/...`). A task that must reach hosts chosen at
//! run time lists them in `allowed_hosts:`, which the operator enforces on the rendered URL.

use super::splice::{self, Emit, Piece};

/// The filter that makes a value safe in a URL's path or query.
pub(crate) const URL_QUOTE: &str = "urlencode";

/// One place where an outside value could change where a URL points, or reaches it unencoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsafe {
    pub line: usize,
    pub expr: String,
    pub name: String,
    /// True when the value lands before the authority has ended (scheme, host, port).
    pub in_authority: bool,
}

/// Every place in `source` where an outside value is emitted into the scheme or authority, or
/// elsewhere without `urlencode`, on any path through the template.
pub(crate) fn unsafe_spots(
    source: &str,
    trusted: &dyn Fn(&str) -> bool,
) -> Result<Vec<Unsafe>, String> {
    let nodes = splice::tree(source, URL_QUOTE)?;
    let mut check = UrlCheck {
        trusted,
        found: Vec::new(),
    };
    splice::follow(&mut check, &nodes, Reader::default());
    check.found.sort_by_key(|u| u.line);
    Ok(check.found)
}

struct UrlCheck<'t> {
    trusted: &'t dyn Fn(&str) -> bool,
    found: Vec<Unsafe>,
}

impl splice::Check for UrlCheck<'_> {
    type State = Reader;

    fn raw(&mut self, reader: &mut Reader, text: &str) {
        reader.feed(text);
    }

    fn emit(&mut self, reader: &mut Reader, piece: &Piece<'_>, emit: &Emit) {
        let in_authority = !reader.past_authority;
        match &emit.constant {
            Some(text) => reader.feed(text),
            None => reader.after_emit(),
        }
        // In the scheme and authority only secrets may stand: even a number chooses a host
        // (`http://2852039166/` is 169.254.169.254) or a port.
        let outside = if in_authority {
            emit.outside(&|name| name.starts_with("secrets."))
        } else {
            emit.outside(self.trusted)
        };
        let Some(name) = outside else { return };
        if emit.quoted && !in_authority {
            return;
        }
        let u = Unsafe {
            line: piece.line,
            expr: piece.expr.clone(),
            name,
            in_authority,
        };
        if !self.found.contains(&u) {
            self.found.push(u);
        }
    }

    fn lost(&mut self, line: usize) {
        self.found.push(Unsafe {
            line,
            expr: String::new(),
            name: "branches or a loop that leave the URL's parts unknown".into(),
            in_authority: true,
        });
    }
}

/// Follows the raw text far enough to know when the authority has ended.
#[derive(Debug, Default, Clone, PartialEq)]
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
                // Nothing after this point changes what the reader knows.
                self.last = ['\0', '\0'];
                return;
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
            // A constant is the file's own text.
            "https://api.example.com{{ '/' }}{{ params.p | urlencode }}",
            "https://api.example.com/{% if params.n %}a/{% endif %}{{ params.p | urlencode }}",
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
            // On the path where the branch is not taken, the value ends the host name.
            (
                "https://{% if params.n %}api.example.com/{% endif %}{{ params.p | urlencode }}",
                &[("params.p", true)],
            ),
            (
                "https://api.example.com{% for i in range(params.n) %}/{% endfor %}{{ item | urlencode }}",
                &[("item", true)],
            ),
        ];
        for (src, want) in cases {
            let want: Vec<(String, bool)> = want.iter().map(|(n, a)| (n.to_string(), *a)).collect();
            assert_eq!(spots(src), want, "{src}");
        }
    }
}

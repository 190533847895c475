use super::*;

/// flow's own values, and `params.n` as a typed number.
fn trusted(name: &str) -> bool {
    matches!(name, "ds" | "ts" | "run_id" | "params.n" | "range") || name.starts_with("loop.")
}

/// `params.regions` is an array param; outputs and items may be lists, which only their
/// rendering tells.
fn list(name: &str) -> bool {
    name == "params.regions"
}

fn names(source: &str) -> Vec<String> {
    unquoted(source, &trusted, &list)
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect()
}

#[test]
fn quoting_makes_one_literal_word() {
    assert_eq!(quote("plain"), "'plain'");
    assert_eq!(quote(""), "''");
    assert_eq!(quote("it's"), r"'it'\''s'");
    assert_eq!(
        quote(r#"x"; id > /tmp/pwned; echo ""#),
        r#"'x"; id > /tmp/pwned; echo "'"#
    );
    assert_eq!(quote("$(id) `id` \\ \n"), "'$(id) `id` \\ \n'");
}

#[test]
fn flow_values_and_quoted_outside_values_pass() {
    let ok = [
        "echo {{ ds }} \"{{ ts }}\" '{{ run_id }}'",
        "echo {{ params.model | shell_quote }}",
        "echo --name={{ params.model | shell_quote }}.csv",
        "echo {{ (params.a ~ '-' ~ item) | shell_quote }}",
        "echo {{ params.n * 2 }} {{ range(params.n) | list }}",
        "{% if params.full %}--full{% endif %} {{ ds }}",
        "{% for r in params.regions %}{{ r | shell_quote }} {{ loop.index }} {% endfor %}",
        "{% filter shell_quote %}{{ params.a }} and {{ item }}{% endfilter %}",
        "echo 'it''s' \"a \\\" b\" {{ item | shell_quote }}",
        "# don't\necho {{ item | shell_quote }}",
        "echo $# {{ item | shell_quote }}",
        "cat <<EOF\n{{ ds }} '\nEOF\necho {{ item | shell_quote }}",
        "cat <<-'END' > f\n\tbody \"\n\tEND\necho {{ item | shell_quote }}",
        "plain text, no template",
    ];
    for src in ok {
        assert_eq!(names(src), Vec::<String>::new(), "{src}");
    }
}

#[test]
fn every_unquoted_outside_value_is_found() {
    let cases: &[(&str, &[&str])] = &[
        ("echo {{ params.model }}", &["params.model"]),
        (
            "echo {{ item }} {{ tasks.a.output.path }}",
            &["item", "tasks.a.output.path"],
        ),
        ("echo {{ params.model | upper }}", &["params.model"]),
        // Quoting must be the last word: a filter after it can undo it.
        (
            "echo {{ params.model | shell_quote | replace(\"'\", '') }}",
            &["params.model"],
        ),
        ("echo {{ ds ~ params.model }}", &["params.model"]),
        ("{% for r in params.regions %}{{ r }}{% endfor %}", &["r"]),
        ("{% set m = params.model %}{{ m }}", &["m"]),
        // Another filter rewrites the quoting, and the block's own text with it.
        (
            "{% filter replace(\"'\", '') %}{{ params.a | shell_quote }}{% endfilter %}",
            &["params.a", "a filter block"],
        ),
        (
            "{% filter upper %}echo hi{% endfilter %}",
            &["a filter block"],
        ),
        // A macro's output is untraced where it is emitted.
        (
            "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(params.a) }}",
            &["m"],
        ),
        ("{% include 'other' %}", &["another template"]),
        (
            "{% if params.full %}{{ params.a }}{% endif %}",
            &["params.a"],
        ),
    ];
    for (src, want) in cases {
        assert_eq!(&names(src), want, "{src}");
    }
}

#[test]
fn quoted_values_are_refused_where_quoting_does_not_hold() {
    let cases = [
        ("echo '{{ item | shell_quote }}'", Context::SingleQuotes),
        ("echo \"x {{ item | shell_quote }}\"", Context::DoubleQuotes),
        (
            "echo \"it's\" \"{{ item | shell_quote }}\"",
            Context::DoubleQuotes,
        ),
        (
            "cat <<EOF\n{{ item | shell_quote }}\nEOF",
            Context::HereDocument,
        ),
        (
            "cat <<'EOF'\n{{ item | shell_quote }}\nEOF",
            Context::HereDocument,
        ),
        ("echo x # {{ item | shell_quote }}", Context::Comment),
        (
            "echo '{% filter shell_quote %}{{ item }}{% endfilter %}'",
            Context::SingleQuotes,
        ),
    ];
    for (src, want) in cases {
        let found = unquoted(src, &trusted, &list).unwrap();
        assert_eq!(found.len(), 1, "{src}: {found:?}");
        assert_eq!(found[0].context, want, "{src}");
        assert!(found[0].quoted, "{src}");
    }
}

#[test]
fn lines_are_counted_within_the_template() {
    let found = unquoted("set -eu\necho {{ ds }}\necho {{ item }}\n", &trusted, &list).unwrap();
    assert_eq!(
        found,
        vec![Unquoted {
            line: 3,
            expr: "item".into(),
            name: "item".into(),
            context: Context::Word,
            quoted: false,
            glued: false,
        }]
    );
}

#[test]
fn a_template_that_does_not_parse_is_an_error() {
    assert!(unquoted("echo {{ oops", &trusted, &list).is_err());
}

/// The bypasses a review found in the first version of the check: each must be refused.
#[test]
fn review_bypasses_are_refused() {
    let cases: &[(&str, Context)] = &[
        // Arithmetic expansion evaluates `$(...)` inside single quotes.
        (
            "sleep $(( {{ params.p | shell_quote }} * 60 ))",
            Context::Expansion,
        ),
        // Double quotes nested in a command substitution inside double quotes.
        (
            "name=\"$(basename \"{{ params.p | shell_quote }}\")\"",
            Context::DoubleQuotes,
        ),
        // A backslash right before the value escapes its first quote.
        ("echo \\{{ params.x | shell_quote }}", Context::Expansion),
        ("echo ${{ params.x | shell_quote }}", Context::Expansion),
        (
            "echo ${x:-{{ params.x | shell_quote }}}",
            Context::Expansion,
        ),
        (
            "echo `echo {{ params.p | shell_quote }}`",
            Context::Expansion,
        ),
        (
            "echo $'\\' {{ params.p | shell_quote }} '",
            Context::ShellsDiffer,
        ),
        // Found by the run against dash: there `$'a\'` ends at the second quote, so the value
        // lands in the quotes that `b'` opens (bash reads one string).
        (
            "echo $'a\\'b' {{ params.p | shell_quote }} '",
            Context::ShellsDiffer,
        ),
        // An escaped newline keeps the word state: this `#` is a comment.
        ("echo a \\\n#{{ params.p | shell_quote }}", Context::Comment),
        // A backslash-newline in an unquoted here-document does not end it early.
        (
            "cat <<EOF\na\\\nEOF\n{{ params.p | shell_quote }}\nEOF",
            Context::HereDocument,
        ),
    ];
    for (src, want) in cases {
        let found = unquoted(src, &trusted, &list).unwrap();
        assert_eq!(found.len(), 1, "{src}: {found:?}");
        assert_eq!(found[0].context, *want, "{src}");
    }
    // Names the template binds itself are never flow's own, whatever they are called.
    for src in [
        "{% for ds in params.dates %}backfill --date {{ ds }}; {% endfor %}",
        "{% set run_id = params.x %}{{ run_id }}",
        "{% with ts = params.x %}{{ ts }}{% endwith %}",
        "{% macro ds() %}{{ params.x | shell_quote }}{% endmacro %}echo \"{{ ds() }}\"",
        "{% autoescape true %}echo {{ params.p | shell_quote }}{% endautoescape %}",
    ] {
        assert!(!names(src).is_empty(), "{src} passed");
    }
    // Quoting inside a command substitution starts afresh, at the top level or in "...".
    for ok in [
        "out=\"$(basename {{ params.p | shell_quote }})\"",
        "n=$(( {{ params.n }} + 1 )); echo $(echo {{ params.p | shell_quote }}) ${HOME} `date`",
        "x=\"${TMPDIR:-/tmp}/{{ ds }}\"; echo {{ params.p | shell_quote }}",
    ] {
        assert_eq!(names(ok), Vec::<String>::new(), "{ok}");
    }
}

/// Every path through the template counts: a branch or a loop that leaves the quoting
/// different puts a value in quotes on some runs, whatever the source order shows.
#[test]
fn every_path_is_followed() {
    let cases: &[(&str, Context)] = &[
        (
            "echo {% if params.n %}'{% endif %}{{ params.p | shell_quote }}'",
            Context::SingleQuotes,
        ),
        (
            "echo {% if params.n %}x{% else %}\"{% endif %} {{ item | shell_quote }}",
            Context::DoubleQuotes,
        ),
        (
            "echo {% for i in range(params.n) %}\"{% endfor %} {{ item | shell_quote }}",
            Context::DoubleQuotes,
        ),
        (
            "echo {% for i in range(params.n) %}{% else %}'{% endfor %} {{ item | shell_quote }}",
            Context::SingleQuotes,
        ),
        // A constant is the file's own text and is read as such.
        (
            "echo {{ '\"' }}{{ item | shell_quote }}{{ '\"' }}",
            Context::DoubleQuotes,
        ),
        (
            "echo {{ \"'\" ~ \"x\" }} {{ item | shell_quote }}'",
            Context::SingleQuotes,
        ),
        // Quoting flow's own value inside quotes puts the quotes into the text.
        ("echo \"{{ ds | shell_quote }}\"", Context::DoubleQuotes),
    ];
    for (src, want) in cases {
        let found = unquoted(src, &trusted, &list).unwrap();
        assert_eq!(found.len(), 1, "{src}: {found:?}");
        assert_eq!(found[0].context, *want, "{src}");
    }
    for ok in [
        "{% for r in params.regions %}{{ r | shell_quote }} {% endfor %}",
        "echo {% if params.n %}'a'{% else %}\"b\"{% endif %} {{ item | shell_quote }}",
        "echo {{ '\"x\"' }} {{ item | shell_quote }}",
        "cat <<EOF\n{% for i in range(3) %}{{ loop.index }},{% endfor %}\nEOF\necho {{ item | shell_quote }}",
        // A macro is read where it is called: its whole output is quoted here.
        "{% macro m(x) %}'{{ x }}'{% endmacro %}echo {{ m(params.a) | shell_quote }}",
    ] {
        assert_eq!(names(ok), Vec::<String>::new(), "{ok}");
    }
    // A loop that changes the quoting on every round cannot be followed to an end.
    let lost = names("echo $({% for i in range(params.n) %}({% endfor %}{{ ds }})");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(lost[0].contains("loop"), "{lost:?}");
}

/// A quoted list is one word per item: glued to other text, the items after the first would
/// be words of their own.
#[test]
fn quoted_lists_stand_alone() {
    let glued = |src: &str| -> Vec<String> {
        unquoted(src, &trusted, &list)
            .unwrap()
            .into_iter()
            .filter(|u| u.glued)
            .map(|u| u.name)
            .collect()
    };
    for (src, want) in [
        (
            "cp --files={{ params.regions | shell_quote }} x",
            "params.regions",
        ),
        (
            "echo {{ params.regions | shell_quote }}.csv",
            "params.regions",
        ),
        (
            "echo {{ params.regions | shell_quote }}{{ params.model | shell_quote }}",
            "params.regions",
        ),
        // A backslash-newline joins the lines into one word.
        (
            "echo x\\\n{{ params.regions | shell_quote }}",
            "params.regions",
        ),
    ] {
        assert_eq!(glued(src), vec![want.to_string()], "{src}");
    }
    for ok in [
        "for r in {{ params.regions | shell_quote }}; do echo \"$r\"; done",
        "echo --name={{ params.model | shell_quote }}.csv",
        "echo --regions={{ params.regions | join(',') | shell_quote }}",
        "echo $(cat {{ item | shell_quote }})",
        // Whether an output or an item is a list only its rendering tells: checked there.
        "echo /data/{{ item | shell_quote }}.csv {{ tasks.a.output | shell_quote }}\"x\"",
    ] {
        assert_eq!(names(ok), Vec::<String>::new(), "{ok}");
    }
}

/// The check of the text as rendered: what the template check cannot know (a secret's value)
/// is read there.
#[test]
fn the_rendered_text_is_checked_again() {
    let ctx = minijinja::context!(
        secrets => minijinja::context!(Q => "it's", PLAIN => "s3cr3t"),
        params => minijinja::context!(p => "x; id", list => vec!["a", "b"]),
    );
    let render = |src: &str| crate::template::render_shell(src, &ctx);
    assert_eq!(
        render("echo {{ secrets.PLAIN }} {{ params.p | shell_quote }}").unwrap(),
        "echo s3cr3t 'x; id'"
    );
    let err = render("echo {{ secrets.Q }} {{ params.p | shell_quote }}").unwrap_err();
    assert!(
        err.contains("'...' quotes") && err.contains("nothing ran"),
        "{err}"
    );
    assert_eq!(
        render("for x in {{ params.list | shell_quote }}; do :; done").unwrap(),
        "for x in 'a' 'b'; do :; done"
    );
    let err = render("cp --from={{ params.list | shell_quote }} .").unwrap_err();
    assert!(err.contains("glued"), "{err}");
    let err = render("cp {{ params.list | shell_quote }}.bak").unwrap_err();
    assert!(err.contains("glued"), "{err}");
    // A string glued to text stays one word.
    assert_eq!(
        render("cp --to={{ params.p | shell_quote }}.bak").unwrap(),
        "cp --to='x; id'.bak"
    );
    let err = render("echo \"{% filter shell_quote %}{{ params.p }}{% endfilter %}\"").unwrap_err();
    assert!(err.contains("\"...\" quotes"), "{err}");
}

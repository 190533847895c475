//! The shell check against real shells. The lexer is a model of how a shell reads quotes; here
//! the model meets dash (`/bin/sh` on Debian) and bash: random commands made of quoting pieces,
//! branches and loops, that both checks accept, are rendered with a hostile param on every
//! branch and loop count and run. The payload must never run. `FLOW_FUZZ_CASES=N` runs more.

use std::process::{Command, Stdio};

use proptest::prelude::*;

use super::*;

/// Junk first, so that a word split of the value never names a command; then every way to run
/// `touch pwned` that a shell might read as code.
const PAYLOAD: &str =
    "x'\"; touch pwned; echo \"' $(touch pwned) `touch pwned` \\\n touch pwned # ${x:=1}";

const RAW: &[&str] = &[
    " ",
    "echo ",
    "x",
    "'",
    "\"",
    "\\",
    "$(",
    ")",
    "`",
    "${v:-",
    "}",
    "#",
    "\n",
    "$((1+",
    "))",
    " <<EOF\n",
    "\nEOF\n",
    " <<'EOF'\n",
    "$'",
    ";",
    "|",
    "=",
    "-",
    "(",
    "$",
    "\t",
];

const EMITS: &[&str] = &[
    "{{ params.p | shell_quote }}",
    "{{ params.list | shell_quote }}",
    "{{ secrets.S }}",
    "{{ ds }}",
    "{{ '\"' }}",
    "{{ \"'\" }}",
];

#[derive(Debug, Clone)]
enum Part {
    Raw(&'static str),
    Emit(&'static str),
    If(Vec<Part>, Vec<Part>),
    For(Vec<Part>),
}

fn part() -> impl Strategy<Value = Part> {
    let leaf = prop_oneof![
        4 => proptest::sample::select(RAW).prop_map(Part::Raw),
        2 => proptest::sample::select(EMITS).prop_map(Part::Emit),
    ];
    leaf.prop_recursive(2, 24, 4, |inner| {
        prop_oneof![
            (
                proptest::collection::vec(inner.clone(), 0..4),
                proptest::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(a, b)| Part::If(a, b)),
            proptest::collection::vec(inner, 0..4).prop_map(Part::For),
        ]
    })
}

fn write(parts: &[Part], out: &mut String) {
    for p in parts {
        match p {
            Part::Raw(s) | Part::Emit(s) => out.push_str(s),
            Part::If(a, b) => {
                out.push_str("{% if params.b %}");
                write(a, out);
                out.push_str("{% else %}");
                write(b, out);
                out.push_str("{% endif %}");
            }
            Part::For(body) => {
                out.push_str("{% for i in range(params.n) %}");
                write(body, out);
                out.push_str("{% endfor %}");
            }
        }
    }
}

fn trusted(name: &str) -> bool {
    matches!(name, "ds" | "secrets.S" | "params.b" | "params.n" | "range")
}

fn list(name: &str) -> bool {
    name == "params.list"
}

fn cases() -> u32 {
    std::env::var("FLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

/// Runs `text` with `shell` in a fresh folder; true when the payload ran there.
fn payload_ran(shell: &str, text: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let _ = Command::new("timeout")
        .args(["5", shell, "-c", text])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    dir.path().join("pwned").exists()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_accepted_command_runs_the_payload(parts in proptest::collection::vec(part(), 1..10)) {
        let mut source = String::new();
        write(&parts, &mut source);
        let accepted = unquoted(&source, &trusted, &list).is_ok_and(|found| found.is_empty());
        if !accepted {
            return Ok(());
        }
        for b in [false, true] {
            for n in [0, 1, 2] {
                for secret in ["s3cr3t", "it's"] {
                    let ctx = minijinja::context!(
                        params => minijinja::context!(
                            p => PAYLOAD, list => vec![PAYLOAD, "b"], b => b, n => n
                        ),
                        secrets => minijinja::context!(S => secret),
                        ds => "2026-03-01",
                    );
                    let Ok(text) = crate::template::render_shell(&source, &ctx) else {
                        continue;
                    };
                    for shell in ["sh", "bash"] {
                        prop_assert!(
                            !payload_ran(shell, &text),
                            "{shell} ran the payload: template {source:?} rendered as {text:?}"
                        );
                    }
                }
            }
        }
    }
}

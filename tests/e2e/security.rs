//! SECURITY.md's rules, attacked through the real binary: values from outside a DAG file never
//! reach a shell as code, on SQLite and PostgreSQL.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::api_server::{Server, state_is, token, trigger};
use crate::harness::*;

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dags");

/// A value that runs `touch pwned` (three ways) wherever a shell reads it as code, whatever
/// quotes the command put around it. Tasks run in the DAG folder, so that is where the mark
/// would appear; the value has no `/`, so it can also be one file name.
const PAYLOAD: &str = "x'\"; touch pwned; echo \"' $(touch pwned) `touch pwned`";

fn copy_shipped(env: &Env, files: &[&str]) {
    for f in files {
        std::fs::copy(Path::new(SHIPPED).join(f), env.dags().join(f)).unwrap();
    }
}

/// The issue's own attack: `flow run model_health_check --param 'model=x"; id > /tmp/pwned'`.
/// The shipped DAG passes the param as env: and shell_quote, so the command runs with the
/// value as plain text, and it reaches the task's output unchanged.
#[test]
fn a_param_given_on_the_command_line_never_runs_as_shell() {
    each_db(|env, db| {
        copy_shipped(&env, &["model_health_check.yaml"]);
        let mark = env.dags().join("pwned");
        let evil = PAYLOAD.to_string();
        for auc in ["0.5", "0.9"] {
            let run = env.flow_json(
                &[
                    "run",
                    "model_health_check",
                    "--param",
                    &format!("model={evil}"),
                    "--param",
                    &format!("simulated_auc={auc}"),
                    "--json",
                ],
                0,
            );
            assert_eq!(run["state"], "success", "{db:?} {run:#}");
            assert!(!mark.exists(), "{db:?}: the param ran as shell code");
            let fetched = task(&run, "fetch_metrics", None);
            assert_eq!(fetched["output"]["model"], evil.as_str(), "{db:?}");
            let said = if auc == "0.5" { "alert" } else { "healthy" };
            let run_id = run["run_id"].as_str().unwrap();
            let log = env.flow_ok(&["tasks", "logs", run_id, said], 0);
            assert!(log.contains(&evil), "{db:?}: {log}");
            let log = env.flow_ok(&["tasks", "logs", run_id, "record"], 0);
            assert!(
                log.contains(&format!("checked {evil} at ")),
                "{db:?}: {log}"
            );
        }
    });
}

/// The same through the REST API with an operator's token: the shipped DAGs that took
/// `params.workdir` and `params.regions` (and their map items) into commands run the hostile
/// values as names of folders and files.
#[test]
fn params_and_map_items_from_the_api_never_run_as_shell() {
    each_db(|env, db| {
        copy_shipped(
            &env,
            &["revenue_by_country.yaml", "events_daily_report.yaml"],
        );
        let operator = token(&env, "ops", "operator");
        let server = Server::start(&env, "standalone");
        let mark = env.dags().join("pwned");
        let evil = PAYLOAD.to_string();
        let workdir = env.path("work").join(&evil).display().to_string();
        let revenue = trigger(
            &server,
            &operator,
            "revenue_by_country",
            json!({"params": {"workdir": workdir}}),
        );
        assert_eq!(revenue.status, 201, "{db:?} {:#}", revenue.body);
        let events = trigger(
            &server,
            &operator,
            "events_daily_report",
            json!({"params": {"regions": ["eu", evil], "events_per_region": 10}}),
        );
        assert_eq!(events.status, 201, "{db:?} {:#}", events.body);
        for created in [revenue, events] {
            let run_id = created.body["run_id"].as_str().unwrap();
            let run = server.wait_run(
                &operator,
                run_id,
                Duration::from_secs(120),
                state_is(&["success", "failed"]),
            );
            assert_eq!(run["state"], "success", "{db:?} {run:#}");
        }
        assert!(!mark.exists(), "{db:?}: a param or item ran as shell code");
        // The hostile workdir is a folder like any other.
        assert!(
            Path::new(&workdir).join("revenue").is_dir(),
            "{db:?}: nothing written under the hostile workdir"
        );
        server.stop();
    });
}

/// A DAG that splices a string param into a command is refused with its position and the way
/// out, by `dags validate` and by loading (a trigger of it finds no such DAG).
#[test]
fn a_command_splicing_a_param_is_refused_where_it_is_written() {
    each_db(|env, db| {
        env.dag(
            "spliced.yaml",
            "id: spliced\nparams:\n  model: { type: string, default: m }\ntasks:\n  a:\n    operator: shell\n    command: \"echo {{ params.model }}\"\n",
        );
        let out = env.flow(&["dags", "validate"]);
        assert_eq!(out.status.code(), Some(1), "{db:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let at = format!("{}:7:14: ", env.dags().join("spliced.yaml").display());
        assert!(stderr.contains(&at), "{db:?}: {stderr}");
        assert!(
            stderr.contains("did you mean to pass it in env:?")
                && stderr.contains("{{ params.model | shell_quote }}"),
            "{db:?}: {stderr}"
        );
        let out = env.flow(&["run", "spliced", "--param", "model=x; touch pwned"]);
        assert_ne!(out.status.code(), Some(0), "{db:?}: a refused DAG ran");
        assert!(!env.dags().join("pwned").exists());
    });
}

/// What the template check cannot know before a run, a secret's value, is read in the text as
/// rendered: a secret holding a quote would put the quoted param inside quotes, so the try
/// fails before anything runs, and says why.
#[test]
fn a_secret_holding_a_quote_cannot_open_a_command_to_a_param() {
    each_db(|mut env, db| {
        env.secrets.push(("QUOTE".into(), "it's".into()));
        env.dag(
            "quoted_secret.yaml",
            "id: quoted_secret\nparams:\n  model: { type: string, default: m }\ntasks:\n  a:\n    operator: shell\n    command: echo {{ secrets.QUOTE }} {{ params.model | shell_quote }}\n",
        );
        env.flow_ok(&["dags", "validate"], 0);
        let param = format!("model={PAYLOAD}");
        let run = env.flow_json(&["run", "quoted_secret", "--param", &param, "--json"], 1);
        assert_eq!(run["state"], "failed", "{db:?} {run:#}");
        let run_id = run["run_id"].as_str().unwrap();
        let log = env.flow_ok(&["tasks", "logs", run_id, "a"], 0);
        assert!(
            log.contains("would stand inside '...' quotes") && log.contains("nothing ran"),
            "{db:?}: {log}"
        );
        assert!(!env.dags().join("pwned").exists(), "{db:?}: the param ran");
    });
}

/// What a task's process sees: flow's settings, the database URL and the secrets it does not
/// name stay with the scheduler; the ones it names come as `FLOW_SECRET_NAME`.
const ENV_DAG: &str = r#"
id: clean_env
tasks:
  look:
    operator: shell
    env: { NAMED: "{{ secrets.NAMED }}" }
    command: |
      for v in FLOW_DATABASE_URL FLOW_HOME FLOW_DAGS_FOLDER FLOW_SECRET_OTHER FLOW_SECRET_PEM; do
        eval "test -z \"\${$v+set}\"" || echo "leaked: $v"
      done
      test "$FLOW_SECRET_NAMED" = "$NAMED" || echo "named secret missing"
      test -n "$PATH" || echo "PATH missing"
      echo "task $FLOW_TASK_ID of $FLOW_DAG_ID"
      echo "named $FLOW_SECRET_NAMED"
  print_secrets:
    operator: shell
    env: { PEM: "{{ secrets.PEM }}" }
    command: |
      printf '%s\n' "$PEM"
      # Made at run time: the DAG's own text (kept in the database) must not hold them.
      echo "database password db-pw-$((4000 + 242)) and connection password conn-pw-$((7000 + 777))"
"#;

#[test]
fn tasks_get_a_clean_environment_and_every_password_is_masked() {
    each_db(|mut env, db| {
        // PostgreSQL here trusts every local login, so a URL with a password still connects.
        if db == Db::Postgres {
            env.db_url = env.db_url.replacen("postgres@", "postgres:db-pw-4242@", 1);
        }
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----";
        env.secrets.push(("NAMED".into(), "named-value-1".into()));
        env.secrets.push(("OTHER".into(), "other-value-2".into()));
        env.secrets.push(("PEM".into(), pem.into()));
        env.config(
            "[connections.wh]\ntype = \"postgres\"\nurl = \"postgres://loader:conn-pw-7777@127.0.0.1:5432/wh\"\n",
        );
        env.dag("clean_env.yaml", ENV_DAG);
        let run = env.flow_json(&["run", "clean_env", "--json"], 0);
        assert_eq!(run["state"], "success", "{db:?} {run:#}");
        let run_id = run["run_id"].as_str().unwrap();
        let look = env.flow_ok(&["tasks", "logs", run_id, "look"], 0);
        assert!(!look.contains("leaked"), "{db:?}: {look}");
        assert!(!look.contains("missing"), "{db:?}: {look}");
        assert!(look.contains("task look of clean_env"), "{db:?}: {look}");
        assert!(look.contains("named ***"), "{db:?}: {look}");
        let printed = env.flow_ok(&["tasks", "logs", run_id, "print_secrets"], 0);
        let mut secret_texts = vec!["conn-pw-7777", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"];
        secret_texts.push("BKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj");
        if db == Db::Postgres {
            secret_texts.push("db-pw-4242");
        }
        for text in &secret_texts {
            assert!(!printed.contains(text), "{db:?}: {text} shown in {printed}");
            // flow.toml is where the host's operator wrote the connection's password.
            for (path, bytes) in env.home_files() {
                assert!(
                    path.ends_with("flow.toml") || !contains(&bytes, text),
                    "{db:?}: {text} written to {}",
                    path.display()
                );
            }
        }
        assert!(
            printed.contains("connection password ***"),
            "{db:?}: {printed}"
        );
    });
}

const WAREHOUSE_DAG: &str = r#"
id: wh_bind
params:
  country: { type: string, default: DE }
  since: { type: string, default: "2026-03-01T00:00:00Z" }
  min: { type: number, default: 5 }
tasks:
  setup:
    operator: warehouse
    connection: wh
    sql:
      - "CREATE TABLE IF NOT EXISTS sales (country text, ts timestamptz, amount numeric)"
      - "CREATE TABLE IF NOT EXISTS picked (country text, total numeric)"
      - "DELETE FROM sales; INSERT INTO sales VALUES ('DE', '2026-03-02T00:00:00Z', 10), ('FR', '2026-03-02T00:00:00Z', 20), ('DE', '2026-02-01T00:00:00Z', 40)"
  pick:
    operator: warehouse
    depends_on: [setup]
    connection: wh
    sql: "INSERT INTO picked SELECT $country, sum(amount) FROM sales WHERE country = $country AND ts >= $since AND amount >= $min -- not $unused"
    bind: { country: "{{ params.country }}", since: "{{ params.since }}", min: "{{ params.min }}" }
"#;

/// `warehouse.sql` takes outside values only as bound parameters, typed by the server: a string
/// param full of SQL is a value, and splicing one into a statement is refused.
#[test]
fn warehouse_statements_take_values_only_as_parameters() {
    each_db(|env, db| {
        // The warehouse is a PostgreSQL database of its own (made by a first flow command).
        let Some(wh) = Env::new(Db::Postgres) else {
            return;
        };
        wh.flow_ok(&["dags", "list"], 0);
        env.config(&format!(
            "[connections.wh]\ntype = \"postgres\"\nurl = \"{}\"\n",
            wh.db_url
        ));
        env.dag("wh_bind.yaml", WAREHOUSE_DAG);
        let run = env.flow_json(&["run", "wh_bind", "--json"], 0);
        assert_eq!(run["state"], "success", "{db:?} {run:#}");
        let evil = "DE'; DROP TABLE sales; --";
        let run = env.flow_json(
            &[
                "run",
                "wh_bind",
                "--param",
                &format!("country={evil}"),
                "--json",
            ],
            0,
        );
        assert_eq!(run["state"], "success", "{db:?} {run:#}");
        assert_eq!(
            wh.psql("SELECT country || '=' || coalesce(total::text, 'none') FROM picked ORDER BY total NULLS LAST")
                .unwrap(),
            format!("DE=10\n{evil}=none\n"),
            "{db:?}"
        );
        assert_eq!(wh.psql("SELECT count(*) FROM sales").unwrap().trim(), "3");

        env.dag(
            "wh_spliced.yaml",
            "id: wh_spliced\nparams:\n  c: { type: string, default: DE }\ntasks:\n  t:\n    operator: warehouse\n    connection: wh\n    sql: \"DELETE FROM sales WHERE country = '{{ params.c }}'\"\n",
        );
        let out = env.flow(&["dags", "validate"]);
        assert_eq!(out.status.code(), Some(1), "{db:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("wh_spliced.yaml:8:10: ")
                && stderr.contains("bind it as a parameter")
                && stderr.contains("$c"),
            "{db:?}: {stderr}"
        );
    });
}

/// `http.url`: a param fills the path only percent-encoded; it never chooses the host unless
/// the task lists `allowed_hosts`, which then holds at run time.
#[test]
fn http_urls_keep_their_host_whatever_a_param_holds() {
    each_db(|env, db| {
        let (port, receiver) = http_receiver(vec![(200, "application/json", "{\"ok\": true}"); 2]);
        env.dag(
            "calls.yaml",
            &format!(
                r#"
id: calls
params:
  model: {{ type: string, default: m }}
  target: {{ type: string, default: "http://127.0.0.1:{port}/ok" }}
tasks:
  encoded:
    operator: http
    url: "http://127.0.0.1:{port}/models/{{{{ params.model | urlencode }}}}?v=1"
  chosen:
    operator: http
    depends_on: [encoded]
    trigger_rule: all_done
    url: "{{{{ params.target }}}}"
    allowed_hosts: ["127.0.0.1"]
"#
            ),
        );
        let run = env.flow_json(
            &[
                "run",
                "calls",
                "--param",
                "model=a/../@evil.test?x=1#y z",
                "--json",
            ],
            0,
        );
        assert_eq!(run["state"], "success", "{db:?} {run:#}");
        let seen = receiver.join().unwrap();
        let first = seen[0].0.lines().next().unwrap().to_string();
        assert_eq!(
            first, "GET /models/a%2F..%2F%40evil.test%3Fx%3D1%23y%20z?v=1 HTTP/1.1",
            "{db:?}"
        );
        assert!(seen[1].0.starts_with("GET /ok "), "{db:?} {:?}", seen[1]);
        // A host that allowed_hosts does not list fails the try before any request.
        let run = env.flow_json(
            &[
                "run",
                "calls",
                "--param",
                "target=http://169.254.169.254/latest/meta-data/",
                "--json",
            ],
            1,
        );
        let err = task(&run, "chosen", None)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains("not in allowed_hosts"), "{db:?}: {err}");

        env.dag(
            "forged.yaml",
            "id: forged\nparams:\n  base: { type: string, default: x }\ntasks:\n  t:\n    operator: http\n    url: \"https://{{ params.base }}/v1\"\n",
        );
        let out = env.flow(&["dags", "validate"]);
        assert_eq!(out.status.code(), Some(1), "{db:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("forged.yaml:7:10: ")
                && stderr.contains("would set the URL's scheme or host")
                && stderr.contains("allowed_hosts"),
            "{db:?}: {stderr}"
        );
    });
}

/// What a task prints is bounded on its way to the log: a line is cut at 64 KiB and the rest
/// of it dropped as it comes, so the scheduler's memory stays flat however much a task writes
/// without a newline; an output over 1 MiB fails the try with a message; a fresh home is its
/// owner's alone.
#[test]
fn what_a_task_prints_is_bounded_and_flow_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    each_db(|env, db| {
        env.dag(
            "noisy.yaml",
            r#"
id: noisy
params:
  mib: { type: integer, default: 0 }
tasks:
  flood:
    operator: shell
    command: |
      echo before
      head -c {{ params.mib }}m /dev/zero | tr '\0' x
      echo
      touch flooded
      sleep 1
      echo after
  big_output:
    operator: shell
    depends_on: [flood]
    command: |
      { printf '"'; head -c 2000000 /dev/zero | tr '\0' a; printf '"'; } > "$FLOW_OUTPUT"
"#,
        );
        // A fresh home, made by flow itself.
        let home = env.path("fresh/home");
        let peak = |mib: &str| -> u64 {
            let _ = std::fs::remove_file(env.dags().join("flooded"));
            let mut child = env
                .command(&["run", "noisy", "--param", &format!("mib={mib}")])
                .env("FLOW_HOME", &home)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            wait_for_file(
                &env.dags().join("flooded"),
                Duration::from_secs(120),
                "the flood",
            );
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
            child.wait().unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap()
        };
        let quiet = peak("0");
        let flooded = peak("256");
        assert!(
            flooded < quiet + 32 * 1024,
            "{db:?}: 256 MiB on one line raised flow's peak RSS from {quiet} KiB to {flooded} KiB"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home), 0o700, "{db:?}: FLOW_HOME");
        if db == Db::Sqlite {
            // The harness's SQLite database is outside this home; flow made it all the same.
            let file = env.home().join("flow.db");
            assert_eq!(mode(&file), 0o600, "{db:?}: the database");
        }
        let logs: Vec<_> = walk_files(&home.join("logs"));
        assert!(!logs.is_empty(), "{db:?}: no logs under {}", home.display());
        for log in &logs {
            assert_eq!(mode(log), 0o600, "{db:?}: {}", log.display());
        }
        let flood_log = logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .find(|t| t.contains("before") && t.contains("line cut at 64 KiB"))
            .unwrap_or_else(|| panic!("{db:?}: no log with a cut line"));
        let longest = flood_log.lines().map(str::len).max().unwrap();
        assert!(longest < 65 * 1024, "{db:?}: a log line of {longest} bytes");
        assert!(flood_log.contains("after"), "{db:?}: {}", &flood_log[..200]);
        let big = logs
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .find(|t| t.contains("task big_output"))
            .unwrap_or_else(|| panic!("{db:?}: no log of big_output"));
        assert!(
            big.contains("FLOW_OUTPUT holds more than 1024 KiB"),
            "{db:?}: {big}"
        );
    });
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A DAG holds at most `max_queued_runs_per_dag` queued runs: a trigger past it answers 429 (the
/// API) or fails (the CLI) with a message, and other DAGs are not affected.
#[test]
fn triggers_past_the_queued_runs_cap_are_refused() {
    each_db(|env, db| {
        env.config("max_queued_runs_per_dag = 2\n");
        for id in ["capped", "other"] {
            env.dag(
                &format!("{id}.yaml"),
                &format!("id: {id}\ntasks:\n  t: {{ operator: shell, command: 'true' }}\n"),
            );
        }
        let operator = token(&env, "ops", "operator");
        // `flow server` runs no scheduler: triggered runs stay queued.
        let server = Server::start(&env, "server");
        let keyed = |key: &str| {
            server.call_with(
                "POST",
                "/api/v1/dags/capped/runs",
                Some(&operator),
                Some(&json!({})),
                &[("Idempotency-Key", key)],
            )
        };
        let created = trigger(&server, &operator, "capped", json!({}));
        assert_eq!(created.status, 201, "{db:?} {:#}", created.body);
        let first = keyed("k1");
        assert_eq!(first.status, 201, "{db:?} {:#}", first.body);
        // A retry of a trigger that went through is answered as one, full queue or not.
        let retry = keyed("k1");
        assert_eq!(
            (retry.status, &retry.body["run_id"]),
            (200, &first.body["run_id"]),
            "{db:?} {:#}",
            retry.body
        );
        assert_eq!(keyed("k2").status, 429, "{db:?}");
        let refused = trigger(&server, &operator, "capped", json!({}));
        assert_eq!(refused.status, 429, "{db:?} {:#}", refused.body);
        assert_eq!(refused.body["error"]["code"], "too_many_queued_runs");
        assert!(
            refused.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_queued_runs_per_dag"),
            "{db:?} {:#}",
            refused.body
        );
        let out = env.flow(&["trigger", "capped"]);
        assert_eq!(out.status.code(), Some(1), "{db:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("has 2 queued runs"), "{db:?}: {stderr}");
        assert_eq!(trigger(&server, &operator, "other", json!({})).status, 201);
        let queued = env.flow_json(&["runs", "list", "--dag", "capped", "--json"], 0);
        assert_eq!(queued.as_array().unwrap().len(), 2, "{db:?}");
        server.stop();
    });
}

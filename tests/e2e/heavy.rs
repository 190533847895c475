//! Heavy steps: the `sql` operator on DataFusion, end to end through `flow run`.

use crate::harness::*;

const EVENTS: &str = "\
user_id,ts,amount
1,2026-01-01T10:00:00Z,50
1,2026-01-02T10:00:00Z,20
1,2026-01-02T11:00:00Z,5
2,2026-01-02T12:00:00Z,40
3,2026-01-02T13:00:00Z,70
3,2026-01-03T00:00:00Z,99
";

const PROFILES: &str = r#"{"user_id": 1, "country": "DE"}
{"user_id": 2, "country": "FR"}
{"user_id": 3, "country": "DE"}
"#;

const SQL_PIPELINE: &str = r#"
id: sql_pipeline
schedule: "@daily"
start_date: 2026-01-01
params:
  min_amount: { type: integer, default: 10 }
  country: { type: string, default: "DE" }
tasks:
  by_country:
    operator: sql
    sources:
      events: { path: "data/events.csv" }
      profiles: { path: "data/profiles.json" }
    query: |
      SELECT p.country, count(*) AS n, sum(e.amount) AS total
      FROM events e JOIN profiles p ON e.user_id = p.user_id
      WHERE e.ts >= $start AND e.ts < $end AND e.amount >= $min
      GROUP BY p.country
    bind:
      start: "{{ data_interval_start }}"
      end: "{{ data_interval_end }}"
      min: "{{ params.min_amount }}"
    output: { path: "out/by_country/ds={{ ds }}/", format: parquet }
  read_back:
    operator: sql
    depends_on: [by_country]
    sources:
      t: { path: "{{ tasks.by_country.output.path }}" }
    query: "SELECT country, n, total FROM t ORDER BY country"
  one_country:
    operator: sql
    sources:
      profiles: { path: "data/profiles.json" }
    query: "SELECT count(*) AS users FROM profiles WHERE country = $country"
    bind: { country: "{{ params.country }}" }
  partitioned:
    operator: sql
    sources:
      events: { path: "data/events.csv" }
    query: "SELECT user_id, amount FROM events"
    output: { path: "out/parts/", format: csv, partition_by: [user_id], mode: append }
"#;

const SQL_ERRORS: &str = r#"
id: sql_errors
defaults: { retries: 2, retry_delay: 1s }
tasks:
  ddl:
    operator: sql
    query: "CREATE TABLE t AS SELECT 1 AS x"
  syntax:
    operator: sql
    sources: { events: { path: "data/events.csv" } }
    query: |
      SELECT user_id
      FROM events WHERE (amount > 1
  syntax_mid:
    operator: sql
    sources: { events: { path: "data/events.csv" } }
    query: "SELECT user_id,, amount FROM events"
  unknown_column:
    operator: sql
    sources: { events: { path: "data/events.csv" } }
    query: "SELECT nope FROM events"
  unbound:
    operator: sql
    sources: { events: { path: "data/events.csv" } }
    query: "SELECT * FROM events WHERE amount > $min"
  too_many_rows:
    operator: sql
    query: "SELECT value FROM generate_series(1, 1500)"
"#;

/// An environment whose flow.toml has the connection `lake` to the S3 emulator, its secret key
/// given as a secret so that the tests can check it is never written down.
fn lake_env(endpoint: &str) -> Env {
    lake_env_with(endpoint, "")
}

fn lake_env_with(endpoint: &str, more_toml: &str) -> Env {
    let mut env = Env::new(Db::Sqlite).unwrap();
    env.secrets
        .push(("LAKE_KEY".into(), "lake-secret-9f2c".into()));
    env.config(&format!("{more_toml}\n{}", s3_connection("lake", endpoint)));
    env
}

fn write_data(env: &Env) {
    std::fs::create_dir_all(env.dags().join("data")).unwrap();
    std::fs::write(env.dags().join("data/events.csv"), EVENTS).unwrap();
    std::fs::write(env.dags().join("data/profiles.json"), PROFILES).unwrap();
}

#[test]
fn sql_joins_binds_writes_parquet_and_reads_it_back() {
    let env = Env::new(Db::Sqlite).unwrap();
    write_data(&env);
    env.dag("sql_pipeline.yaml", SQL_PIPELINE);
    let run = env.flow_json(
        &[
            "run",
            "sql_pipeline",
            "--logical-date",
            "2026-01-02",
            "--json",
        ],
        0,
    );
    assert_eq!(run["state"], "success", "{run:#}");

    // 2026-01-02 only, amount >= 10: DE = user 1 (20) + user 3 (70), FR = user 2 (40).
    let out = &task(&run, "by_country", None)["output"];
    assert_eq!(out["rows"], 2, "{out:#}");
    assert_eq!(out["path"], "out/by_country/ds=2026-01-02/");
    assert_eq!(out["columns"], serde_json::json!(["country", "n", "total"]));
    assert!(out["bytes"].as_u64().unwrap() > 0, "{out:#}");
    let files: Vec<_> = std::fs::read_dir(env.dags().join("out/by_country/ds=2026-01-02"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !files.is_empty() && files.iter().all(|f| f.ends_with(".parquet")),
        "{files:?}"
    );

    assert_eq!(
        task(&run, "read_back", None)["output"],
        serde_json::json!([
            {"country": "DE", "n": 2, "total": 90},
            {"country": "FR", "n": 1, "total": 40},
        ])
    );
    assert_eq!(
        task(&run, "one_country", None)["output"],
        serde_json::json!([{"users": 2}])
    );

    // A param is a bound value, never SQL: a quote in it matches nothing instead of
    // changing the query.
    let run2 = env.flow_json(
        &[
            "run",
            "sql_pipeline",
            "--logical-date",
            "2026-01-02",
            "--param",
            "country=DE' OR '1'='1",
            "--json",
        ],
        0,
    );
    assert_eq!(
        task(&run2, "one_country", None)["output"],
        serde_json::json!([{"users": 0}])
    );

    // A second overwrite leaves one result, not two; an append adds files.
    let again = task(&run2, "by_country", None);
    assert_eq!(again["output"]["rows"], 2);
    let read_back = task(&run2, "read_back", None);
    assert_eq!(
        read_back["output"].as_array().unwrap().len(),
        2,
        "{read_back:#}"
    );
    let parts = env.dags().join("out/parts");
    for user in ["1", "2", "3"] {
        let dir = parts.join(format!("user_id={user}"));
        let n = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .count();
        assert_eq!(n, 2, "two appends leave two files in {}", dir.display());
    }
    assert_eq!(task(&run2, "partitioned", None)["output"]["rows"], 6);

    let run_id = run["run_id"].as_str().unwrap();
    let log = env.flow_ok(&["tasks", "logs", run_id, "by_country"], 0);
    assert!(log.contains("sql: wrote 2 rows"), "{log}");
}

#[test]
fn sql_rejects_statements_and_names_the_place_of_an_error() {
    let env = Env::new(Db::Sqlite).unwrap();
    write_data(&env);
    env.dag("sql_errors.yaml", SQL_ERRORS);
    let run = env.flow_json(&["run", "sql_errors", "--json"], 1);
    assert_eq!(run["state"], "failed");
    let error = |id: &str| -> String {
        let t = task(&run, id, None);
        assert_eq!(t["state"], "failed", "{t:#}");
        // Each of these is the query's fault: no retry can mend it.
        assert_eq!(t["tries"], 1, "{t:#}");
        t["error"].as_str().unwrap_or_default().to_string()
    };
    let e = error("ddl");
    assert!(e.contains("must be one SELECT"), "{e}");
    let e = error("syntax");
    assert!(
        e.contains("SQL error at query line 2, column 30: Expected: ), found: EOF"),
        "{e}"
    );
    assert!(e.contains("| FROM events WHERE (amount > 1"), "{e}");
    let e = error("syntax_mid");
    assert!(e.contains("SQL error at query line 1, column 16"), "{e}");
    assert!(!e.contains("SQL error: SQL error"), "{e}");
    let e = error("unknown_column");
    assert!(e.contains("nope"), "{e}");
    let e = error("unbound");
    assert!(e.contains("uses $min, but `bind:` has no `min`"), "{e}");
    let e = error("too_many_rows");
    assert!(e.contains("more than 1000 rows"), "{e}");
}

#[test]
fn http_posts_json_and_fails_a_try_on_an_unexpected_status() {
    let env = Env::new(Db::Sqlite).unwrap();
    // The first try of `flaky` gets 503 and is retried; the second gets 201.
    let (port, receiver) = http_receiver(vec![
        (200, "application/json", r#"{"accepted": true, "id": 7}"#),
        (503, "text/plain", "busy"),
        (201, "text/plain", "created"),
    ]);
    env.dag(
        "calls.yaml",
        &format!(
            r#"
id: calls
tasks:
  notify:
    operator: http
    method: POST
    url: "http://127.0.0.1:{port}/hook"
    headers: {{ x-flow-run: "{{{{ run_id }}}}" }}
    json: {{ ds: "{{{{ ds }}}}", rows: 3 }}
  flaky:
    operator: http
    depends_on: [notify]
    method: PUT
    url: "http://127.0.0.1:{port}/thing"
    body: "payload"
    expect_status: [201]
    retries: 1
    retry_delay: 1s
"#
        ),
    );
    let run = env.flow_json(&["run", "calls", "--json"], 0);
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(
        task(&run, "notify", None)["output"],
        serde_json::json!({"accepted": true, "id": 7})
    );
    let flaky = task(&run, "flaky", None);
    assert_eq!(flaky["tries"], 2, "{flaky:#}");
    assert_eq!(
        flaky["output"],
        serde_json::json!({"status": 201, "body": "created"})
    );
    let seen = receiver.join().unwrap();
    assert!(seen[0].0.starts_with("POST /hook "), "{seen:?}");
    let run_id = run["run_id"].as_str().unwrap();
    assert!(
        seen[0]
            .0
            .to_ascii_lowercase()
            .contains(&format!("x-flow-run: {}", run_id.to_ascii_lowercase())),
        "{seen:?}"
    );
    let sent: serde_json::Value = serde_json::from_str(&seen[0].1).unwrap();
    assert_eq!(sent["rows"], 3);
    assert_eq!(sent["ds"], run["logical_date"].as_str().unwrap()[..10]);
    assert!(seen[1].0.starts_with("PUT /thing "), "{seen:?}");
    assert_eq!(seen[2].1, "payload");
    let log = env.flow_ok(&["tasks", "logs", run_id, "flaky", "--try", "1"], 0);
    assert!(log.contains("answered 503, expected [201]: busy"), "{log}");
}

#[test]
fn sql_reads_and_writes_s3_through_a_connection() {
    let Some((endpoint, bucket)) = s3_bucket("sql") else {
        return;
    };
    let env = lake_env(&endpoint);
    s3_put(&endpoint, &bucket, "raw/events.csv", EVENTS.as_bytes());
    s3_put(
        &endpoint,
        &bucket,
        "raw/profiles/part-0.json",
        PROFILES.as_bytes(),
    );
    env.dag(
        "lake.yaml",
        &format!(
            r#"
id: lake
tasks:
  totals:
    operator: sql
    sources:
      events: {{ path: "s3://{bucket}/raw/events.csv", connection: lake }}
      profiles: {{ path: "s3://{bucket}/raw/profiles/", format: json, connection: lake }}
    query: |
      SELECT p.country, sum(e.amount) AS total
      FROM events e JOIN profiles p ON e.user_id = p.user_id GROUP BY p.country
    output: {{ path: "s3://{bucket}/out/totals/", connection: lake }}
  check:
    operator: sql
    depends_on: [totals]
    sources:
      t: {{ path: "{{{{ tasks.totals.output.path }}}}", connection: lake }}
    query: "SELECT country, total FROM t ORDER BY country"
"#
        ),
    );
    let run = env.flow_json(&["run", "lake", "--json"], 0);
    assert_eq!(run["state"], "success", "{run:#}");
    let totals = &task(&run, "totals", None)["output"];
    assert_eq!(totals["rows"], 2, "{totals:#}");
    assert_eq!(totals["path"], format!("s3://{bucket}/out/totals/"));
    let keys = s3_keys(&endpoint, &bucket, "out/totals/");
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.ends_with(".parquet")),
        "{keys:?}"
    );
    assert_eq!(
        task(&run, "check", None)["output"],
        serde_json::json!([
            {"country": "DE", "total": 244},
            {"country": "FR", "total": 40},
        ])
    );
    for (path, bytes) in env.home_files() {
        assert!(
            !contains(&bytes, "lake-secret-9f2c"),
            "the connection's secret is in {}",
            path.display()
        );
    }
}

#[test]
fn s3_put_copy_and_delete_objects_and_prefixes() {
    let Some((endpoint, bucket)) = s3_bucket("objects") else {
        return;
    };
    let env = lake_env(&endpoint);
    write_data(&env);
    std::fs::create_dir_all(env.dags().join("data/batch/sub")).unwrap();
    std::fs::write(env.dags().join("data/batch/a.csv"), "x\n1\n").unwrap();
    std::fs::write(env.dags().join("data/batch/sub/b c.csv"), "x\n2\n").unwrap();
    env.dag(
        "objects.yaml",
        &format!(
            r#"
id: objects
tasks:
  upload:     {{ operator: s3_put, file: data/events.csv, to: "s3://{bucket}/in/{{{{ ds }}}}.csv", connection: lake }}
  upload_dir: {{ operator: s3_put, file: data/batch/, to: "s3://{bucket}/batch/", connection: lake }}
  copy_one:   {{ operator: s3_copy, depends_on: [upload], from: "s3://{bucket}/in/{{{{ ds }}}}.csv", to: "s3://{bucket}/archive/", connection: lake }}
  copy_dir:   {{ operator: s3_copy, depends_on: [upload_dir], from: "s3://{bucket}/batch/", to: "s3://{bucket}/batch_copy/", connection: lake }}
  clean:      {{ operator: s3_delete, depends_on: [copy_dir], url: "s3://{bucket}/batch/", connection: lake }}
  clean_none: {{ operator: s3_delete, url: "s3://{bucket}/never/", connection: lake }}
"#
        ),
    );
    let run = env.flow_json(&["run", "objects", "--json"], 0);
    assert_eq!(run["state"], "success", "{run:#}");
    let ds = &run["logical_date"].as_str().unwrap()[..10];
    let events = EVENTS.len();
    assert_eq!(
        task(&run, "upload", None)["output"],
        serde_json::json!({"objects": 1, "bytes": events})
    );
    assert_eq!(
        task(&run, "upload_dir", None)["output"],
        serde_json::json!({"objects": 2, "bytes": 8})
    );
    assert_eq!(task(&run, "copy_one", None)["output"]["objects"], 1);
    assert_eq!(
        task(&run, "copy_dir", None)["output"],
        serde_json::json!({"objects": 2, "bytes": 8})
    );
    assert_eq!(
        task(&run, "clean", None)["output"],
        serde_json::json!({"objects": 2, "bytes": 8})
    );
    assert_eq!(
        task(&run, "clean_none", None)["output"],
        serde_json::json!({"objects": 0, "bytes": 0})
    );
    assert_eq!(s3_keys(&endpoint, &bucket, "in/"), [format!("in/{ds}.csv")]);
    assert_eq!(
        s3_keys(&endpoint, &bucket, "archive/"),
        [format!("archive/{ds}.csv")]
    );
    assert_eq!(
        s3_keys(&endpoint, &bucket, "batch_copy/"),
        ["batch_copy/a.csv", "batch_copy/sub/b c.csv"]
    );
    assert!(s3_keys(&endpoint, &bucket, "batch/").is_empty());
}

#[test]
fn s3_errors_are_clear() {
    let Some((endpoint, bucket)) = s3_bucket("errors") else {
        return;
    };
    let env = lake_env(&endpoint);
    env.dag(
        "bad.yaml",
        &format!(
            r#"
id: bad
tasks:
  no_bucket: {{ operator: s3_delete, url: "s3://no-such-bucket-{bucket}/x/", connection: lake }}
  no_conn:   {{ operator: s3_delete, url: "s3://{bucket}/x/", connection: nowhere }}
  not_s3:    {{ operator: s3_copy, from: "/tmp/x", to: "s3://{bucket}/y", connection: lake }}
"#
        ),
    );
    let run = env.flow_json(&["run", "bad", "--json"], 1);
    let err = |id: &str| task_error(&run, id);
    assert!(
        err("no_bucket").contains("NoSuchBucket"),
        "{}",
        err("no_bucket")
    );
    assert!(
        err("no_conn").contains("connection `nowhere` is not defined"),
        "{}",
        err("no_conn")
    );
    assert!(
        err("not_s3").contains("is not an s3:// URL"),
        "{}",
        err("not_s3")
    );
}

#[test]
fn warehouse_runs_statements_and_loads_parquet_and_csv_in_one_transaction() {
    // The metadata database doubles as the warehouse: a real PostgreSQL speaking the protocol.
    let Some(mut env) = Env::new(Db::Postgres) else {
        return;
    };
    env.secrets
        .push(("WH_PASSWORD".into(), "wh-pass-77aa".into()));
    let url = env
        .db_url
        .replacen("postgres@", "postgres:{{ secrets.WH_PASSWORD }}@", 1);
    env.config(&format!(
        "[connections.warehouse]\ntype = \"postgres\"\nurl = \"{url}\"\n"
    ));
    write_data(&env);
    env.dag(
        "export.yaml",
        r#"
id: export
tasks:
  score:
    operator: sql
    sources: { events: { path: "data/events.csv" } }
    query: "SELECT user_id, CAST(amount AS DOUBLE) / 100 AS score, 3 AS model_version FROM events"
    output: { path: "out/preds/", format: parquet }
  export:
    operator: warehouse
    depends_on: [score]
    connection: warehouse
    sql: "CREATE TABLE IF NOT EXISTS predictions (user_id bigint, score double precision, model_version int, loaded_at timestamptz DEFAULT now())"
    load: { file: "{{ tasks.score.output.path }}", table: predictions, mode: append }
  export_again:
    operator: warehouse
    depends_on: [export]
    connection: warehouse
    load: { file: "{{ tasks.score.output.path }}", table: public.predictions, mode: append }
  events_csv:
    operator: warehouse
    connection: warehouse
    sql:
      - "CREATE TABLE IF NOT EXISTS raw_events (user_id int, ts timestamptz, amount int)"
      - "INSERT INTO raw_events VALUES (0, now(), 0)"
    load: { file: data/events.csv, table: raw_events, mode: replace }
"#,
    );
    let run = env.flow_json(&["run", "export", "--json"], 0);
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(
        task(&run, "export", None)["output"],
        serde_json::json!({"rows_loaded": 6})
    );
    assert_eq!(task(&run, "export_again", None)["output"]["rows_loaded"], 6);
    assert_eq!(
        env.psql("SELECT count(*), sum(score)::numeric(10,2), min(model_version) FROM predictions")
            .unwrap()
            .trim(),
        "12|5.68|3"
    );
    // `replace` emptied the table in the same transaction as its load: the row the statements
    // inserted is gone.
    assert_eq!(task(&run, "events_csv", None)["output"]["rows_loaded"], 6);
    assert_eq!(
        env.psql("SELECT count(*), sum(amount) FROM raw_events")
            .unwrap()
            .trim(),
        "6|284"
    );

    // A failed load leaves the table as it was.
    env.dag(
        "broken.yaml",
        r#"
id: broken
tasks:
  bad_load:
    operator: warehouse
    connection: warehouse
    sql: "DELETE FROM raw_events"
    load: { file: data/profiles.json, table: raw_events, mode: append }
"#,
    );
    let run = env.flow_json(&["run", "broken", "--json"], 1);
    let err = task(&run, "bad_load", None)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("loading raw_events") && err.contains("country"),
        "{err}"
    );
    assert_eq!(
        env.psql("SELECT count(*) FROM raw_events").unwrap().trim(),
        "6"
    );
    for (path, bytes) in env.home_files() {
        assert!(
            !contains(&bytes, "wh-pass-77aa"),
            "the warehouse password is in {}",
            path.display()
        );
    }
}

#[test]
fn s3_sensor_in_reschedule_mode_frees_its_slot_between_pokes() {
    let Some((endpoint, bucket)) = s3_bucket("sensor") else {
        return;
    };
    // One slot for both tasks: had the sensor held it while waiting, the producer could never
    // run and the sensor would time out.
    let env = lake_env_with(&endpoint, "[pools]\none = 1\n");
    env.dag(
        "sensing.yaml",
        &format!(
            r#"
id: sensing
tasks:
  wait:
    operator: s3_sensor
    url: "s3://{bucket}/in/"
    poke_interval: 1s
    mode: reschedule
    connection: lake
    pool: one
    priority: 10
    timeout: 60s
  produce:
    operator: shell
    pool: one
    command: "sleep 1 && curl -sf -X PUT -H 'content-type: application/octet-stream' --data-binary done {endpoint}/{bucket}/in/_SUCCESS"
"#
        ),
    );
    let run = env.flow_json(&["run", "sensing", "--json"], 0);
    assert_eq!(run["state"], "success", "{run:#}");
    let wait = task(&run, "wait", None);
    assert_eq!(wait["tries"], 1, "a reschedule is not a try: {wait:#}");
    assert_eq!(
        wait["output"],
        serde_json::json!({"objects": 1, "bytes": 4})
    );
    let produce = task(&run, "produce", None);
    let t = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    assert!(
        t(&wait["started_at"]) < t(&produce["started_at"]),
        "{run:#}"
    );
    assert!(t(&produce["ended_at"]) <= t(&wait["ended_at"]), "{run:#}");
    let run_id = run["run_id"].as_str().unwrap();
    let log = env.flow_ok(&["tasks", "logs", run_id, "wait"], 0);
    assert!(
        log.contains("flow: rescheduled: the slot is free until"),
        "{log}"
    );
    assert!(log.contains("1 objects are there"), "{log}");
}

#[test]
fn s3_sensor_timeout_spans_pokes_and_fails_without_retries() {
    let Some((endpoint, bucket)) = s3_bucket("sensor-timeout") else {
        return;
    };
    let env = lake_env(&endpoint);
    env.dag(
        "never.yaml",
        &format!(
            r#"
id: never
defaults: {{ retries: 3, retry_delay: 1s }}
tasks:
  rescheduling:
    operator: s3_sensor
    url: "s3://{bucket}/never/_SUCCESS"
    poke_interval: 1s
    mode: reschedule
    timeout: 3s
    connection: lake
  poking:
    operator: s3_sensor
    url: "s3://{bucket}/never/"
    poke_interval: 500ms
    timeout: 2s
    connection: lake
"#
        ),
    );
    let run = env.flow_json(&["run", "never", "--json"], 1);
    for id in ["rescheduling", "poking"] {
        let t = task(&run, id, None);
        assert_eq!(t["state"], "failed", "{t:#}");
        assert_eq!(t["tries"], 1, "a sensor's timeout is not retried: {t:#}");
        let err = t["error"].as_str().unwrap_or_default();
        assert!(
            err.contains("timed out after") && err.contains("waiting for s3://"),
            "{err}"
        );
    }
}

const SPARK_JOB: &str = r#"
import sys
from pyspark.sql import SparkSession, functions as F

src, dst, min_amount = sys.argv[1], sys.argv[2], int(sys.argv[3])
spark = SparkSession.builder.appName("flow-test").getOrCreate()
df = spark.read.option("header", True).option("inferSchema", True).csv(src)
(df.where(F.col("amount") >= min_amount)
   .groupBy("user_id").agg(F.sum("amount").alias("total"))
   .write.mode("overwrite").parquet(dst))
print("spark job wrote", dst)
spark.stop()
"#;

#[test]
fn spark_local_runs_a_pyspark_job_whose_output_sql_reads() {
    if !spark_available() {
        return;
    }
    let env = Env::new(Db::Sqlite).unwrap();
    write_data(&env);
    std::fs::create_dir_all(env.dags().join("jobs")).unwrap();
    std::fs::write(env.dags().join("jobs/agg.py"), SPARK_JOB).unwrap();
    std::fs::write(
        env.dags().join("jobs/broken.py"),
        "import sys\nprint('about to fail', file=sys.stderr)\nraise SystemExit(3)\n",
    )
    .unwrap();
    env.dag(
        "spark.yaml",
        r#"
id: spark_job
params:
  min_amount: { type: integer, default: 10 }
tasks:
  agg:
    operator: spark
    target: local
    script: jobs/agg.py
    args: ["data/events.csv", "out/spark_totals", "{{ params.min_amount }}"]
    spark_args: ["--conf", "spark.sql.shuffle.partitions=2"]
  check:
    operator: sql
    depends_on: [agg]
    sources: { t: { path: "out/spark_totals/", format: parquet } }
    query: "SELECT user_id, total FROM t ORDER BY user_id"
  broken:
    operator: spark
    target: local
    script: jobs/broken.py
"#,
    );
    let run = env.flow_json(&["run", "spark_job", "--json"], 1);
    let agg = task(&run, "agg", None);
    assert_eq!(agg["state"], "success", "{run:#}");
    assert_eq!(agg["output"], serde_json::json!({"exit_code": 0}));
    // amount >= 10: user 1 has 50 + 20, user 2 has 40, user 3 has 70 + 99.
    assert_eq!(
        task(&run, "check", None)["output"],
        serde_json::json!([
            {"user_id": 1, "total": 70},
            {"user_id": 2, "total": 40},
            {"user_id": 3, "total": 169},
        ])
    );
    let run_id = run["run_id"].as_str().unwrap();
    let log = env.flow_ok(&["tasks", "logs", run_id, "agg"], 0);
    assert!(log.contains("spark job wrote out/spark_totals"), "{log}");
    assert!(log.contains("--master local[*]"), "{log}");
    let broken = task(&run, "broken", None);
    assert_eq!(broken["state"], "failed");
    let err = broken["error"].as_str().unwrap_or_default();
    assert!(err.contains("spark-submit exited with code 3"), "{err}");
    let log = env.flow_ok(&["tasks", "logs", run_id, "broken"], 0);
    assert!(log.contains("about to fail"), "{log}");
}

#[test]
fn the_revenue_example_runs_as_shipped() {
    let env = Env::new(Db::Sqlite).unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dags/revenue_by_country.yaml"
    );
    std::fs::copy(example, env.dags().join("revenue_by_country.yaml")).unwrap();
    let workdir = env.dir.path().join("work");
    let run = env.flow_json(
        &[
            "run",
            "revenue_by_country",
            "--logical-date",
            "2026-01-02",
            "--param",
            &format!("workdir={}", workdir.display()),
            "--json",
        ],
        0,
    );
    assert_eq!(run["state"], "success", "{run:#}");
    let by_country = &task(&run, "by_country", None)["output"];
    assert_eq!(by_country["rows"], 6, "six countries: {by_country:#}");
    let top = task(&run, "top_countries", None)["output"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(top.len(), 3, "{top:?}");
    let revenues: Vec<i64> = top.iter().map(|r| r["revenue"].as_i64().unwrap()).collect();
    assert!(revenues.windows(2).all(|w| w[0] >= w[1]), "{revenues:?}");
}

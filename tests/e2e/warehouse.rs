//! The `warehouse` operator's merge mode on PostgreSQL, and its Redshift path: the file staged to
//! S3 (the emulator) for a COPY that reads from there. No Redshift runs here; the Redshift
//! statements are checked word for word in operators/src/warehouse/statements.rs.

use crate::harness::*;

const SCORES: &str = "user_id,score\n1,0.5\n2,0.25\n3,0.75\n";
const RESCORED: &str = "user_id,score\n2,0.9\n4,0.1\n";

fn pg_env(extra_toml: &str) -> Option<Env> {
    let env = Env::new(Db::Postgres)?;
    let url = env.db_url.clone();
    env.config(&format!(
        "[connections.warehouse]\ntype = \"postgres\"\nurl = \"{url}\"\n{extra_toml}"
    ));
    std::fs::create_dir_all(env.dags().join("data")).unwrap();
    std::fs::write(env.dags().join("data/scores.csv"), SCORES).unwrap();
    std::fs::write(env.dags().join("data/rescored.csv"), RESCORED).unwrap();
    Some(env)
}

#[test]
fn merge_updates_rows_on_the_key_and_inserts_the_rest() {
    let Some(env) = pg_env("") else {
        return;
    };
    env.dag(
        "upsert.yaml",
        r#"
id: upsert
tasks:
  first:
    operator: warehouse
    connection: warehouse
    sql: "CREATE TABLE IF NOT EXISTS merged (user_id int PRIMARY KEY, score float8)"
    load: { file: data/scores.csv, table: merged, mode: merge, key: user_id }
  again:
    operator: warehouse
    depends_on: [first]
    connection: warehouse
    load: { file: data/rescored.csv, table: public.merged, mode: merge, key: [user_id] }
"#,
    );
    let run = env.flow_json(&["run", "upsert", "--json"], 0);
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(task(&run, "first", None)["output"]["rows_loaded"], 3);
    assert_eq!(task(&run, "again", None)["output"]["rows_loaded"], 2);
    assert_eq!(
        env.psql("SELECT string_agg(user_id || '=' || score, ',' ORDER BY user_id) FROM merged")
            .unwrap()
            .trim(),
        "1=0.5,2=0.9,3=0.75,4=0.1"
    );

    env.dag(
        "bad_merge.yaml",
        r#"
id: bad_merge
tasks:
  no_key:
    operator: warehouse
    connection: warehouse
    load: { file: data/scores.csv, table: merged, mode: merge }
  wrong_key:
    operator: warehouse
    connection: warehouse
    sql: "DELETE FROM merged"
    load: { file: data/scores.csv, table: merged, mode: merge, key: id }
  key_on_append:
    operator: warehouse
    connection: warehouse
    load: { file: data/scores.csv, table: merged, key: user_id }
"#,
    );
    let run = env.flow_json(&["run", "bad_merge", "--json"], 1);
    let err = |id: &str| task_error(&run, id);
    assert!(
        err("no_key").contains("mode merge needs `key:`"),
        "{}",
        err("no_key")
    );
    assert!(
        err("wrong_key").contains("load.key \"id\" is not a column of data/scores.csv"),
        "{}",
        err("wrong_key")
    );
    assert!(
        err("key_on_append").contains("`key:` is for mode merge"),
        "{}",
        err("key_on_append")
    );
    // The failed merge's DELETE was rolled back with it.
    assert_eq!(env.psql("SELECT count(*) FROM merged").unwrap().trim(), "4");
}

#[test]
fn redshift_loads_stage_the_file_on_s3_and_delete_the_stage() {
    let Some((endpoint, bucket)) = s3_bucket("stage") else {
        return;
    };
    // PostgreSQL stands in for Redshift's connection: it takes the stage table and refuses
    // Redshift's COPY FROM 's3://...', which shows the statement reached the server after the
    // file was staged.
    let redshift = format!(
        "{}\n[connections.rs]\ntype = \"redshift\"\nurl = \"{{URL}}\"\n\
         iam_role = \"arn:aws:iam::123456789012:role/load\"\nstage = \"s3://{bucket}/stage/\"\n\
         stage_connection = \"lake\"\n\
         [connections.rs_bad_role]\ntype = \"redshift\"\nurl = \"{{URL}}\"\n\
         iam_role = \"arn:aws:iam::1:role/x' IAM_ROLE 'y\"\nstage = \"s3://{bucket}/stage/\"\n\
         stage_connection = \"lake\"\n\
         [connections.rs_no_role]\ntype = \"redshift\"\nurl = \"{{URL}}\"\nstage = \"s3://{bucket}/stage/\"\n\
         [connections.pg]\ntype = \"postgres\"\nurl = \"{{URL}}\"\n",
        s3_connection("lake", &endpoint)
    );
    let Some(mut env) = Env::new(Db::Postgres) else {
        return;
    };
    env.secrets
        .push(("LAKE_KEY".into(), "lake-secret-9f2c".into()));
    let url = env.db_url.clone();
    env.config(&redshift.replace("{URL}", &url));
    std::fs::create_dir_all(env.dags().join("data")).unwrap();
    std::fs::write(env.dags().join("data/scores.csv"), SCORES).unwrap();
    env.dag(
        "setup.yaml",
        "id: setup\ntasks:\n  t:\n    operator: warehouse\n    connection: pg\n    sql:\n      - \"CREATE TABLE staged (user_id int, score float8)\"\n      - \"INSERT INTO staged VALUES (9, 9)\"\n",
    );
    env.flow_ok(&["run", "setup"], 0);
    env.dag(
        "to_redshift.yaml",
        r#"
id: to_redshift
tasks:
  load:
    operator: warehouse
    connection: rs
    load: { file: data/scores.csv, table: staged, mode: replace }
  bad_role:
    operator: warehouse
    connection: rs_bad_role
    load: { file: data/scores.csv, table: staged }
  no_role:
    operator: warehouse
    connection: rs_no_role
    load: { file: data/scores.csv, table: staged }
"#,
    );
    let run = env.flow_json(&["run", "to_redshift", "--json"], 1);
    let err = |id: &str| task_error(&run, id);
    let load = err("load");
    assert!(
        load.contains(&format!("COPY from s3://{bucket}/stage/flow-")) && load.contains("IAM_ROLE"),
        "{load}"
    );
    let run_id = run["run_id"].as_str().unwrap();
    let log = env.flow_ok(&["tasks", "logs", run_id, "load"], 0);
    assert!(
        log.contains(&format!("staged 3 rows at s3://{bucket}/stage/flow-")),
        "{log}"
    );
    assert!(
        log.contains("deleted the stage (") && !log.contains("deleted the stage (0 objects)"),
        "{log}"
    );
    assert_eq!(s3_keys(&endpoint, &bucket, "stage/"), Vec::<String>::new());
    // The replace's DELETE went with the failed COPY.
    assert_eq!(env.psql("SELECT count(*) FROM staged").unwrap().trim(), "1");

    assert!(
        err("bad_role").contains("iam_role `arn:aws:iam::1:role/x")
            && err("bad_role").contains("holds a quote"),
        "{}",
        err("bad_role")
    );
    assert!(
        err("no_role").contains("connection `rs_no_role` has no iam_role"),
        "{}",
        err("no_role")
    );
}

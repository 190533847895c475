//! `spark` with `target: emr`, against the test bed's EMR emulator (which runs each step with a
//! real local spark-submit and writes its logs to moto's S3), through the real AWS SDK.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;
use crate::telemetry::Receiver;

/// A PySpark job: totals per user of a CSV, written as CSV to a local folder.
const TOTALS_JOB: &str = r#"
import sys
from pyspark.sql import SparkSession, functions as F
src, dst = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.appName("totals").getOrCreate()
df = spark.read.option("header", True).option("inferSchema", True).csv(src)
df.groupBy("user_id").agg(F.sum("amount").alias("total")).coalesce(1) \
  .write.mode("overwrite").option("header", True).csv(dst)
print("totals written to " + dst, file=sys.stderr)
spark.stop()
"#;

const EVENTS: &str = "user_id,amount\n1,50\n1,20\n2,40\n3,70\n3,99\n";

/// What an EMR test needs: moto's S3 with a new bucket, the EMR emulator, Spark, and an `Env`
/// whose flow.toml connection `aws` reaches S3 at moto and EMR at the emulator. None (the test
/// returns) when one of them is missing outside CI; under CI=true the harness fails instead.
struct Bed {
    env: Env,
    s3: String,
    bucket: String,
    emr: String,
}

fn emr_bed(bucket_prefix: &str) -> Option<Bed> {
    let (Some((s3, bucket)), Some(emr)) = (s3_bucket(bucket_prefix), emr_endpoint()) else {
        return None;
    };
    if !spark_available() {
        return None;
    }
    let mut env = Env::new(Db::Sqlite).unwrap();
    env.secrets
        .push(("LAKE_KEY".into(), "lake-secret-9f2c".into()));
    env.config(&format!(
        "{}emr_endpoint_url = \"{emr}\"\n",
        s3_connection("aws", &s3)
    ));
    Some(Bed {
        env,
        s3,
        bucket,
        emr,
    })
}

fn write_jobs(env: &Env) {
    let jobs = env.dags().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(jobs.join("totals.py"), TOTALS_JOB).unwrap();
    std::fs::write(
        jobs.join("broken.py"),
        "import sys\nprint('about to fail on emr', file=sys.stderr)\nraise SystemExit(3)\n",
    )
    .unwrap();
    std::fs::write(
        jobs.join("slow.py"),
        "import sys, time\ntime.sleep(float(sys.argv[1]))\nopen(sys.argv[2], 'a').write('done\\n')\n",
    )
    .unwrap();
    std::fs::write(env.dags().join("events.csv"), EVENTS).unwrap();
}

/// A DAG of one EMR task on `cluster` running jobs/slow.py for `seconds`, which then appends
/// `done` to `marker`.
fn slow_step_dag(
    id: &str,
    cluster: &str,
    bucket: &str,
    seconds: u32,
    marker: &std::path::Path,
) -> String {
    format!(
        r#"
id: {id}
tasks:
  step:
    operator: spark
    target: emr
    connection: aws
    cluster_id: {cluster}
    script: jobs/slow.py
    staging: "s3://{bucket}/staging/"
    args: ["{seconds}", "{marker}"]
"#,
        marker = marker.display()
    )
}

/// Waits until a step of `cluster` runs.
fn wait_for_running_step(emr: &str, cluster: &str) {
    let start = Instant::now();
    loop {
        let steps = emr_steps(emr, cluster);
        if steps.iter().any(|s| s["state"] == "RUNNING") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the step never ran: {steps:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a scheduler daemon the way a service manager does.
fn stop_scheduler(mut scheduler: std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(scheduler.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    scheduler.wait().unwrap();
}

fn cluster_state(emr: &str, cluster_id: &str) -> String {
    emr_call(emr, "DescribeCluster", json!({"ClusterId": cluster_id}))["Cluster"]["Status"]["State"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn spark_emr_runs_steps_on_existing_and_transient_clusters_and_copies_a_failures_stderr() {
    let Some(Bed {
        env,
        s3,
        bucket,
        emr,
    }) = emr_bed("emr")
    else {
        return;
    };
    write_jobs(&env);
    let cluster = emr_cluster(&emr, &format!("s3://{bucket}/emr-logs/"));
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    env.dag(
        "emr.yaml",
        &format!(
            r#"
id: emr_job
tasks:
  totals:
    operator: spark
    target: emr
    connection: aws
    cluster_id: {cluster}
    script: jobs/totals.py
    staging: "s3://{bucket}/staging/"
    args: ["{dags}/events.csv", "{out}/totals"]
    spark_args: ["--conf", "spark.sql.shuffle.partitions=2"]
  check:
    operator: sql
    depends_on: [totals]
    sources: {{ t: {{ path: "{out}/totals/", format: csv }} }}
    query: "SELECT user_id, total FROM t ORDER BY user_id"
  broken:
    operator: spark
    target: emr
    connection: aws
    cluster_id: {cluster}
    script: jobs/broken.py
    staging: "s3://{bucket}/staging/"
  transient:
    operator: spark
    target: emr
    connection: aws
    cluster: {{ name: flow-transient, release_label: emr-7.5.0, instance_type: m5.xlarge, instance_count: 1, log_uri: "s3://{bucket}/emr-logs/" }}
    script: "s3://{bucket}/staging/slow.py"
    args: ["0", "{out}/transient.txt"]
"#,
            dags = env.dags().display(),
            out = out.display(),
        ),
    );
    s3_put(
        &s3,
        &bucket,
        "staging/slow.py",
        &std::fs::read(env.dags().join("jobs/slow.py")).unwrap(),
    );
    let run = env.flow_json(&["run", "emr_job", "--json"], 1);
    let run_id = run["run_id"].as_str().unwrap();

    let totals = task(&run, "totals", None);
    assert_eq!(totals["state"], "success", "{run:#}");
    let step_id = totals["output"]["step_id"].as_str().unwrap().to_string();
    assert_eq!(
        totals["output"],
        json!({"cluster_id": cluster, "step_id": step_id, "state": "COMPLETED"})
    );
    assert_eq!(
        task(&run, "check", None)["output"],
        json!([
            {"user_id": 1, "total": 70},
            {"user_id": 2, "total": 40},
            {"user_id": 3, "total": 169},
        ])
    );
    // The local script was uploaded to the staging prefix, and the step ran it from there.
    let staged = s3_keys(&s3, &bucket, "staging/");
    assert!(
        staged.iter().any(|k| k.ends_with("/totals.py")),
        "{staged:?}"
    );
    let steps = emr_steps(&emr, &cluster);
    assert_eq!(steps.len(), 2, "one step per task: {steps:#?}");
    let totals_step = steps
        .iter()
        .find(|s| s["step_id"] == step_id.as_str())
        .unwrap();
    let args = totals_step["args"].to_string();
    assert!(args.contains(&format!("s3://{bucket}/staging/")), "{args}");
    assert!(args.contains("spark.sql.shuffle.partitions=2"), "{args}");

    let broken = task(&run, "broken", None);
    assert_eq!(broken["state"], "failed", "{run:#}");
    let err = broken["error"].as_str().unwrap_or_default();
    assert!(err.contains("ended FAILED"), "{err}");
    let log = env.flow_ok(&["tasks", "logs", run_id, "broken"], 0);
    assert!(
        log.contains("about to fail on emr"),
        "the step's stderr is not in the task log: {log}"
    );

    let transient = task(&run, "transient", None);
    assert_eq!(transient["state"], "success", "{run:#}");
    let made = transient["output"]["cluster_id"].as_str().unwrap();
    assert_ne!(made, cluster);
    assert_eq!(
        std::fs::read_to_string(out.join("transient.txt")).unwrap(),
        "done\n"
    );
    let start = Instant::now();
    while cluster_state(&emr, made) != "TERMINATED" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the transient cluster {made} was not terminated"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        cluster_state(&emr, &cluster),
        "WAITING",
        "an existing cluster is left running"
    );
}

#[test]
fn spark_emr_timeout_cancels_the_step() {
    let Some(Bed {
        env, bucket, emr, ..
    }) = emr_bed("emr-timeout")
    else {
        return;
    };
    write_jobs(&env);
    let cluster = emr_cluster(&emr, &format!("s3://{bucket}/emr-logs/"));
    let dag = slow_step_dag("emr_slow", &cluster, &bucket, 120, &env.path("never"));
    env.dag("slow.yaml", &format!("{dag}    timeout: 4s\n"));
    let run = env.flow_json(&["run", "emr_slow", "--json"], 1);
    let slow = task(&run, "step", None);
    assert_eq!(slow["state"], "failed", "{run:#}");
    assert!(
        slow["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out after 4s"),
        "{run:#}"
    );
    // The step is cancelled once its processes are gone.
    let start = Instant::now();
    let steps = loop {
        let steps = emr_steps(&emr, &cluster);
        if steps.iter().all(|s| s["state"] == "CANCELLED")
            || start.elapsed() > Duration::from_secs(20)
        {
            break steps;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(steps.len(), 1, "{steps:#?}");
    assert_eq!(
        steps[0]["state"], "CANCELLED",
        "the timed-out step is cancelled"
    );
}

#[test]
fn kill_9_mid_emr_step_reattaches_and_submits_the_step_once() {
    let Some(Bed {
        env,
        s3,
        bucket,
        emr,
    }) = emr_bed("emr-kill")
    else {
        return;
    };
    write_jobs(&env);
    env.config(&format!(
        "lease_timeout = \"2s\"\n{}emr_endpoint_url = \"{emr}\"\n",
        s3_connection("aws", &s3)
    ));
    let cluster = emr_cluster(&emr, &format!("s3://{bucket}/emr-logs/"));
    let marker = env.path("step-ran");
    env.dag(
        "crash.yaml",
        &slow_step_dag("emr_crash", &cluster, &bucket, 8, &marker),
    );
    let mut scheduler = env.spawn(&["scheduler"]);
    let run_id = env.flow_ok(&["trigger", "emr_crash"], 0).trim().to_string();
    wait_for_running_step(&emr, &cluster);
    kill_9(&mut scheduler); // mid-step

    let restarted = env.spawn(&["scheduler"]);
    let run = env.wait_run(&run_id, Duration::from_secs(90));
    stop_scheduler(restarted);
    assert_eq!(run["state"], "success", "{run:#}");
    let steps = emr_steps(&emr, &cluster);
    assert_eq!(steps.len(), 1, "the step was submitted again: {steps:#?}");
    assert_eq!(steps[0]["state"], "COMPLETED");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "done\n");
    let step = task(&run, "step", None);
    assert_eq!(step["output"]["step_id"], steps[0]["step_id"]);
    let tries = step["tries"].as_i64().unwrap();
    let log = env.flow_ok(
        &[
            "tasks",
            "logs",
            &run_id,
            "step",
            "--try",
            &tries.to_string(),
        ],
        0,
    );
    assert!(log.contains("re-attached to step"), "{log}");
}

#[test]
fn clearing_a_running_emr_task_cancels_its_step_and_submits_a_new_one() {
    let Some(Bed {
        env, bucket, emr, ..
    }) = emr_bed("emr-clear")
    else {
        return;
    };
    write_jobs(&env);
    let cluster = emr_cluster(&emr, &format!("s3://{bucket}/emr-logs/"));
    let marker = env.path("step-ran");
    env.dag(
        "clear.yaml",
        &slow_step_dag("emr_clear", &cluster, &bucket, 6, &marker),
    );
    let scheduler = env.spawn(&["scheduler"]);
    let run_id = env.flow_ok(&["trigger", "emr_clear"], 0).trim().to_string();
    wait_for_running_step(&emr, &cluster);
    env.flow_ok(&["tasks", "clear", &run_id, "step"], 0);
    let run = env.wait_run(&run_id, Duration::from_secs(90));
    stop_scheduler(scheduler);
    assert_eq!(run["state"], "success", "{run:#}");
    let steps = emr_steps(&emr, &cluster);
    assert_eq!(steps.len(), 2, "{steps:#?}");
    assert_eq!(
        steps[0]["state"], "CANCELLED",
        "the cleared try's step: {steps:#?}"
    );
    assert_eq!(steps[1]["state"], "COMPLETED");
    assert_eq!(
        task(&run, "step", None)["output"]["step_id"],
        steps[1]["step_id"]
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "done\n");
}

#[test]
fn an_ml_operator_runs_its_heavy_step_as_an_emr_step() {
    let Some(Bed {
        env,
        s3,
        bucket,
        emr,
    }) = emr_bed("emr-ml")
    else {
        return;
    };
    let cluster = emr_cluster(&emr, &format!("s3://{bucket}/emr-logs/"));
    let mut assignments = String::from("unit,variant\n");
    let mut outcomes = String::from("unit,value\n");
    for unit in 0..600 {
        let variant = if unit % 2 == 0 {
            "control"
        } else {
            "treatment"
        };
        assignments.push_str(&format!("{unit},{variant}\n"));
        // The treatment converts twice as often as the control.
        let every = if unit % 2 == 0 { 10 } else { 5 };
        if unit % every == 1 || unit % every == 0 {
            outcomes.push_str(&format!("{unit},1\n"));
        }
    }
    std::fs::write(env.dags().join("assignments.csv"), assignments).unwrap();
    std::fs::write(env.dags().join("outcomes.csv"), outcomes).unwrap();
    // This emulator's Spark reads and writes local paths only (no S3 filesystem in a pip
    // pyspark), so the job's result goes to a local `scratch`; on EMR it defaults to `staging`.
    let scratch = env.path("scratch");
    env.dag(
        "ab.yaml",
        &format!(
            r#"id: ab
tasks:
  here:
    operator: experiment
    experiment: t_here
    assignments: {{ path: assignments.csv }}
    outcomes: {{ path: outcomes.csv }}
  on_emr:
    operator: experiment
    engine: spark
    spark: {{ target: emr, cluster_id: {cluster}, connection: aws, staging: "s3://{bucket}/staging/", scratch: "{scratch}" }}
    experiment: t_emr
    assignments: {{ path: assignments.csv }}
    outcomes: {{ path: outcomes.csv }}
"#,
            scratch = scratch.display()
        ),
    );
    let run = env.flow_json(&["run", "ab", "--json"], 0);
    let here = &task(&run, "here", None)["output"];
    let on_emr = &task(&run, "on_emr", None)["output"];
    assert_eq!(here["variants"][0]["units"], 300, "{here:#}");
    assert_eq!(on_emr, here, "the EMR step's sums give other statistics");
    // One step, running the job flow ships, uploaded once to the staging prefix.
    let steps = emr_steps(&emr, &cluster);
    assert_eq!(steps.len(), 1, "{steps:#?}");
    assert_eq!(steps[0]["state"], "COMPLETED");
    assert!(
        steps[0]["args"].to_string().contains("/flow_ml_job.py"),
        "{steps:#?}"
    );
    let staged = s3_keys(&s3, &bucket, "staging/");
    assert!(
        staged.iter().any(|k| k.ends_with("/flow_ml_job.py")),
        "{staged:?}"
    );
}

/// A traced EMR task: its submission and its step are spans under the try's span, naming the
/// cluster and the step, and the step's Spark job gets the try's context as a conf.
#[test]
fn an_emr_step_is_in_the_runs_trace() {
    let Some(Bed {
        env, bucket, emr, ..
    }) = emr_bed("emr-trace")
    else {
        return;
    };
    let Some(receiver) = Receiver::start(&env) else {
        return;
    };
    let jobs = env.dags().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(
        jobs.join("traced.py"),
        "import sys\nfrom pyspark.sql import SparkSession\n\
         spark = SparkSession.builder.appName('traced').getOrCreate()\n\
         open(sys.argv[1], 'w').write(spark.sparkContext.getConf().get('spark.flow.traceparent', ''))\n\
         spark.stop()\n",
    )
    .unwrap();
    let cluster = emr_cluster(&emr, &format!("s3://{bucket}/emr-logs/"));
    let seen = env.path("traceparent.txt");
    env.dag(
        "traced.yaml",
        &format!(
            "id: emr_traced\ntasks:\n  step:\n    operator: spark\n    target: emr\n    \
             connection: aws\n    cluster_id: {cluster}\n    script: jobs/traced.py\n    \
             staging: \"s3://{bucket}/staging/\"\n    args: [\"{}\"]\n",
            seen.display()
        ),
    );
    let out = env
        .command(&["run", "emr_traced", "--json"])
        .envs(receiver.vars())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let trace_id = run["trace_id"].as_str().unwrap();
    let step_id = task(&run, "step", None)["output"]["step_id"]
        .as_str()
        .unwrap()
        .to_string();

    let try_span = receiver.wait_span(trace_id, "step", "flow-run");
    for phase in ["emr.submit", "emr.step"] {
        let span = receiver.wait_span(trace_id, phase, "flow-run");
        assert_eq!(span["parent_span_id"], try_span["span_id"], "{span:#}");
        assert_eq!(
            span["attributes"]["cluster_id"],
            cluster.as_str(),
            "{span:#}"
        );
        assert_eq!(span["attributes"]["step_id"], step_id.as_str(), "{span:#}");
    }
    let step = receiver.wait_span(trace_id, "emr.step", "flow-run");
    assert_eq!(step["attributes"]["state"], "COMPLETED", "{step:#}");
    // The Spark job was handed the try's context.
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        format!("00-{trace_id}-{}-01", try_span["span_id"].as_str().unwrap())
    );
    // And the step's arguments carry it to the driver's and executors' environments.
    let steps = emr_steps(&emr, &cluster);
    let args = steps[0]["args"].to_string();
    assert!(args.contains("spark.executorEnv.TRACEPARENT=00-"), "{args}");
    assert!(
        args.contains("spark.yarn.appMasterEnv.TRACEPARENT=00-"),
        "{args}"
    );
}

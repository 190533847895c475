//! `flow tasks test DAG TASK`: one task run alone (see [`flow_engine::scheduler::task_test`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use flow_engine::Dag;
use flow_engine::scheduler::task_test::{TaskTest, TestEnv, TestOutcome, given_outputs, test_task};
use flow_engine::store::{ModelRegistry, RunStore, TaskOutput};
use tokio_util::sync::CancellationToken;

use crate::cli::{Global, TaskTestArgs};
use crate::context::{Ctx, engine, engine_err, find_dag, open, parse_logical, usage};

pub(crate) async fn run(g: &Global, args: TaskTestArgs) -> Result<u8> {
    let ctx = open(g).await?;
    let dag = find_dag(&engine(&ctx).await?, &args.dag)?;
    let params = dag.params_from_cli(&args.params).map_err(usage)?;
    let logical_date = parse_logical(&args.date, &dag)?;
    let given = given_outputs(&args.outputs).map_err(engine_err)?;
    let mut outputs = match &args.outputs_from {
        Some(run_id) => past_outputs(&ctx, &dag, &args.task, run_id).await?,
        None => Vec::new(),
    };
    outputs.retain(|o| !given.iter().any(|g| g.task_id == o.task_id));
    outputs.extend(given);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
    let env = TestEnv {
        registry: Arc::new(flow_operators::registry(ctx.settings.connections.clone())),
        secrets: ctx.secrets.clone(),
        home: ctx.settings.home.clone(),
        models: Some(ctx.store.clone() as Arc<dyn ModelRegistry>),
        log_path: PathBuf::from("/dev/stderr"),
        record: args.record.then(|| ctx.store.clone() as Arc<dyn RunStore>),
        shutdown,
    };
    let req = TaskTest {
        task_id: args.task.clone(),
        params,
        logical_date,
        outputs,
        map_index: args.map_index,
    };
    let tested = test_task(&dag, req, env).await.map_err(engine_err)?;
    if let Some(run_id) = &tested.run_id {
        // The log went to the recorded try's file, where `flow tasks logs` finds it.
        if let Ok(log) = std::fs::read_to_string(&tested.log_path) {
            eprint!("{log}");
        }
        eprintln!("flow: recorded run {run_id}");
    }
    match tested.outcome {
        TestOutcome::Success { output } => {
            if let Some(output) = output {
                println!("{}", serde_json::to_string_pretty(&output)?);
            }
            Ok(0)
        }
        TestOutcome::Skipped => {
            eprintln!(
                "flow: task '{}' skipped: its 'when' rendered false",
                args.task
            );
            Ok(0)
        }
        TestOutcome::Failed { message } => {
            eprintln!("flow: task '{}' failed: {message}", args.task);
            Ok(1)
        }
    }
}

/// The outputs of the task's upstreams in a past run of the same DAG.
async fn past_outputs(ctx: &Ctx, dag: &Dag, task: &str, run_id: &str) -> Result<Vec<TaskOutput>> {
    let run = ctx
        .store
        .get_run(run_id)
        .await?
        .ok_or_else(|| usage(format!("--outputs-from: no run '{run_id}'")))?;
    if run.dag_id != dag.id {
        return Err(usage(format!(
            "--outputs-from: run '{run_id}' is of DAG '{}', not '{}'",
            run.dag_id, dag.id
        )));
    }
    let upstream: Vec<String> = dag
        .ancestors(task)
        .into_iter()
        .map(str::to_string)
        .collect();
    if upstream.is_empty() {
        return Ok(Vec::new());
    }
    Ok(ctx.store.outputs(run_id, &upstream).await?)
}

//! `trigger_dag`: starts a run of another DAG with params, and with `wait: true` follows it to
//! its end and fails when it fails (Airflow's TriggerDagRunOperator).
//!
//! Once per parent try: the child run is created under the key `trigger_dag:RUN:TASK:MAP:TRY`
//! (a repeat of the key answers the first run), and its id is recorded as the try's external
//! work before the wait, so a try requeued by a shutdown or orphaned by a crash re-attaches to
//! the same child instead of starting another. A retry after a failure is a new try and starts
//! a new child, as a retried Airflow task would.

use std::time::Duration;

use async_trait::async_trait;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use flow_engine::state::RunState;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::error::fatal;
use crate::ml::Num;

pub struct TriggerDag;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    dag: String,
    #[serde(default)]
    params: serde_json::Map<String, Json>,
    #[serde(default)]
    wait: Option<Num<bool>>,
    #[serde(default)]
    poke_interval: Option<String>,
}

const DEFAULT_POKE: Duration = Duration::from_secs(5);

impl Config {
    fn poke(&self) -> Result<Duration, OperatorError> {
        match &self.poke_interval {
            None => Ok(DEFAULT_POKE),
            Some(s) => flow_engine::schedule::parse_duration(s)
                .map_err(|e| fatal(format!("trigger_dag: poke_interval: {e}"))),
        }
    }
}

/// The key that makes one child per parent try.
fn child_key(ctx: &TaskContext) -> String {
    format!(
        "trigger_dag:{}:{}:{}:{}",
        ctx.run_id,
        ctx.task_id,
        ctx.map_index.unwrap_or(-1),
        ctx.try_number
    )
}

#[async_trait]
impl Operator for TriggerDag {
    fn name(&self) -> &'static str {
        "trigger_dag"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["dag"],
            optional: &["params", "wait", "poke_interval"],
            code: &[],
            shell: &[],
            url: &[],
            // Which DAG runs is the author's choice, never a param's or an output's.
            program: &["dag"],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: Config = serde_json::from_value(config.clone())
            .map_err(|e| fatal(format!("trigger_dag: {e}")))?;
        let poke = cfg.poke()?;
        let runs = ctx.runs.clone().ok_or_else(|| {
            fatal("trigger_dag: starting runs is not possible here (flow tasks test records none)")
        })?;
        let earlier = ctx
            .external
            .as_ref()
            .and_then(|e| e.get("run_id"))
            .and_then(Json::as_str)
            .map(str::to_string);
        let run_id = match earlier {
            Some(run_id) => {
                ctx.log
                    .line(&format!("flow: re-attached to run {run_id}"))
                    .await;
                run_id
            }
            None => {
                let run_id = runs.trigger(&cfg.dag, &cfg.params, &child_key(ctx)).await?;
                if !ctx.record_external(json!({ "run_id": run_id })).await {
                    return Err(OperatorError::Retryable(
                        "trigger_dag: the try lost its lease before recording its child run".into(),
                    ));
                }
                ctx.log
                    .line(&format!("flow: triggered run {run_id} of DAG {}", cfg.dag))
                    .await;
                run_id
            }
        };
        let wait = cfg.wait.is_some_and(|w| w.0);
        loop {
            let state = runs
                .run_state(&run_id)
                .await?
                .ok_or_else(|| fatal(format!("trigger_dag: run {run_id} no longer exists")))?;
            let ended = matches!(state, RunState::Success | RunState::Failed);
            if !wait || ended {
                if state == RunState::Failed && wait {
                    return Err(fatal(format!(
                        "trigger_dag: run {run_id} of DAG {} failed",
                        cfg.dag
                    )));
                }
                return Ok(Some(json!({ "run_id": run_id, "state": state.as_str() })));
            }
            tokio::time::sleep(poke).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_takes_wait_as_text_and_refuses_unknown_keys() {
        let cfg: Config = serde_json::from_value(json!({
            "dag": "child", "params": {"n": 3}, "wait": "true", "poke_interval": "1s"
        }))
        .unwrap();
        assert!(cfg.wait.is_some_and(|w| w.0));
        assert_eq!(cfg.poke().unwrap(), Duration::from_secs(1));
        let bad = serde_json::from_value::<Config>(json!({"dag": "child", "wiat": true}));
        assert!(bad.is_err());
    }
}

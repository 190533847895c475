//! [`RunLauncher`] for the executor: `trigger_dag` starts a manual run of another DAG's current
//! version, once per key, and reads its state.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::DagCatalog;
use super::runs::manual_run;
use crate::dag::{Dag, ParamType, parse_dag};
use crate::operator::{OperatorError, Registry, RunLauncher};
use crate::state::RunState;
use crate::store::{KeyedRun, Store, StoreError};

pub(crate) struct Launcher {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
}

fn unreachable_db(e: StoreError) -> OperatorError {
    OperatorError::Retryable(format!("trigger_dag: cannot reach the database: {e}"))
}

/// Params as the child DAG declares them: a templated value renders to text, so text given for
/// a number, boolean, list or object param is read as a command line's `--param` is.
fn typed(
    dag: &Dag,
    params: &serde_json::Map<String, Json>,
) -> Result<serde_json::Map<String, Json>, String> {
    let mut out = serde_json::Map::new();
    for (name, value) in params {
        let declared = dag.params.iter().find(|p| &p.name == name);
        let value = match (declared, value) {
            (Some(p), Json::String(text)) if p.kind != ParamType::String => p
                .kind
                .parse_cli(text)
                .map_err(|e| format!("param '{name}' of DAG '{}': {e}", dag.id))?,
            _ => value.clone(),
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

#[async_trait]
impl RunLauncher for Launcher {
    async fn trigger(
        &self,
        dag_id: &str,
        params: &serde_json::Map<String, Json>,
        key: &str,
    ) -> Result<String, OperatorError> {
        let fatal = |m: String| OperatorError::Fatal(format!("trigger_dag: {m}"));
        // The DAG as the scheduler last recorded it: a worker reads no DAGs folder.
        let row = self
            .store
            .get_dag(dag_id)
            .await
            .map_err(unreachable_db)?
            .filter(|r| r.active)
            .ok_or_else(|| fatal(format!("no DAG '{dag_id}' is loaded")))?;
        let stored = self
            .store
            .dag_source(dag_id, &row.version)
            .await
            .map_err(unreachable_db)?
            .ok_or_else(|| {
                fatal(format!(
                    "version {} of DAG '{dag_id}' is not stored",
                    row.version
                ))
            })?;
        let dag = parse_dag(
            Path::new(&stored.fileloc),
            &stored.source,
            self.registry.as_ref(),
            &DagCatalog::parse_options(),
        )
        .map_err(|p| {
            let first = p.first().map(|p| p.to_string()).unwrap_or_default();
            fatal(format!("DAG '{dag_id}' does not parse: {first}"))
        })?;
        let params = typed(&dag, params).map_err(fatal)?;
        let run = manual_run(&dag, &params, None).map_err(|e| fatal(e.to_string()))?;
        // Keys never expire here: the same parent try must find its child however late.
        let created = self
            .store
            .create_run_keyed(&run, key, DateTime::<Utc>::UNIX_EPOCH)
            .await
            .map_err(unreachable_db)?;
        Ok(match created {
            KeyedRun::Created => run.run_id,
            KeyedRun::Existing(run_id) => run_id,
        })
    }

    async fn run_state(&self, run_id: &str) -> Result<Option<RunState>, OperatorError> {
        let run = self.store.get_run(run_id).await.map_err(unreachable_db)?;
        Ok(run.map(|r| r.state))
    }
}

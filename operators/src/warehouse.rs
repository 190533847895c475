//! `warehouse`: statements, then a file loaded into a table, on a PostgreSQL-protocol warehouse
//! (PostgreSQL itself, Redshift), in one transaction.
//!
//! On PostgreSQL the load is `COPY table (columns) FROM STDIN` with the file's own column names,
//! fed as CSV while DataFusion reads the file (parquet, csv or json; local or `s3://`), so a file
//! of any size streams through ([`load`]). Redshift's COPY reads only from S3: for a `redshift`
//! connection the file is staged as parquet under the connection's `stage` and loaded with
//! `COPY ... FROM 's3://...' IAM_ROLE ... FORMAT AS PARQUET`, and the stage is deleted whatever
//! happened ([`redshift`]). `replace` empties the table with DELETE rather than TRUNCATE: on
//! Redshift TRUNCATE commits at once, which would leave the table empty if the load then failed.
//! `merge` upserts on `key:` through a session stage table and `MERGE`.
//!
//! Values reach `sql` statements only as parameters (`bind:` -> `$name`, see [`bind`]): validation
//! refuses a param, output or item spliced into a statement's text, as it does for `sql`.

mod bind;
mod load;
mod redshift;
mod statements;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, SqlSafeStr, Statement, TypeInfo};

use self::bind::Placeholders;

use crate::connections::{Connections, WarehouseTarget};
use crate::error::fatal;
use crate::storage::Format;

pub struct Warehouse {
    connections: Arc<Connections>,
}

impl Warehouse {
    pub fn new(connections: Arc<Connections>) -> Warehouse {
        Warehouse { connections }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    connection: String,
    sql: Option<Statements>,
    /// `$name` in a statement -> its value, sent as a parameter.
    #[serde(default)]
    bind: BTreeMap<String, Json>,
    load: Option<Load>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Statements {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Load {
    file: String,
    table: String,
    #[serde(default)]
    mode: Mode,
    format: Option<Format>,
    /// Where an `s3://` file is read from (the warehouse connection is the other one).
    connection: Option<String>,
    /// The columns a `merge` matches rows on.
    key: Option<Key>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Key {
    One(String),
    Many(Vec<String>),
}

impl Load {
    /// The merge key's columns, quoted: given exactly when the mode is merge.
    fn key(&self) -> Result<Vec<String>, OperatorError> {
        let key = match &self.key {
            None => Vec::new(),
            Some(Key::One(k)) => vec![k.clone()],
            Some(Key::Many(k)) => k.clone(),
        };
        match (self.mode, key.is_empty()) {
            (Mode::Merge, true) => Err(fatal(
                "load: mode merge needs `key:`, the column(s) rows are matched on",
            )),
            (Mode::Append | Mode::Replace, false) => Err(fatal(
                "load: `key:` is for mode merge (append and replace match no rows)",
            )),
            _ => Ok(key.iter().map(|k| quote_ident(k)).collect()),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Append,
    Replace,
    Merge,
}

/// A database error: the server's message (and its position, for a statement), never the URL.
fn db_error(what: &str, e: sqlx::Error) -> OperatorError {
    match &e {
        sqlx::Error::Database(d) => fatal(format!("{what}: {}", d.message())),
        // The connection's troubles (I/O, protocol, timeouts) may pass.
        _ => OperatorError::Retryable(format!("{what}: {e}")),
    }
}

/// `schema.table` with each part quoted, so a name is never read as SQL.
fn quote_table(name: &str) -> Result<String, OperatorError> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(fatal(format!(
            "load.table `{name}`: expected table, schema.table or database.schema.table"
        )));
    }
    Ok(parts
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join("."))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[async_trait]
impl Operator for Warehouse {
    fn name(&self) -> &'static str {
        "warehouse"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["connection"],
            optional: &["sql", "bind", "load"],
            code: &["sql"],
            shell: &[],
            url: &[],
            program: &[],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: Config =
            serde_json::from_value(config.clone()).map_err(|e| fatal(format!("warehouse: {e}")))?;
        if cfg.sql.is_none() && cfg.load.is_none() {
            return Err(fatal("warehouse: give `sql`, `load` or both"));
        }
        let target = self.connections.warehouse(&cfg.connection, &ctx.secrets)?;
        // Checked before connecting: a bad key is the DAG's error, not the warehouse's.
        let key = cfg
            .load
            .as_ref()
            .map(Load::key)
            .transpose()?
            .unwrap_or_default();
        let url = match &target {
            WarehouseTarget::Postgres { url } => url,
            WarehouseTarget::Redshift(rs) => &rs.url,
        };
        let mut conn = sqlx::PgConnection::connect(url).await.map_err(|e| {
            OperatorError::Retryable(format!(
                "warehouse: cannot connect to `{}`: {}",
                cfg.connection,
                ctx.masker.mask(&e.to_string())
            ))
        })?;
        let mut tx = conn.begin().await.map_err(|e| db_error("BEGIN", e))?;
        let statements = match cfg.sql {
            None => Vec::new(),
            Some(Statements::One(s)) => vec![s],
            Some(Statements::Many(v)) => v,
        };
        let found = placeholders(&statements, &cfg.bind)?;
        for (i, (stmt, spots)) in statements.iter().zip(&found).enumerate() {
            ctx.log
                .line(&format!("warehouse: statement {}", i + 1))
                .await;
            run_statement(&mut tx, stmt, spots, &cfg.bind)
                .await
                .map_err(|e| e.context(&format!("statement {}", i + 1)))?;
        }
        let mut rows_loaded = 0u64;
        if let Some(load) = &cfg.load {
            rows_loaded = match &target {
                WarehouseTarget::Postgres { .. } => {
                    load::from_stdin(&mut tx, load, &key, ctx, &self.connections).await?
                }
                WarehouseTarget::Redshift(rs) => {
                    redshift::load(&mut tx, load, &key, rs, ctx, &self.connections).await?
                }
            };
        }
        tx.commit().await.map_err(|e| db_error("COMMIT", e))?;
        Ok(Some(json!({ "rows_loaded": rows_loaded })))
    }
}

/// Each statement's `$name` placeholders; every `bind:` key must be used by one of them.
fn placeholders(
    statements: &[String],
    bind: &BTreeMap<String, Json>,
) -> Result<Vec<Placeholders>, OperatorError> {
    let found = statements
        .iter()
        .enumerate()
        .map(|(i, s)| Placeholders::find(s).map_err(|e| fatal(format!("statement {}: {e}", i + 1))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(unused) = bind
        .keys()
        .find(|k| !found.iter().any(|p| p.names.contains(k)))
    {
        return Err(fatal(format!(
            "`bind:` gives `{unused}`, but no statement uses ${unused}"
        )));
    }
    Ok(found)
}

/// Why a statement failed, before the statement's number is put in front.
enum StatementError {
    Config(String),
    Db(sqlx::Error),
}

impl StatementError {
    fn context(self, what: &str) -> OperatorError {
        match self {
            StatementError::Config(m) => fatal(format!("{what}: {m}")),
            StatementError::Db(e) => db_error(what, e),
        }
    }
}

/// Runs one statement: as it is when it names no parameter (it may then hold several), else
/// prepared once to learn the types the server wants, and run with every value sent as text
/// and cast there.
async fn run_statement(
    conn: &mut PgConnection,
    sql: &str,
    spots: &Placeholders,
    bind: &BTreeMap<String, Json>,
) -> Result<(), StatementError> {
    if spots.is_empty() {
        conn.execute(sqlx::raw_sql(AssertSqlSafe(sql.to_string())))
            .await
            .map_err(StatementError::Db)?;
        return Ok(());
    }
    let values = spots.values(bind).map_err(StatementError::Config)?;
    let numbered = spots.render(sql, |k| format!("${k}"));
    let prepared = (&mut *conn)
        .prepare(AssertSqlSafe(numbered).into_sql_str())
        .await
        .map_err(StatementError::Db)?;
    let types: Vec<String> = match prepared.parameters() {
        Some(sqlx::Either::Left(types)) => types.iter().map(|t| t.name().to_string()).collect(),
        _ => vec!["TEXT".to_string(); values.len()],
    };
    let casts = (1..=values.len())
        .map(|k| bind::cast(k, types.get(k - 1).map_or("TEXT", String::as_str)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StatementError::Config)?;
    let typed = spots.render(sql, |k| casts[k - 1].clone());
    let mut query = sqlx::query(AssertSqlSafe(typed));
    for v in values {
        query = query.bind(v);
    }
    query.execute(conn).await.map_err(StatementError::Db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_part_by_part() {
        assert_eq!(quote_table("predictions").unwrap(), "\"predictions\"");
        assert_eq!(quote_table("analytics.p").unwrap(), "\"analytics\".\"p\"");
        assert_eq!(
            quote_table("x\"; DROP TABLE y; --").unwrap(),
            "\"x\"\"; DROP TABLE y; --\""
        );
        assert!(quote_table("a..b").is_err());
    }
}

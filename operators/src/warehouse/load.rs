//! PostgreSQL's load: the file streamed as CSV into `COPY ... FROM STDIN`, straight into the
//! table for `append` and `replace`, through a session stage table and `MERGE` for `merge`.

use flow_engine::operator::{OperatorError, TaskContext};
use sqlx::{Executor, PgConnection};

use super::statements::{self, Names};
use super::{Load, Mode, db_error, quote_ident, quote_table};
use crate::connections::Connections;
use crate::error::fatal;
use crate::sql::{Chunk, read_as_csv};

/// The session table a merge (and every Redshift load) goes through. One load per session, and a
/// temporary table is the session's own, so one name does.
pub(super) const STAGE: &str = "\"flow_load_stage\"";

/// Runs one statement made by [`statements`], saying what it was doing when it fails.
pub(super) async fn run(
    conn: &mut PgConnection,
    sql: String,
    what: &str,
) -> Result<u64, OperatorError> {
    let done = conn
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
        .await
        .map_err(|e| db_error(what, e))?;
    Ok(done.rows_affected())
}

/// The file's columns, quoted, with every key column among them.
pub(super) fn checked_columns(
    load: &Load,
    columns: &[String],
    key: &[String],
) -> Result<Vec<String>, OperatorError> {
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    if let Some(missing) = key.iter().find(|k| !quoted.contains(k)) {
        return Err(fatal(format!(
            "load.key {missing} is not a column of {} (its columns: {})",
            load.file,
            columns.join(", ")
        )));
    }
    Ok(quoted)
}

/// `load:` on PostgreSQL; returns the rows the file had.
pub(super) async fn from_stdin(
    conn: &mut PgConnection,
    load: &Load,
    key: &[String],
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<u64, OperatorError> {
    let table = quote_table(&load.table)?;
    if load.mode == Mode::Replace {
        run(
            conn,
            statements::delete_all(&table),
            &format!("emptying {}", load.table),
        )
        .await?;
    }
    let (_reading, mut chunks) =
        read_as_csv(&load.file, load.format, load.connection.clone(), ctx, conns)?;
    let columns = match chunks.recv().await {
        Some(Ok(Chunk::Columns(c))) => c,
        Some(Err(e)) => return Err(e),
        _ => return Err(fatal(format!("load: {} gave no columns", load.file))),
    };
    let columns = checked_columns(load, &columns, key)?;
    let names = Names {
        table: &table,
        stage: STAGE,
        columns: &columns,
        key,
    };
    let into = if load.mode == Mode::Merge {
        run(
            conn,
            statements::create_stage(&names),
            "creating the stage table",
        )
        .await?;
        STAGE
    } else {
        &table
    };
    let what = format!("loading {}", load.table);
    let mut sink = conn
        .copy_in_raw(&statements::copy_from_stdin(into, &columns))
        .await
        .map_err(|e| db_error(&what, e))?;
    while let Some(chunk) = chunks.recv().await {
        match chunk {
            Ok(Chunk::Csv(bytes)) => sink.send(bytes).await.map_err(|e| db_error(&what, e))?,
            Ok(Chunk::Columns(_)) => continue,
            Err(e) => {
                let _ = sink.abort("the file could not be read").await;
                return Err(e);
            }
        };
    }
    let rows_loaded = sink.finish().await.map_err(|e| db_error(&what, e))?;
    if load.mode == Mode::Merge {
        run(conn, statements::merge(&names), &what).await?;
    }
    ctx.log
        .line(&format!(
            "warehouse: loaded {rows_loaded} rows into {} ({:?})",
            load.table, load.mode
        ))
        .await;
    Ok(rows_loaded)
}

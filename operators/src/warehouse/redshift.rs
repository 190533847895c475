//! Redshift's load. Redshift's COPY reads only from S3 (`COPY ... FROM STDIN` is PostgreSQL's),
//! so the file is first written as parquet under a fresh prefix of the connection's `stage`, then
//! copied into a session stage table that has the file's columns in the file's order (COPY from
//! parquet fills columns by position), then appended, replaced or merged into the table. The
//! stage is deleted whether the load worked or not.

use flow_engine::operator::{OperatorError, TaskContext};
use serde_json::{Value as Json, json};
use sqlx::PgConnection;

use super::load::{STAGE, checked_columns, run};
use super::quote_table;
use super::statements::{self, Names};
use super::{Load, Mode};
use crate::connections::{Connections, Redshift};
use crate::s3::{self, S3Url};
use crate::sql::{read_stream, write_stream};

/// What staging the file gave: its columns and rows.
struct Staged {
    columns: Vec<String>,
    rows: u64,
}

/// `load:` on Redshift; returns the rows the file had.
pub(super) async fn load(
    conn: &mut PgConnection,
    load: &Load,
    key: &[String],
    rs: &Redshift,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<u64, OperatorError> {
    let prefix = format!(
        "{}/flow-{:016x}/",
        rs.stage.trim_end_matches('/'),
        rand::random::<u64>()
    );
    let loaded = stage_then_copy(conn, load, key, rs, &prefix, ctx, conns).await;
    let removed = remove_stage(&prefix, rs, ctx, conns).await;
    let rows = loaded?;
    removed?;
    Ok(rows)
}

async fn stage_then_copy(
    conn: &mut PgConnection,
    load: &Load,
    key: &[String],
    rs: &Redshift,
    prefix: &str,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<u64, OperatorError> {
    let table = quote_table(&load.table)?;
    // The literals are checked before anything is written.
    let copy = statements::redshift_copy(STAGE, prefix, &rs.iam_role)?;
    let staged = stage(load, rs, prefix, ctx, conns).await?;
    let columns = checked_columns(load, &staged.columns, key)?;
    let names = Names {
        table: &table,
        stage: STAGE,
        columns: &columns,
        key,
    };
    run(
        conn,
        statements::create_stage(&names),
        "creating the stage table",
    )
    .await?;
    run(conn, copy, &format!("COPY from {prefix}")).await?;
    apply_stage(conn, load, &names).await?;
    ctx.log
        .line(&format!(
            "warehouse: loaded {} rows into {} ({:?}) through {prefix}",
            staged.rows, load.table, load.mode
        ))
        .await;
    Ok(staged.rows)
}

/// `replace` empties the table first; `merge` applies the staged rows. Both in the caller's
/// transaction, so a failed load leaves the table as it was.
async fn apply_stage(
    conn: &mut PgConnection,
    load: &Load,
    names: &Names<'_>,
) -> Result<(), OperatorError> {
    let what = format!("loading {}", load.table);
    match load.mode {
        Mode::Merge => run(conn, statements::merge(names), &what).await?,
        Mode::Append => run(conn, statements::insert_from_stage(names), &what).await?,
        Mode::Replace => {
            run(conn, statements::delete_all(names.table), &what).await?;
            run(conn, statements::insert_from_stage(names), &what).await?
        }
    };
    Ok(())
}

/// Writes the file as parquet under `prefix`, batch by batch.
async fn stage(
    load: &Load,
    rs: &Redshift,
    prefix: &str,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Staged, OperatorError> {
    let source = json!({"path": load.file, "format": load.format, "connection": load.connection});
    let reading = read_stream(&[("load", &source)], "SELECT * FROM load", ctx, conns).await?;
    let columns = reading
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let output = json!({"path": prefix, "format": "parquet", "connection": rs.stage_connection});
    let written =
        write_stream(reading.schema.clone(), reading.batches, &output, ctx, conns).await?;
    let rows = written.get("rows").and_then(Json::as_u64).unwrap_or(0);
    ctx.log
        .line(&format!("warehouse: staged {rows} rows at {prefix}"))
        .await;
    Ok(Staged { columns, rows })
}

async fn remove_stage(
    prefix: &str,
    rs: &Redshift,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<(), OperatorError> {
    let aws = conns.aws(rs.stage_connection.as_deref(), &ctx.secrets)?;
    let client = s3::client(&aws).await;
    let (objects, _) = s3::delete_under(&client, &S3Url::parse(prefix)?).await?;
    ctx.log
        .line(&format!("warehouse: deleted the stage ({objects} objects)"))
        .await;
    Ok(())
}

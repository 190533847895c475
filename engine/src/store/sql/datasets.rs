//! [`DatasetStore`]'s SQL: events, the queue of events each consumer DAG has not taken yet, and
//! the events each dataset-triggered run took (see migration 0014).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::dialect::{Dialect, RowsAffected};
use super::{SqlStore, Tx, json_text, parse_json};
use crate::store::{
    DatasetEvent, DatasetStore, DatasetSummary, DatasetTrigger, EventSource, Result, Wake,
};
use crate::time::{from_micros, to_micros};

pub(super) const EVENT_COLUMNS: &str = "e.id, e.uri, e.extra, e.source_dag_id, e.source_run_id, \
     e.source_task_id, e.source_map_index, e.created_at";

/// Most events one dataset-triggered run takes; the rest wait for the next run.
const MAX_EVENTS_PER_RUN: i64 = 10_000;

/// An event to record: by a try (`source`: its run, task and map index) or through the API.
pub(crate) struct NewEvent<'a> {
    pub uri: &'a str,
    pub extra: String,
    pub source: Option<(&'a str, &'a str, i64)>,
    pub created_at: i64,
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> bool: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB>,
    for<'a> Option<String>: Encode<'a, DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Records events and queues each for every active DAG scheduled on its URI, in the
    /// caller's transaction (a try's end: no success without its events).
    pub(super) async fn insert_events_in(
        tx: &mut Tx<DB>,
        events: &[NewEvent<'_>],
    ) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(events.len());
        for ev in events {
            let (run_id, task_id, map_index) = match ev.source {
                Some((r, t, m)) => (Some(r.to_string()), Some(t.to_string()), Some(m)),
                None => (None, None, None),
            };
            let row = sqlx::query(
                "INSERT INTO dataset_events (uri, extra, source_dag_id, source_run_id, \
                 source_task_id, source_map_index, created_at) VALUES ($1, $2, \
                 (SELECT dag_id FROM dag_runs WHERE run_id = $3), $3, $4, $5, $6) RETURNING id",
            )
            .bind(ev.uri)
            .bind(ev.extra.clone())
            .bind(run_id)
            .bind(task_id)
            .bind(map_index)
            .bind(ev.created_at)
            .fetch_one(&mut **tx)
            .await?;
            let id: i64 = row.try_get("id")?;
            sqlx::query(
                "INSERT INTO dataset_queue (dag_id, event_id, uri) SELECT r.dag_id, $1, r.uri \
                 FROM dataset_refs r JOIN dags d ON d.dag_id = r.dag_id \
                 WHERE r.uri = $2 AND r.role = 'consumer' AND d.active ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(ev.uri)
            .execute(&mut **tx)
            .await?;
            ids.push(id);
        }
        Ok(ids)
    }

    pub(super) fn event_row(r: &DB::Row) -> Result<DatasetEvent> {
        let source = match r.try_get::<Option<String>, _>("source_run_id")? {
            Some(run_id) => Some(EventSource {
                dag_id: r
                    .try_get::<Option<String>, _>("source_dag_id")?
                    .unwrap_or_default(),
                run_id,
                task_id: r
                    .try_get::<Option<String>, _>("source_task_id")?
                    .unwrap_or_default(),
                map_index: r
                    .try_get::<Option<i64>, _>("source_map_index")?
                    .unwrap_or(-1),
            }),
            None => None,
        };
        Ok(DatasetEvent {
            id: r.try_get("id")?,
            uri: r.try_get("uri")?,
            extra: parse_json(Some(r.try_get("extra")?), "dataset event extra")?
                .unwrap_or(Json::Null),
            source,
            created_at: from_micros(r.try_get("created_at")?),
        })
    }

    /// The DAG's queued events on its URIs, oldest first: (event id, uri, created_at).
    async fn queued_in(tx: &mut Tx<DB>, t: &DatasetTrigger) -> Result<Vec<(i64, String, i64)>> {
        let rows = sqlx::query(
            "SELECT q.event_id AS id, q.uri AS uri, e.created_at AS created_at \
             FROM dataset_queue q JOIN dataset_events e ON e.id = q.event_id \
             WHERE q.dag_id = $1 ORDER BY q.event_id LIMIT $2",
        )
        .bind(t.dag_id.as_str())
        .bind(MAX_EVENTS_PER_RUN)
        .fetch_all(&mut **tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let uri: String = r.try_get("uri")?;
            if t.uris.contains(&uri) {
                out.push((r.try_get("id")?, uri, r.try_get("created_at")?));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl<DB> DatasetStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> bool: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB>,
    for<'a> Option<String>: Encode<'a, DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn dags_with_queued_events(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT dag_id FROM dataset_queue ORDER BY dag_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get("dag_id").map_err(Into::into))
            .collect()
    }

    async fn trigger_on_datasets(&self, t: &DatasetTrigger) -> Result<Option<String>> {
        let (writer, mut tx) = self.begin_write().await?;
        let taken = Self::queued_in(&mut tx, t).await?;
        let met = if t.all {
            t.uris
                .iter()
                .all(|u| taken.iter().any(|(_, uri, _)| uri == u))
        } else {
            !taken.is_empty()
        };
        if !met {
            return Ok(None);
        }
        let mut run = t.run.clone();
        let times = taken.iter().map(|(_, _, at)| *at);
        run.data_interval_start = from_micros(times.clone().min().unwrap_or_default());
        run.data_interval_end = from_micros(times.max().unwrap_or_default());
        if !Self::insert_run(&mut tx, &run).await? {
            return Ok(None);
        }
        // The delete is the claim: a scheduler that took these events first leaves fewer rows.
        let mut qb: QueryBuilder<DB> =
            QueryBuilder::new("DELETE FROM dataset_queue WHERE dag_id = ");
        qb.push_bind(t.dag_id.clone()).push(" AND event_id IN (");
        let mut sep = qb.separated(", ");
        for (id, _, _) in &taken {
            sep.push_bind(*id);
        }
        qb.push(")");
        let deleted = qb.build().execute(&mut *tx).await?.rows_affected();
        if deleted != taken.len() as u64 {
            return Ok(None);
        }
        let mut qb: QueryBuilder<DB> =
            QueryBuilder::new("INSERT INTO run_dataset_events (run_id, event_id) ");
        qb.push_values(&taken, |mut b, (id, _, _)| {
            b.push_bind(run.run_id.clone()).push_bind(*id);
        });
        qb.build().execute(&mut *tx).await?;
        self.commit_and_ring(writer, tx, Wake::Runs).await?;
        Ok(Some(run.run_id))
    }

    async fn record_dataset_event(
        &self,
        uri: &str,
        extra: &Json,
        now: DateTime<Utc>,
    ) -> Result<DatasetEvent> {
        let (writer, mut tx) = self.begin_write().await?;
        let event = NewEvent {
            uri,
            extra: json_text(extra),
            source: None,
            created_at: to_micros(now),
        };
        let ids = Self::insert_events_in(&mut tx, &[event]).await?;
        self.commit_and_ring(writer, tx, Wake::Runs).await?;
        Ok(DatasetEvent {
            id: ids.first().copied().unwrap_or_default(),
            uri: uri.to_string(),
            extra: extra.clone(),
            source: None,
            created_at: from_micros(to_micros(now)),
        })
    }

    async fn dataset_events(&self, uri: Option<&str>, limit: i64) -> Result<Vec<DatasetEvent>> {
        let mut qb: QueryBuilder<DB> =
            QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM dataset_events e"));
        if let Some(uri) = uri {
            qb.push(" WHERE e.uri = ").push_bind(uri.to_string());
        }
        qb.push(" ORDER BY e.id DESC LIMIT ").push_bind(limit);
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(Self::event_row).collect()
    }

    async fn triggering_events(&self, run_id: &str) -> Result<Vec<DatasetEvent>> {
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!(
            "SELECT {EVENT_COLUMNS} FROM run_dataset_events r \
             JOIN dataset_events e ON e.id = r.event_id WHERE r.run_id = "
        ));
        qb.push_bind(run_id.to_string()).push(" ORDER BY e.id");
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(Self::event_row).collect()
    }

    async fn datasets(&self) -> Result<Vec<DatasetSummary>> {
        let mut by_uri: BTreeMap<String, DatasetSummary> = BTreeMap::new();
        let summary = |uri: &str| DatasetSummary {
            uri: uri.to_string(),
            producers: Vec::new(),
            consumers: Vec::new(),
            last_event: None,
        };
        let refs = sqlx::query(
            "SELECT r.dag_id, r.uri, r.role, r.task_id FROM dataset_refs r \
             JOIN dags d ON d.dag_id = r.dag_id WHERE d.active ORDER BY r.dag_id, r.task_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &refs {
            let (dag_id, uri, role, task_id): (String, String, String, String) = (
                r.try_get("dag_id")?,
                r.try_get("uri")?,
                r.try_get("role")?,
                r.try_get("task_id")?,
            );
            let s = by_uri.entry(uri.clone()).or_insert_with(|| summary(&uri));
            if role == "producer" {
                s.producers.push(format!("{dag_id}.{task_id}"));
            } else {
                s.consumers.push(dag_id);
            }
        }
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!(
            "SELECT {EVENT_COLUMNS} FROM dataset_events e WHERE e.id IN \
             (SELECT MAX(id) FROM dataset_events GROUP BY uri)"
        ));
        let last = qb.build().fetch_all(&self.pool).await?;
        for r in &last {
            let event = Self::event_row(r)?;
            let uri = event.uri.clone();
            by_uri
                .entry(uri.clone())
                .or_insert_with(|| summary(&uri))
                .last_event = Some(event);
        }
        Ok(by_uri.into_values().collect())
    }
}

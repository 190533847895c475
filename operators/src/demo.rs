//! `flow-bench demo-data` and the `demo_data` operator: synthetic data with a known signal, so that the example pipelines run end to
//! end on a fresh machine and the heavy-step benchmark has its input.
//!
//! Deterministic: the same options write the same rows (ChaCha8, whose stream is fixed by its
//! seed across platforms and versions). Every user has a hidden engagement `e ~ N(0, 1)`:
//! - engaged users have more events, open more emails and buy more;
//! - `labels.unsubscribed` (in the 14 days from `label_date`) is drawn with
//!   `P = sigmoid(-1 - 1.5 e + 0.03 (age - 45) + 0.7 [plan = free])`, so features built from
//!   events before `label_date` (and age and plan) predict it well, and nothing else does;
//! - the experiment `subject_line_test` assigns every user to `control` or `treatment` (50/50);
//!   `outcomes.value` converts with probability 0.10 in control and 0.13 in treatment (a true
//!   absolute lift of 0.03: the sequential test of `experiment_results` detects it at one look
//!   on the default 20,000 units with power above 99.9%; at 0.02 its power is about 93%, and
//!   the seeded draw of 0.02 fell short),
//!   and `revenue.value` is a lognormal amount 5% higher in treatment.
//!
//! Layout under the output folder: `profiles.parquet`, `events/part-NNNN.parquet` (one million
//! rows a file), `labels.parquet`, `assignments.parquet`, `outcomes.parquet`, `revenue.parquet`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{NaiveDate, TimeZone, Utc};
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, StandardNormal};
use serde_json::{Value as Json, json};

use crate::ml::Num;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub users: usize,
    pub events: usize,
    pub seed: u64,
    /// The first day of events; they span `days` days.
    pub start: NaiveDate,
    pub days: u32,
}

pub const COUNTRIES: &[&str] = &["US", "GB", "DE", "FR", "IN", "BR", "JP", "CA"];
pub const EXPERIMENT: &str = "subject_line_test";
/// The conversion rates the generator draws from, for tests that check what pipelines find.
pub const CONTROL_RATE: f64 = 0.10;
pub const TREATMENT_RATE: f64 = 0.13;
/// Days between `label_date` and the end of the events: the label window.
pub const LABEL_WINDOW_DAYS: u32 = 14;
const ROWS_PER_FILE: usize = 1_000_000;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

struct User {
    engagement: f64,
    age: i64,
    plan_free: bool,
}

fn write(path: &Path, batch: &RecordBatch) -> Result<u64> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(std::fs::metadata(path)?.len())
}

fn batch(fields: Vec<(&str, DataType, ArrayRef)>) -> Result<RecordBatch> {
    let schema = Schema::new(
        fields
            .iter()
            .map(|(n, t, _)| Field::new(*n, t.clone(), false))
            .collect::<Vec<_>>(),
    );
    Ok(RecordBatch::try_new(
        Arc::new(schema),
        fields.into_iter().map(|(_, _, a)| a).collect(),
    )?)
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Writes every table; returns what it wrote (rows and bytes per table) as JSON.
pub fn generate(opts: &DemoOptions) -> Result<Json> {
    anyhow::ensure!(opts.users > 0, "--users must be at least 1");
    anyhow::ensure!(
        opts.days > LABEL_WINDOW_DAYS,
        "--days must be more than the {LABEL_WINDOW_DAYS}-day label window"
    );
    std::fs::create_dir_all(opts.out.join("events"))
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let mut g = Generator {
        opts,
        rng: ChaCha8Rng::seed_from_u64(opts.seed),
        calendar: Calendar::of(opts),
        summary: serde_json::Map::new(),
    };
    let users = g.profiles()?;
    g.events(&users)?;
    g.labels(&users)?;
    g.experiment()?;
    Ok(g.finish())
}

/// The days the data spans, in the units its columns hold.
struct Calendar {
    epoch: NaiveDate,
    /// The first day of events, in days since 1970-01-01 (as a Date32 holds it).
    start_day: i32,
    /// The first day's midnight (UTC), in microseconds since 1970.
    start_us: i64,
    /// The `days` the events span, in microseconds.
    span_us: i64,
    /// `label_date`, in days since 1970-01-01.
    label_day: i32,
}

impl Calendar {
    /// The calendar of `opts.start` and `opts.days`.
    fn of(opts: &DemoOptions) -> Calendar {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        let start_day = (opts.start - epoch).num_days() as i32;
        let start_us = Utc
            .from_utc_datetime(&opts.start.and_hms_opt(0, 0, 0).unwrap_or_default())
            .timestamp_micros();
        let day_us = 86_400_000_000i64;
        Calendar {
            epoch,
            start_day,
            start_us,
            span_us: opts.days as i64 * day_us,
            label_day: start_day + (opts.days - LABEL_WINDOW_DAYS) as i32,
        }
    }
}

/// One run of [`generate`]. Every table draws from the one random stream in turn, so the order
/// of the steps (profiles, events, labels, the experiment) and of the draws within each is what
/// makes a seed's data.
struct Generator<'a> {
    opts: &'a DemoOptions,
    rng: ChaCha8Rng,
    calendar: Calendar,
    /// What was written, table by table.
    summary: serde_json::Map<String, Json>,
}

impl Generator<'_> {
    /// The users' ids, 0 to `users - 1`, as a column.
    fn user_ids(&self) -> ArrayRef {
        Arc::new(Int64Array::from(
            (0..self.opts.users as i64).collect::<Vec<_>>(),
        ))
    }

    /// Writes `batch` as `NAME.parquet` in the output folder; returns its size.
    fn write_table(&self, name: &str, batch: &RecordBatch) -> Result<u64> {
        write(&self.opts.out.join(format!("{name}.parquet")), batch)
    }

    /// Users and their profiles: `profiles.parquet`, and each user's hidden traits for the
    /// tables that follow.
    fn profiles(&mut self) -> Result<Vec<User>> {
        let (opts, rng) = (self.opts, &mut self.rng);
        let start_day = self.calendar.start_day;
        let mut users = Vec::with_capacity(opts.users);
        let (mut ages, mut countries, mut plans, mut signups) = (vec![], vec![], vec![], vec![]);
        for _ in 0..opts.users {
            let engagement: f64 = StandardNormal.sample(rng);
            let age = rng.random_range(18..=75i64);
            let plan_free = rng.random::<f64>() >= sigmoid(engagement - 1.0);
            ages.push(age);
            countries.push(COUNTRIES[rng.random_range(0..COUNTRIES.len())]);
            plans.push(if plan_free { "free" } else { "pro" });
            signups.push(start_day - rng.random_range(0..730));
            users.push(User {
                engagement,
                age,
                plan_free,
            });
        }
        let profiles = batch(vec![
            ("user_id", DataType::Int64, self.user_ids()),
            ("age", DataType::Int64, Arc::new(Int64Array::from(ages))),
            (
                "country",
                DataType::Utf8,
                Arc::new(StringArray::from(countries)),
            ),
            ("plan", DataType::Utf8, Arc::new(StringArray::from(plans))),
            (
                "signup_date",
                DataType::Date32,
                Arc::new(Date32Array::from(signups)),
            ),
        ])?;
        self.per_user_table("profiles", &profiles)?;
        Ok(users)
    }

    /// Events, `ROWS_PER_FILE` a file: each picks its user in proportion to exp(0.7 e), so
    /// engaged users have more.
    fn events(&mut self, users: &[User]) -> Result<()> {
        let mut cumulative = Vec::with_capacity(users.len());
        let mut total = 0.0;
        for u in users {
            total += (0.7 * u.engagement).exp();
            cumulative.push(total);
        }
        let weights = Weights { cumulative, total };
        let amount = LogNormal::new(3.0, 0.5)?;
        let mut written = 0usize;
        let mut event_bytes = 0u64;
        let mut part = 0usize;
        while written < self.opts.events {
            let n = (self.opts.events - written).min(ROWS_PER_FILE);
            let events = self.event_batch(n, users, &weights, &amount)?;
            event_bytes += write(
                &self
                    .opts
                    .out
                    .join("events")
                    .join(format!("part-{part:04}.parquet")),
                &events,
            )?;
            written += n;
            part += 1;
        }
        self.summary.insert(
            "events".into(),
            json!({"rows": self.opts.events, "files": part, "bytes": event_bytes}),
        );
        Ok(())
    }

    /// `n` events: their users, times, kinds and purchase amounts.
    fn event_batch(
        &mut self,
        n: usize,
        users: &[User],
        weights: &Weights,
        amount: &LogNormal<f64>,
    ) -> Result<RecordBatch> {
        let rng = &mut self.rng;
        let (start_us, span_us) = (self.calendar.start_us, self.calendar.span_us);
        let (mut uid, mut ts, mut kind, mut amt) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for _ in 0..n {
            let x = rng.random::<f64>() * weights.total;
            let i = weights
                .cumulative
                .partition_point(|c| *c < x)
                .min(users.len() - 1);
            let e = users[i].engagement;
            let r = rng.random::<f64>();
            let open = 0.08 + 0.06 * sigmoid(e);
            let buy = 0.03 + 0.04 * sigmoid(e);
            let (k, a) = if r < open {
                ("email_open", 0.0)
            } else if r < open + buy {
                ("purchase", (amount.sample(rng) * 100.0f64).round() / 100.0)
            } else if r < open + buy + 0.25 {
                ("click", 0.0)
            } else {
                ("view", 0.0)
            };
            uid.push(i as i64);
            ts.push(start_us + rng.random_range(0..span_us));
            kind.push(k);
            amt.push(a);
        }
        batch(vec![
            ("user_id", DataType::Int64, Arc::new(Int64Array::from(uid))),
            (
                "ts",
                ts_type(),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            ),
            (
                "event_type",
                DataType::Utf8,
                Arc::new(StringArray::from(kind)),
            ),
            (
                "amount",
                DataType::Float64,
                Arc::new(Float64Array::from(amt)),
            ),
        ])
    }

    /// Labels, at one date for every user.
    fn labels(&mut self, users: &[User]) -> Result<()> {
        let rng = &mut self.rng;
        let labels: Vec<i64> = users
            .iter()
            .map(|u| {
                let logit = -1.0 - 1.5 * u.engagement
                    + 0.03 * (u.age - 45) as f64
                    + if u.plan_free { 0.7 } else { 0.0 };
                i64::from(rng.random::<f64>() < sigmoid(logit))
            })
            .collect();
        let positives: i64 = labels.iter().sum();
        let label_batch = batch(vec![
            ("user_id", DataType::Int64, self.user_ids()),
            (
                "label_date",
                DataType::Date32,
                Arc::new(Date32Array::from(vec![
                    self.calendar.label_day;
                    self.opts.users
                ])),
            ),
            (
                "unsubscribed",
                DataType::Int64,
                Arc::new(Int64Array::from(labels)),
            ),
        ])?;
        let bytes = self.write_table("labels", &label_batch)?;
        self.summary.insert(
            "labels".into(),
            json!({"rows": self.opts.users, "positives": positives, "bytes": bytes}),
        );
        Ok(())
    }

    /// The experiment: assignments, conversions and revenue.
    fn experiment(&mut self) -> Result<()> {
        let drawn = self.experiment_draws()?;
        let assignments = batch(vec![
            ("unit", DataType::Int64, self.user_ids()),
            (
                "experiment",
                DataType::Utf8,
                Arc::new(StringArray::from(vec![EXPERIMENT; self.opts.users])),
            ),
            (
                "variant",
                DataType::Utf8,
                Arc::new(StringArray::from(drawn.variants)),
            ),
            (
                "assigned_at",
                ts_type(),
                Arc::new(TimestampMicrosecondArray::from(drawn.assigned).with_timezone("UTC")),
            ),
        ])?;
        self.per_user_table("assignments", &assignments)?;
        let outcomes = batch(vec![
            ("unit", DataType::Int64, self.user_ids()),
            (
                "value",
                DataType::Int64,
                Arc::new(Int64Array::from(drawn.converted)),
            ),
        ])?;
        self.per_user_table("outcomes", &outcomes)?;
        let revenue = batch(vec![
            ("unit", DataType::Int64, self.user_ids()),
            (
                "value",
                DataType::Float64,
                Arc::new(Float64Array::from(drawn.revenue)),
            ),
        ])?;
        self.per_user_table("revenue", &revenue)
    }

    /// Writes a table of one row per user and notes it in the summary.
    fn per_user_table(&mut self, name: &str, batch: &RecordBatch) -> Result<()> {
        let bytes = self.write_table(name, batch)?;
        self.summary.insert(
            name.into(),
            json!({"rows": self.opts.users, "bytes": bytes}),
        );
        Ok(())
    }

    /// Every user's variant, assignment time, conversion and revenue.
    fn experiment_draws(&mut self) -> Result<ExperimentDraws> {
        let rng = &mut self.rng;
        let (start_us, span_us) = (self.calendar.start_us, self.calendar.span_us);
        let revenue_dist = LogNormal::new(3.0, 0.8)?;
        let mut d = ExperimentDraws::default();
        for _ in 0..self.opts.users {
            let treat = rng.random::<bool>();
            d.variants.push(if treat { "treatment" } else { "control" });
            d.assigned.push(start_us + rng.random_range(0..span_us));
            let p = if treat { TREATMENT_RATE } else { CONTROL_RATE };
            d.converted.push(i64::from(rng.random::<f64>() < p));
            let base: f64 = revenue_dist.sample(rng);
            d.revenue
                .push(((if treat { base * 1.05 } else { base }) * 100.0).round() / 100.0);
        }
        Ok(d)
    }

    /// The summary, with the label date and the output folder.
    fn finish(mut self) -> Json {
        let label_date = self.calendar.epoch + chrono::Days::new(self.calendar.label_day as u64);
        self.summary
            .insert("label_date".into(), json!(label_date.to_string()));
        self.summary
            .insert("out".into(), json!(self.opts.out.display().to_string()));
        Json::Object(self.summary)
    }
}

/// The users' running sums of exp(0.7 e), which events pick their users by.
struct Weights {
    cumulative: Vec<f64>,
    total: f64,
}

/// The experiment's columns, one value per user.
#[derive(Default)]
struct ExperimentDraws {
    variants: Vec<&'static str>,
    assigned: Vec<i64>,
    converted: Vec<i64>,
    revenue: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, seed: u64) -> DemoOptions {
        DemoOptions {
            out: dir.to_path_buf(),
            users: 2_000,
            events: 30_000,
            seed,
            start: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            days: 60,
        }
    }

    #[test]
    fn the_same_seed_writes_the_same_bytes_and_another_seed_does_not() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let sa = generate(&opts(a.path(), 7)).unwrap();
        generate(&opts(b.path(), 7)).unwrap();
        generate(&opts(c.path(), 8)).unwrap();
        assert_eq!(sa["events"]["rows"], 30_000);
        assert_eq!(sa["label_date"], "2026-02-16");
        for f in [
            "profiles.parquet",
            "events/part-0000.parquet",
            "labels.parquet",
        ] {
            let x = std::fs::read(a.path().join(f)).unwrap();
            assert_eq!(x, std::fs::read(b.path().join(f)).unwrap(), "{f}");
            assert_ne!(x, std::fs::read(c.path().join(f)).unwrap(), "{f}");
        }
        // The label's model makes about 44% of users unsubscribe (mostly free-plan users).
        let positives = sa["labels"]["positives"].as_i64().unwrap();
        assert!((700..1100).contains(&positives), "{positives}");
    }

    #[test]
    fn bad_options_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut o = opts(d.path(), 1);
        o.days = 10;
        assert!(generate(&o).unwrap_err().to_string().contains("--days"));
    }
}

/// `demo_data`: [`generate`] as a task, so that the example pipelines run on a fresh machine.
/// It writes nothing when the folder already holds data from the same options (a
/// `demo-data.json` beside the tables records them).
pub struct DemoData;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoConfig {
    out: String,
    #[serde(default = "default_users")]
    users: Num<usize>,
    #[serde(default = "default_events")]
    events: Num<usize>,
    #[serde(default = "default_seed")]
    seed: Num<u64>,
    #[serde(default = "default_start")]
    start: String,
    #[serde(default = "default_days")]
    days: Num<u32>,
}

fn default_users() -> Num<usize> {
    Num(20_000)
}
fn default_events() -> Num<usize> {
    Num(400_000)
}
fn default_seed() -> Num<u64> {
    Num(42)
}
fn default_start() -> String {
    "2026-01-01".to_string()
}
fn default_days() -> Num<u32> {
    Num(60)
}

#[async_trait::async_trait]
impl flow_engine::operator::Operator for DemoData {
    fn name(&self) -> &'static str {
        "demo_data"
    }

    fn keys(&self) -> flow_engine::operator::OperatorKeys {
        flow_engine::operator::OperatorKeys {
            required: &["out"],
            optional: &["users", "events", "seed", "start", "days"],
            code: &[],
            shell: &[],
            url: &[],
            program: &[],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &flow_engine::operator::TaskContext,
    ) -> Result<Option<Json>, flow_engine::operator::OperatorError> {
        use flow_engine::operator::OperatorError;
        let cfg: DemoConfig = serde_json::from_value(config.clone())
            .map_err(|e| OperatorError::Fatal(format!("demo_data: {e}")))?;
        let start = NaiveDate::parse_from_str(&cfg.start, "%Y-%m-%d")
            .map_err(|e| OperatorError::Fatal(format!("demo_data: start `{}`: {e}", cfg.start)))?;
        let opts = DemoOptions {
            out: ctx.dag_folder.join(&cfg.out),
            users: cfg.users.0,
            events: cfg.events.0,
            seed: cfg.seed.0,
            start,
            days: cfg.days.0,
        };
        let wanted = json!({"users": opts.users, "events": opts.events, "seed": opts.seed,
                            "start": cfg.start, "days": opts.days});
        let out = opts.out.clone();
        // Pipelines that start with the same demo data may run at once: one writes, the others
        // wait for it and find it there.
        let (summary, fresh) = tokio::task::spawn_blocking(move || -> Result<(Json, bool)> {
            std::fs::create_dir_all(&opts.out)?;
            let lock = std::fs::File::create(opts.out.join(".demo-data.lock"))?;
            lock.lock()?;
            let marker = opts.out.join("demo-data.json");
            if let Ok(text) = std::fs::read_to_string(&marker)
                && let Ok(done) = serde_json::from_str::<Json>(&text)
                && done["options"] == wanted
            {
                return Ok((done["summary"].clone(), false));
            }
            let summary = generate(&opts)?;
            std::fs::write(
                &marker,
                serde_json::to_string_pretty(&json!({"options": wanted, "summary": summary}))?,
            )?;
            Ok((summary, true))
        })
        .await
        .map_err(|e| OperatorError::Retryable(format!("demo_data: {e}")))?
        .map_err(|e| OperatorError::Fatal(format!("demo_data: {e:#}")))?;
        if !fresh {
            ctx.log
                .line(&format!(
                    "demo_data: {} already holds this data",
                    out.display()
                ))
                .await;
            return Ok(Some(summary));
        }
        ctx.log
            .line(&format!("demo_data: wrote {}", out.display()))
            .await;
        Ok(Some(summary))
    }
}

//! The model registry in the metadata database (migration 0009): [`ModelRegistry`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::{DatasetEvent, Result};

/// A model version's stage in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelStage {
    Candidate,
    Production,
    Archived,
}

impl ModelStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStage::Candidate => "candidate",
            ModelStage::Production => "production",
            ModelStage::Archived => "archived",
        }
    }
}

impl std::str::FromStr for ModelStage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "candidate" => Ok(ModelStage::Candidate),
            "production" => Ok(ModelStage::Production),
            "archived" => Ok(ModelStage::Archived),
            _ => Err(format!("unknown model stage '{s}'")),
        }
    }
}

/// The data a model was trained on: the data interval of the run that trained it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A trained model to register: what it is, how good, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModelVersion {
    pub model: String,
    /// `classification` or `regression`.
    pub task: String,
    pub algorithm: String,
    pub metrics: Json,
    /// Where the artifact is: a local path or an `s3://` URL.
    pub artifact: String,
    pub training_set: String,
    /// The training set's dataset URI (train's `dataset:`): the version is linked to its events.
    pub dataset: Option<String>,
    pub data_interval: Option<DataInterval>,
    pub dag_id: String,
    pub dag_version: String,
    pub run_id: String,
    pub task_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelVersion {
    pub version: i64,
    pub stage: ModelStage,
    pub stage_changed_at: DateTime<Utc>,
    pub new: NewModelVersion,
    /// The dataset events it was trained on (see [`ModelRegistry::register_model_version`]).
    pub events: Vec<DatasetEvent>,
}

/// A `predict` task that scored with a model version.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionUse {
    pub model: String,
    pub version: i64,
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    /// -1 for a task that is not mapped.
    pub map_index: i64,
    pub rows_scored: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub versions: i64,
    pub latest_version: i64,
    pub production_version: Option<i64>,
}

/// What [`ModelRegistry::promote_model_version`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// `version` is production now; `previous` (if any) was archived.
    Promoted { previous: Option<i64> },
    /// The production version was not the one the caller expected; nothing changed.
    Stale { current: Option<i64> },
    /// No such model version.
    Unknown,
}

/// Versions are 1, 2, ... per model, given out in a transaction, so concurrent registrations
/// never share one.
#[async_trait]
pub trait ModelRegistry: Send + Sync {
    /// Registers a new candidate version (creating the model on its first version); returns its
    /// number. With a `dataset`, the version is linked to the events of it that triggered the
    /// training run, else to its latest event (none when it has none yet).
    async fn register_model_version(&self, v: &NewModelVersion) -> Result<i64>;
    async fn models(&self) -> Result<Vec<ModelSummary>>;
    /// Every version of `model`, newest first.
    async fn model_versions(&self, model: &str) -> Result<Vec<ModelVersion>>;
    async fn model_version(&self, model: &str, version: i64) -> Result<Option<ModelVersion>>;
    /// Makes `version` the production version and archives the previous one, in one transaction,
    /// if the production version is still `expected` (a compare-and-set: two promoters that
    /// compared against the same production version cannot both win).
    async fn promote_model_version(
        &self,
        model: &str,
        version: i64,
        expected: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Promotion>;
    /// Notes that a `predict` task of a recorded run scored with a version; a second note of the
    /// same task is the first one. A run that is not recorded (`flow tasks test`) is not noted.
    async fn record_prediction(&self, u: &PredictionUse) -> Result<()>;
    /// The latest `limit` uses of any version of `model`, newest first.
    async fn model_predictions(&self, model: &str, limit: i64) -> Result<Vec<PredictionUse>>;
}

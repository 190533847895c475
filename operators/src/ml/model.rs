//! A trained model as flow stores it: one JSON document (`model.json`), format `flow-model/1`.
//!
//! ```json
//! {"format": "flow-model/1", "task": "classification", "algorithm": "gradient_boosting",
//!  "label": "unsubscribed",
//!  "features": [{"name": "age", "kind": "numeric", "mean": 46.5, "std": 16.4},
//!               {"name": "plan", "kind": "categorical", "categories": ["free", "pro"]}],
//!  "booster": { ...perpetual's own JSON... }}
//! ```
//! or, for `logistic_regression`, `"weights": [...]` (one per encoded column) and `"intercept"`,
//! or, for gradient boosting fitted by Spark MLlib (`train` with `engine: spark`),
//! `"ensemble": {"base": 0.0, "trees": [[{"id", "leaf", "value", "feature", "split", "left",
//! "right"}, ...], ...]}`: a row goes left at a node when its value is at most `split`, and the
//! prediction is `base` plus the leaves' values (through a sigmoid for classification; the tree
//! weights and MLlib's factor 2 are already in the leaves).
//!
//! How a row becomes numbers ([`Encoder`]) is part of the model, so `predict` encodes exactly as
//! `train` did:
//! - a numeric feature is itself (a missing value is NaN); logistic regression standardizes it
//!   with the training rows' mean and standard deviation and puts a missing value at the mean;
//! - a text feature is categorical, its categories the training rows' distinct values in sorted
//!   order: gradient boosting takes the category's index as a categorical feature (an unseen or
//!   missing value is missing), logistic regression one 0/1 column per category (an unseen or
//!   missing value has all of them 0);
//! - a Spark ensemble has no missing values: a missing number is the training mean, a category
//!   its index and an unseen or missing one the number of categories (MLlib trees split it as a
//!   number).
//!
//! `predict` gives the probability of the positive class (label 1 or true) for classification, the
//! value for regression.

use perpetual::PerpetualBooster;
use perpetual::booster::config::BoosterIO;

use super::forest::Forest;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "flow-model/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Classification,
    Regression,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Regression => "regression",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    GradientBoosting,
    LogisticRegression,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::GradientBoosting => "gradient_boosting",
            Algorithm::LogisticRegression => "logistic_regression",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Feature {
    Numeric {
        name: String,
        mean: f64,
        std: f64,
    },
    Categorical {
        name: String,
        categories: Vec<String>,
    },
}

impl Feature {
    pub fn name(&self) -> &str {
        match self {
            Feature::Numeric { name, .. } | Feature::Categorical { name, .. } => name,
        }
    }
}

/// One feature's raw column: numbers, or text.
pub enum Column {
    Numbers(Vec<f64>),
    Text(Vec<Option<String>>),
}

impl Column {
    pub fn rows(&self) -> usize {
        match self {
            Column::Numbers(v) => v.len(),
            Column::Text(v) => v.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    pub format: String,
    pub task: TaskKind,
    pub algorithm: Algorithm,
    pub label: String,
    pub features: Vec<Feature>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercept: Option<f64>,
    /// Kept as text: a booster trained on a million rows is hundreds of megabytes of JSON, and
    /// as a parsed JSON tree many times that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booster: Option<Box<serde_json::value::RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<Ensemble>,
}

/// Trees fitted by Spark MLlib (see the module's note).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ensemble {
    pub base: f64,
    pub trees: Vec<Vec<TreeNode>>,
    /// What fitted it (`spark-mllib 3.5.1`), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TreeNode {
    pub id: usize,
    pub leaf: bool,
    pub value: f64,
    #[serde(default)]
    pub feature: usize,
    #[serde(default)]
    pub split: f64,
    #[serde(default)]
    pub left: usize,
    #[serde(default)]
    pub right: usize,
}

/// How rows become numbers (see the module's note).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// perpetual: numbers as they are, categories as indexes, missing as NaN.
    Native,
    /// Logistic regression: standardized numbers, one-hot categories.
    Standardized,
    /// A Spark ensemble: no NaN.
    Imputed,
}

impl Encoding {
    /// The encoding the in-process trainer uses for `algorithm`.
    pub fn of(algorithm: Algorithm) -> Encoding {
        match algorithm {
            Algorithm::GradientBoosting => Encoding::Native,
            Algorithm::LogisticRegression => Encoding::Standardized,
        }
    }
}

/// The encoding of each feature, learnt from the training rows.
pub fn learn_features(names: &[String], columns: &[Column]) -> Vec<Feature> {
    names
        .iter()
        .zip(columns)
        .map(|(name, col)| match col {
            Column::Numbers(v) => {
                let seen: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
                let n = seen.len().max(1) as f64;
                let mean = seen.iter().sum::<f64>() / n;
                let var = seen.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                Feature::Numeric {
                    name: name.clone(),
                    mean,
                    // A constant column divides by 1, not 0.
                    std: if var > 0.0 { var.sqrt() } else { 1.0 },
                }
            }
            Column::Text(v) => {
                let mut categories: Vec<String> = v.iter().flatten().cloned().collect();
                categories.sort();
                categories.dedup();
                Feature::Categorical {
                    name: name.clone(),
                    categories,
                }
            }
        })
        .collect()
}

/// Rows as numbers for one algorithm (see the module's note): a column-major buffer (what
/// perpetual's `Matrix` reads) and its column count.
pub fn encode(
    features: &[Feature],
    columns: &[Column],
    how: Encoding,
) -> Result<(Vec<f64>, usize), String> {
    let rows = columns.first().map_or(0, Column::rows);
    let mut out = Vec::new();
    let mut width = 0;
    for (f, col) in features.iter().zip(columns) {
        match (f, col) {
            (Feature::Numeric { mean, std, .. }, Column::Numbers(v)) => {
                width += 1;
                match how {
                    Encoding::Native => {
                        out.extend(v.iter().map(|x| if x.is_finite() { *x } else { f64::NAN }));
                    }
                    Encoding::Standardized => out.extend(
                        v.iter()
                            .map(|x| if x.is_finite() { (x - mean) / std } else { 0.0 }),
                    ),
                    Encoding::Imputed => {
                        out.extend(v.iter().map(|x| if x.is_finite() { *x } else { *mean }));
                    }
                }
            }
            (Feature::Categorical { categories, .. }, Column::Text(v)) => {
                let index =
                    |x: &Option<String>| x.as_ref().and_then(|s| categories.binary_search(s).ok());
                match how {
                    Encoding::Native => {
                        width += 1;
                        out.extend(v.iter().map(|x| index(x).map_or(f64::NAN, |i| i as f64)));
                    }
                    Encoding::Imputed => {
                        width += 1;
                        let unseen = categories.len() as f64;
                        out.extend(v.iter().map(|x| index(x).map_or(unseen, |i| i as f64)));
                    }
                    Encoding::Standardized => {
                        for k in 0..categories.len() {
                            width += 1;
                            out.extend(v.iter().map(
                                |x| {
                                    if index(x) == Some(k) { 1.0 } else { 0.0 }
                                },
                            ));
                        }
                    }
                }
            }
            (f, _) => {
                return Err(format!(
                    "feature `{}` was {} when the model was trained",
                    f.name(),
                    match f {
                        Feature::Numeric { .. } => "numeric",
                        Feature::Categorical { .. } => "text",
                    }
                ));
            }
        }
    }
    debug_assert_eq!(out.len(), rows * width);
    Ok((out, width))
}

/// Indexes (among the encoded columns) of the categorical features, for gradient boosting.
pub fn categorical_columns(features: &[Feature]) -> std::collections::HashSet<usize> {
    features
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f, Feature::Categorical { .. }))
        .map(|(i, _)| i)
        .collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// A model ready to score: its booster parsed once, not per batch (a large booster's JSON takes
/// long to parse and much memory to hold).
pub enum Scorer<'a> {
    Linear {
        weights: &'a [f64],
        intercept: f64,
    },
    /// A perpetual booster, flattened once ([`Forest`]): scored without perpetual's per-node
    /// hash lookups.
    Boosted {
        forest: Forest,
        task: TaskKind,
    },
    Trees {
        base: f64,
        /// Each tree's nodes by id.
        nodes: Vec<Vec<Option<&'a TreeNode>>>,
        task: TaskKind,
    },
}

impl Scorer<'_> {
    /// Predictions for column-major rows encoded with [`encode`].
    pub fn predict(&self, data: &[f64], rows: usize, cols: usize) -> Result<Vec<f64>, String> {
        match self {
            Scorer::Linear { weights, intercept } => {
                if weights.len() != cols {
                    return Err(format!(
                        "the model has {} weights for {cols} columns",
                        weights.len()
                    ));
                }
                Ok((0..rows)
                    .map(|r| {
                        sigmoid(
                            intercept
                                + (0..cols)
                                    .map(|c| weights[c] * data[c * rows + r])
                                    .sum::<f64>(),
                        )
                    })
                    .collect())
            }
            Scorer::Boosted { forest, task } => {
                let mut out = forest.predict(data, rows, cols)?;
                if *task == TaskKind::Classification {
                    // perpetual's own predict_proba: the same sigmoid of the same sum.
                    out.iter_mut().for_each(|p| *p = sigmoid(*p));
                }
                Ok(out)
            }
            Scorer::Trees { base, nodes, task } => {
                let mut out = vec![*base; rows];
                for tree in nodes {
                    for (r, sum) in out.iter_mut().enumerate() {
                        *sum += leaf_value(tree, |f| data[f * rows + r], cols)?;
                    }
                }
                if *task == TaskKind::Classification {
                    out.iter_mut().for_each(|p| *p = sigmoid(*p));
                }
                Ok(out)
            }
        }
    }
}

/// The value of the leaf a row reaches in one tree of a Spark ensemble.
fn leaf_value(
    tree: &[Option<&TreeNode>],
    value: impl Fn(usize) -> f64,
    cols: usize,
) -> Result<f64, String> {
    let mut at = 0;
    // A tree of n nodes is at most n deep: more steps mean a cycle in a corrupt artifact.
    for _ in 0..=tree.len() {
        let node = tree
            .get(at)
            .copied()
            .flatten()
            .ok_or_else(|| format!("the ensemble has no node {at}"))?;
        if node.leaf {
            return Ok(node.value);
        }
        if node.feature >= cols {
            return Err(format!(
                "the ensemble splits on column {} of {cols}",
                node.feature
            ));
        }
        at = if value(node.feature) <= node.split {
            node.left
        } else {
            node.right
        };
    }
    Err("the ensemble has a cycle".to_string())
}

impl Model {
    /// How this model's rows are encoded.
    pub fn encoding(&self) -> Encoding {
        if self.ensemble.is_some() {
            Encoding::Imputed
        } else {
            Encoding::of(self.algorithm)
        }
    }

    pub fn scorer(&self) -> Result<Scorer<'_>, String> {
        if let Some(ensemble) = &self.ensemble {
            let nodes = ensemble
                .trees
                .iter()
                .map(|tree| {
                    let size = tree.iter().map(|n| n.id + 1).max().unwrap_or(0);
                    let mut by_id = vec![None; size];
                    for n in tree {
                        by_id[n.id] = Some(n);
                    }
                    by_id
                })
                .collect();
            return Ok(Scorer::Trees {
                base: ensemble.base,
                nodes,
                task: self.task,
            });
        }
        match self.algorithm {
            Algorithm::LogisticRegression => Ok(Scorer::Linear {
                weights: self.weights.as_deref().ok_or("the model has no weights")?,
                intercept: self.intercept.ok_or("the model has no intercept")?,
            }),
            Algorithm::GradientBoosting => Ok(Scorer::Boosted {
                forest: Forest::from_json(self.booster_json()?)
                    .map_err(|e| format!("the booster: {e}"))?,
                task: self.task,
            }),
        }
    }

    /// The booster's JSON as perpetual wrote it.
    pub fn booster_json(&self) -> Result<&str, String> {
        Ok(self
            .booster
            .as_ref()
            .ok_or("the model has no booster")?
            .get())
    }

    /// The booster as perpetual reads it (scoring reads it as a [`Forest`] instead).
    pub fn booster(&self) -> Result<PerpetualBooster, String> {
        PerpetualBooster::from_json(self.booster_json()?).map_err(|e| format!("the booster: {e}"))
    }

    pub fn from_json(text: &[u8]) -> Result<Model, String> {
        let m: Model = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!(
                "format `{}` is not {FORMAT} (made by another flow version?)",
                m.format
            ));
        }
        Ok(m)
    }
}

/// The area under the ROC curve of `scores` for 0/1 `labels` (ties counted half), or None when
/// only one class is present.
pub fn auc(scores: &[f64], labels: &[f64]) -> Option<f64> {
    let pos = labels.iter().filter(|y| **y > 0.5).count();
    if pos == 0 || pos == labels.len() {
        return None;
    }
    let weights = vec![1.0; labels.len()];
    Some(perpetual::metrics::classification::roc_auc_score(
        labels, scores, &weights,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_follows_the_learnt_features() {
        let names = vec!["age".to_string(), "plan".to_string()];
        let train = vec![
            Column::Numbers(vec![20.0, 40.0, f64::NAN]),
            Column::Text(vec![Some("pro".into()), Some("free".into()), None]),
        ];
        let features = learn_features(&names, &train);
        assert_eq!(
            features[1],
            Feature::Categorical {
                name: "plan".into(),
                categories: vec!["free".into(), "pro".into()]
            }
        );
        let rows = vec![
            Column::Numbers(vec![30.0, f64::NAN]),
            Column::Text(vec![Some("pro".into()), Some("gold".into())]),
        ];
        let (gb, w) = encode(&features, &rows, Encoding::Native).unwrap();
        assert_eq!(w, 2);
        assert_eq!((gb[0], gb[2]), (30.0, 1.0));
        assert!(
            gb[1].is_nan() && gb[3].is_nan(),
            "missing and unseen are missing"
        );
        let (lr, w) = encode(&features, &rows, Encoding::Standardized).unwrap();
        assert_eq!(w, 3);
        // age standardized (mean 30, std 10); the missing age at the mean; one-hot plan.
        assert_eq!(lr, vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let (im, w) = encode(&features, &rows, Encoding::Imputed).unwrap();
        assert_eq!(w, 2);
        // The missing age at the training mean; the unseen plan after the known ones.
        assert_eq!(im, vec![30.0, 30.0, 1.0, 2.0]);
        let wrong = vec![Column::Text(vec![None]), Column::Text(vec![None])];
        assert!(
            encode(&features, &wrong, Encoding::Native)
                .unwrap_err()
                .contains("`age` was numeric")
        );
    }

    #[test]
    fn a_spark_ensemble_sums_its_leaves_and_goes_left_at_or_below_the_split() {
        let node = |id, leaf, value, split, left, right| TreeNode {
            id,
            leaf,
            value,
            feature: 0,
            split,
            left,
            right,
        };
        let stump = |split, low, high| {
            vec![
                node(0, false, 0.0, split, 1, 2),
                node(1, true, low, 0.0, 0, 0),
                node(2, true, high, 0.0, 0, 0),
            ]
        };
        let model = Model {
            format: FORMAT.into(),
            task: TaskKind::Regression,
            algorithm: Algorithm::GradientBoosting,
            label: "y".into(),
            features: vec![Feature::Numeric {
                name: "x".into(),
                mean: 0.0,
                std: 1.0,
            }],
            weights: None,
            intercept: None,
            booster: None,
            ensemble: Some(Ensemble {
                base: 0.5,
                trees: vec![stump(1.0, -1.0, 1.0), stump(2.0, 0.25, 0.75)],
                trainer: None,
            }),
        };
        assert_eq!(model.encoding(), Encoding::Imputed);
        let scorer = model.scorer().unwrap();
        // x = 1 is at the first split (left), x = 3 above both.
        assert_eq!(
            scorer.predict(&[1.0, 3.0], 2, 1).unwrap(),
            vec![0.5 - 1.0 + 0.25, 0.5 + 1.0 + 0.75]
        );
        let mut broken = model.clone();
        broken.ensemble.as_mut().unwrap().trees[0][0].left = 0;
        let err = broken.scorer().unwrap().predict(&[1.0], 1, 1).unwrap_err();
        assert!(err.contains("cycle"), "{err}");
    }

    #[test]
    fn auc_ranks_and_needs_both_classes() {
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]),
            Some(0.75)
        );
        assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]), None);
    }
}

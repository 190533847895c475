//! `promote`: makes a candidate version the production one when it beats the production version
//! on `metric` by at least `min_improvement` (absolute; for `rmse`, `mae` and `log_loss`, where
//! lower is better, a decrease), or at once when the model has no production version. With
//! `min_improvement: 0` the candidate must be strictly better. Not promoting is a successful task
//! with `promoted: false` and the reason.
//!
//! The switch is a compare-and-set on the production version the comparison was made against
//! ([`flow_engine::store::ModelRegistry::promote_model_version`]): when another promotion won
//! meanwhile, the candidate is compared again with the new production version.

use async_trait::async_trait;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use flow_engine::store::{ModelStage, ModelVersion, Promotion};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::Num;
use super::predict::resolve_version;
use crate::error::fatal;

pub struct Promote;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    model: String,
    version: Json,
    #[serde(default = "default_metric")]
    metric: String,
    #[serde(default = "no_margin")]
    min_improvement: Num<f64>,
}

fn no_margin() -> Num<f64> {
    Num(0.0)
}

fn default_metric() -> String {
    "auc".to_string()
}

/// Whether a lower value of `metric` is better.
pub fn lower_is_better(metric: &str) -> bool {
    matches!(metric, "rmse" | "mae" | "log_loss")
}

/// How much better `candidate` is than `production` on the metric (positive: better).
pub fn improvement(metric: &str, candidate: f64, production: f64) -> f64 {
    if lower_is_better(metric) {
        production - candidate
    } else {
        candidate - production
    }
}

/// Whether an improvement is enough (see the module's note).
pub fn enough(improvement: f64, min_improvement: f64) -> bool {
    if min_improvement > 0.0 {
        improvement >= min_improvement
    } else {
        improvement > 0.0
    }
}

fn metric_of(v: &flow_engine::store::ModelVersion, metric: &str) -> Result<f64, OperatorError> {
    v.new.metrics[metric].as_f64().ok_or_else(|| {
        let has: Vec<String> = v
            .new
            .metrics
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        fatal(format!(
            "promote: version {} of {} has no metric `{metric}` (it has: {})",
            v.version,
            v.new.model,
            has.join(", ")
        ))
    })
}

/// What the comparison with the production version decided, and why.
struct Verdict {
    promote: bool,
    reason: String,
    /// The candidate's improvement on the metric, when there was a version to compare with.
    gain: Option<f64>,
}

impl Verdict {
    /// The task's output: whether the candidate was promoted, the production version after
    /// the task and the one before it, and the verdict's reason and improvement.
    fn output(self, promoted: bool, production: Option<i64>, previous: Option<i64>) -> Json {
        json!({
            "promoted": promoted,
            "production_version": production,
            "previous_version": previous,
            "reason": self.reason,
            "improvement": self.gain,
        })
    }
}

/// Whether `candidate` (whose metric is `cand_value`) should replace `production`.
fn verdict(
    cfg: &Config,
    candidate: &ModelVersion,
    cand_value: f64,
    production: Option<&ModelVersion>,
) -> Result<Verdict, OperatorError> {
    Ok(match production {
        None => Verdict {
            promote: true,
            reason: "no production version yet".to_string(),
            gain: None,
        },
        Some(p) if p.version == candidate.version => Verdict {
            promote: false,
            reason: "it is the production version already".to_string(),
            gain: None,
        },
        Some(p) => {
            let prod_value = metric_of(p, &cfg.metric)?;
            let gain = improvement(&cfg.metric, cand_value, prod_value);
            let ok = enough(gain, cfg.min_improvement.0);
            let reason = format!(
                "{} {cand_value:.6} against version {}'s {prod_value:.6}: {} {gain:+.6}, {} {}",
                cfg.metric,
                p.version,
                if lower_is_better(&cfg.metric) {
                    "lower by"
                } else {
                    "higher by"
                },
                if ok { "at least" } else { "short of" },
                cfg.min_improvement.0
            );
            Verdict {
                promote: ok,
                reason,
                gain: Some(gain),
            }
        }
    })
}

#[async_trait]
impl Operator for Promote {
    fn name(&self) -> &'static str {
        "promote"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["model", "version"],
            optional: &["metric", "min_improvement"],
            code: &[],
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
        let cfg: Config = super::config(config, "promote")?;
        if cfg.version == "production" {
            return Err(fatal(
                "promote: `version` names the candidate to promote, not `production`",
            ));
        }
        let registry = super::registry(ctx, "promote")?;
        let store_err = |e| OperatorError::Retryable(format!("promote: the model registry: {e}"));
        let candidate =
            resolve_version(registry.as_ref(), &cfg.model, &cfg.version, "promote").await?;
        let cand_value = metric_of(&candidate, &cfg.metric)?;
        for _ in 0..5 {
            let production = registry
                .model_versions(&cfg.model)
                .await
                .map_err(store_err)?
                .into_iter()
                .find(|v| v.stage == ModelStage::Production);
            let current = production.as_ref().map(|p| p.version);
            let verdict = verdict(&cfg, &candidate, cand_value, production.as_ref())?;
            if !verdict.promote {
                ctx.log
                    .line(&format!(
                        "promote: {} version {} stays a candidate: {}",
                        cfg.model, candidate.version, verdict.reason
                    ))
                    .await;
                return Ok(Some(verdict.output(false, current, current)));
            }
            match registry
                .promote_model_version(
                    &cfg.model,
                    candidate.version,
                    current,
                    flow_engine::time::now(),
                )
                .await
                .map_err(store_err)?
            {
                Promotion::Promoted { previous } => {
                    flow_engine::metrics::metrics().model_measured(
                        &cfg.model,
                        "production",
                        &candidate.new.metrics,
                    );
                    ctx.log
                        .line(&format!(
                            "promote: {} version {} is production ({})",
                            cfg.model, candidate.version, verdict.reason
                        ))
                        .await;
                    return Ok(Some(verdict.output(
                        true,
                        Some(candidate.version),
                        previous,
                    )));
                }
                Promotion::Stale { .. } => continue,
                Promotion::Unknown => {
                    return Err(fatal(format!(
                        "promote: {} version {} vanished",
                        cfg.model, candidate.version
                    )));
                }
            }
        }
        Err(OperatorError::Retryable(
            "promote: the production version kept changing; try again".to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn improvement_follows_the_metrics_direction_and_the_margin() {
        assert!((improvement("auc", 0.80, 0.78) - 0.02).abs() < 1e-12);
        assert!((improvement("rmse", 1.0, 1.5) - 0.5).abs() < 1e-12);
        assert!(improvement("log_loss", 0.5, 0.4) < 0.0);
        assert!(enough(0.006, 0.005));
        assert!(!enough(0.004, 0.005));
        assert!(
            !enough(0.0, 0.0),
            "with no margin the candidate must be strictly better"
        );
        assert!(enough(1e-9, 0.0));
    }
}

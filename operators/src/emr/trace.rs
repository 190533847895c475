//! What an EMR step tells a trace: the spans of its submission and its run, and the Spark
//! confs that hand the try's trace context on to the step.

use super::StepRef;

/// The span of an EMR phase (`emr.submit`, `emr.step`): the step's ids once known, and for
/// `emr.step` the state it ended in.
pub(super) fn step_span(phase: &'static str) -> tracing::Span {
    tracing::info_span!(
        "emr",
        otel.name = phase,
        cluster_id = tracing::field::Empty,
        step_id = tracing::field::Empty,
        state = tracing::field::Empty,
    )
}

impl StepRef {
    pub(super) fn record_on(&self, span: &tracing::Span) {
        span.record("cluster_id", self.cluster_id.as_str());
        if let Some(id) = &self.step_id {
            span.record("step_id", id.as_str());
        }
    }
}

/// The Spark confs that carry the try's trace into its step: `spark.flow.traceparent` for the
/// job to read, and `TRACEPARENT` in the driver's and executors' environments, where
/// OpenTelemetry's SDKs look for it.
pub(super) fn trace_confs(traceparent: Option<&str>) -> Vec<String> {
    let Some(tp) = traceparent else {
        return Vec::new();
    };
    [
        "spark.flow.traceparent",
        "spark.yarn.appMasterEnv.TRACEPARENT",
        "spark.executorEnv.TRACEPARENT",
    ]
    .iter()
    .flat_map(|key| ["--conf".to_string(), format!("{key}={tp}")])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traced_try_hands_its_context_to_the_driver_and_executors() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let confs = trace_confs(Some(tp));
        assert_eq!(
            confs,
            [
                "--conf",
                &format!("spark.flow.traceparent={tp}"),
                "--conf",
                &format!("spark.yarn.appMasterEnv.TRACEPARENT={tp}"),
                "--conf",
                &format!("spark.executorEnv.TRACEPARENT={tp}"),
            ]
        );
        assert!(trace_confs(None).is_empty());
    }
}

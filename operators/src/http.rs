//! `http`: one HTTP request; a status outside `expect_status` is a failed try.
//!
//! Validation keeps outside values out of the URL's scheme and host (see
//! `flow_engine::template::url`); here the rendered URL must be `http` or `https`, and a task that
//! lists `allowed_hosts` (so that run-time values may choose the host) may reach only those.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use serde::Deserialize;
use serde_json::{Value as Json, json};

/// The most of a response body that becomes the task's output.
pub const MAX_BODY: u64 = 1 << 20;

pub struct Http;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    json: Option<Json>,
    body: Option<String>,
    expect_status: Option<Expect>,
    /// Seconds for the whole exchange; the task's own `timeout` still applies on top.
    request_timeout: Option<u64>,
    /// The hosts the URL may name (`api.example.com`, or `*.example.com` for its subdomains).
    allowed_hosts: Option<Vec<String>>,
}

/// Refuses a URL that is not `http(s)`, or whose host `allowed_hosts` does not list.
fn check_target(url: &str, allowed: Option<&[String]>) -> Result<(), OperatorError> {
    let fatal = |m: String| OperatorError::Fatal(format!("http: {m}"));
    let parsed = url::Url::parse(url).map_err(|e| fatal(format!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(fatal(format!(
            "`{url}`: only http and https URLs may be requested"
        )));
    }
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let listed = allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == a,
        }
    });
    if listed {
        Ok(())
    } else {
        Err(fatal(format!(
            "host `{host}` is not in allowed_hosts ({})",
            allowed.join(", ")
        )))
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Expect {
    One(u16),
    Many(Vec<u16>),
}

impl Expect {
    fn allows(expect: &Option<Expect>, status: u16) -> bool {
        match expect {
            None => (200..300).contains(&status),
            Some(Expect::One(s)) => *s == status,
            Some(Expect::Many(list)) => list.contains(&status),
        }
    }
}

#[async_trait]
impl Operator for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["url"],
            optional: &[
                "method",
                "headers",
                "json",
                "body",
                "expect_status",
                "request_timeout",
                "allowed_hosts",
            ],
            code: &[],
            shell: &[],
            url: &["url"],
            program: &[],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: Config = serde_json::from_value(config.clone())
            .map_err(|e| OperatorError::Fatal(format!("http: {e}")))?;
        check_target(&cfg.url, cfg.allowed_hosts.as_deref())?;
        if cfg.json.is_some() && cfg.body.is_some() {
            return Err(OperatorError::Fatal(
                "http: give `json` or `body`, not both".into(),
            ));
        }
        let method = cfg
            .method
            .clone()
            .unwrap_or_else(|| {
                if cfg.json.is_some() || cfg.body.is_some() {
                    "POST"
                } else {
                    "GET"
                }
                .into()
            })
            .to_ascii_uppercase();
        ctx.log.line(&format!("http: {method} {}", cfg.url)).await;
        // ureq blocks; the blocking pool keeps the scheduler's threads free. A dropped try
        // abandons the thread, which ends at the request's timeout.
        let (status, body) = tokio::task::spawn_blocking(move || send(&cfg, &method))
            .await
            .map_err(|e| OperatorError::Retryable(format!("http: {e}")))??;
        ctx.log.line(&format!("http: status {status}")).await;
        Ok(Some(body))
    }
}

fn send(cfg: &Config, method: &str) -> Result<(u16, Json), OperatorError> {
    let timeout = Duration::from_secs(cfg.request_timeout.unwrap_or(300));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(&cfg.url);
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    let body: Vec<u8> = match (&cfg.json, &cfg.body) {
        (Some(j), _) => {
            if !cfg
                .headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("content-type"))
            {
                req = req.header("content-type", "application/json");
            }
            serde_json::to_vec(j).map_err(|e| OperatorError::Fatal(format!("http: json: {e}")))?
        }
        (None, Some(b)) => b.clone().into_bytes(),
        (None, None) => Vec::new(),
    };
    let req = req
        .body(body)
        .map_err(|e| OperatorError::Fatal(format!("http: {method} {}: {e}", cfg.url)))?;
    let mut resp = agent.run(req).map_err(|e| match e {
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            OperatorError::Fatal(format!("http: {method} {}: {e}", cfg.url))
        }
        e => OperatorError::Retryable(format!("http: {method} {}: {e}", cfg.url)),
    })?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .unwrap_or_default();
    if !Expect::allows(&cfg.expect_status, status) {
        let snippet: String = text.chars().take(500).collect();
        return Err(OperatorError::Retryable(format!(
            "http: {method} {} answered {status}, expected {}: {snippet}",
            cfg.url,
            match &cfg.expect_status {
                None => "2xx".to_string(),
                Some(Expect::One(s)) => s.to_string(),
                Some(Expect::Many(l)) => format!("{l:?}"),
            }
        )));
    }
    let output = match serde_json::from_str::<Json>(&text) {
        Ok(j) if !text.trim().is_empty() => j,
        _ => json!({ "status": status, "body": text }),
    };
    Ok((status, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_to_listed_hosts_are_requested() {
        assert!(check_target("https://api.example.com/x", None).is_ok());
        for bad in ["file:///etc/passwd", "gopher://h/", "not a url"] {
            assert!(check_target(bad, None).is_err(), "{bad}");
        }
        let allowed = vec!["api.example.com".to_string(), "*.corp.example".to_string()];
        for ok in ["https://API.example.com/v1", "http://a.corp.example:8080/"] {
            assert!(check_target(ok, Some(&allowed)).is_ok(), "{ok}");
        }
        for bad in [
            "https://api.example.com.evil.test/",
            "https://corp.example/",
            "https://evilcorp.example/",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            let err = check_target(bad, Some(&allowed)).unwrap_err().to_string();
            assert!(err.contains("not in allowed_hosts"), "{bad}: {err}");
        }
    }
}

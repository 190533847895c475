//! Named connections from `[connections]` in `flow.toml`.
//!
//! A task names a connection (`connection: lake`); the operator asks for it here when a try runs,
//! so a secret a connection names (`"{{ secrets.NAME }}"`) is read from the scheduler's
//! environment at that moment and never stored anywhere.

use std::collections::BTreeMap;

use flow_engine::operator::OperatorError;
use flow_engine::secrets::Secrets;
use flow_engine::template;
use serde_json::{Map, Value as Json};

/// Every named connection, as `flow.toml` gives them (values not yet rendered).
#[derive(Debug, Clone, Default)]
pub struct Connections {
    entries: BTreeMap<String, Map<String, Json>>,
}

/// An `aws` connection: where S3 (and EMR) are, and how to sign requests. Unset fields fall back
/// to the standard AWS chain (environment, profile, instance metadata).
#[derive(Clone, Default, PartialEq)]
pub struct Aws {
    pub region: Option<String>,
    /// Every service's endpoint (an S3-compatible store, an emulator); unset: AWS's own.
    pub endpoint_url: Option<String>,
    /// S3's endpoint, over `endpoint_url`.
    pub s3_endpoint_url: Option<String>,
    /// EMR's endpoint, over `endpoint_url`.
    pub emr_endpoint_url: Option<String>,
    pub force_path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Aws {
    // Keys stay out of debug output, whatever prints it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aws")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("s3_endpoint_url", &self.s3_endpoint_url)
            .field("emr_endpoint_url", &self.emr_endpoint_url)
            .field("force_path_style", &self.force_path_style)
            .finish_non_exhaustive()
    }
}

/// Where the `warehouse` operator loads: a PostgreSQL-protocol database, and for Redshift the S3
/// stage its COPY reads from.
#[derive(Debug, Clone, PartialEq)]
pub enum WarehouseTarget {
    Postgres { url: String },
    Redshift(Redshift),
}

/// A `redshift` connection: `url` (postgres://user:pw@cluster:5439/db), `iam_role` (the role
/// COPY reads the stage with), `stage` (an `s3://bucket/prefix/` flow may write and delete
/// under) and `stage_connection` (the `aws` connection flow writes the stage with; unset: the
/// standard AWS chain).
#[derive(Clone, PartialEq)]
pub struct Redshift {
    pub url: String,
    pub iam_role: String,
    pub stage: String,
    pub stage_connection: Option<String>,
}

impl std::fmt::Debug for Redshift {
    // The URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redshift")
            .field("iam_role", &self.iam_role)
            .field("stage", &self.stage)
            .field("stage_connection", &self.stage_connection)
            .finish_non_exhaustive()
    }
}

impl Connections {
    pub fn new(entries: BTreeMap<String, Map<String, Json>>) -> Connections {
        Connections { entries }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The secrets written in `flow.toml` itself rather than named as `{{ secrets.NAME }}`: the
    /// keys and passwords of connections, and the password of each `url` (rendered with
    /// `secrets` first, so that `postgres://u:plain@{{ secrets.HOST }}/db` gives `plain`). They
    /// are masked like secrets wherever flow writes or shows text.
    pub fn plain_secrets(&self, secrets: &Secrets) -> Vec<String> {
        let mut out = Vec::new();
        for (name, entry) in &self.entries {
            for (key, value) in entry {
                let Some(text) = value.as_str() else {
                    continue;
                };
                if SECRET_KEYS.contains(&key.as_str()) && !template::is_template(text) {
                    out.push(text.to_string());
                } else if key == "url" {
                    // A url that does not render yet (a secret missing) is reported when used.
                    if let Ok(Some(url)) = render_key(name, entry, key, secrets) {
                        out.extend(url_password(&url));
                    }
                }
            }
        }
        out
    }

    fn entry(&self, name: &str, want: &str) -> Result<&Map<String, Json>, OperatorError> {
        self.entry_of(name, &[want])
    }

    fn entry_of(&self, name: &str, wants: &[&str]) -> Result<&Map<String, Json>, OperatorError> {
        let entry = self.entries.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            OperatorError::Fatal(if known.is_empty() {
                format!("connection `{name}` is not defined: flow.toml has no [connections]")
            } else {
                format!(
                    "connection `{name}` is not defined in flow.toml (defined: {})",
                    known.join(", ")
                )
            })
        })?;
        let kind = entry.get("type").and_then(Json::as_str).unwrap_or("");
        if !wants.contains(&kind) {
            let want = wants.join("\" or \"");
            return Err(OperatorError::Fatal(format!(
                "connection `{name}` has type \"{kind}\", but this task needs a \"{want}\" connection"
            )));
        }
        Ok(entry)
    }

    /// The `aws` connection `name`, or the standard AWS chain alone when `name` is None.
    pub fn aws(&self, name: Option<&str>, secrets: &Secrets) -> Result<Aws, OperatorError> {
        let Some(name) = name else {
            return Ok(Aws::default());
        };
        let entry = self.entry(name, "aws")?;
        let text = |key: &str| render_key(name, entry, key, secrets);
        Ok(Aws {
            region: text("region")?,
            endpoint_url: text("endpoint_url")?,
            s3_endpoint_url: text("s3_endpoint_url")?,
            emr_endpoint_url: text("emr_endpoint_url")?,
            force_path_style: match entry.get("force_path_style") {
                None => false,
                Some(Json::Bool(b)) => *b,
                Some(_) => {
                    return Err(OperatorError::Fatal(format!(
                        "connection `{name}`: force_path_style must be true or false"
                    )));
                }
            },
            access_key_id: text("access_key_id")?,
            secret_access_key: text("secret_access_key")?,
            session_token: text("session_token")?,
        })
    }
}

impl Connections {
    /// The `postgres` or `redshift` connection `name`, with its secrets filled in.
    pub fn warehouse(
        &self,
        name: &str,
        secrets: &Secrets,
    ) -> Result<WarehouseTarget, OperatorError> {
        let entry = self.entry_of(name, &["postgres", "redshift"])?;
        let text = |key: &str| render_key(name, entry, key, secrets);
        let needed = |key: &str, why: &str| {
            text(key)?.ok_or_else(|| {
                OperatorError::Fatal(format!("connection `{name}` has no {key} ({why})"))
            })
        };
        let url = needed("url", "the database to connect to")?;
        if entry.get("type").and_then(Json::as_str) == Some("postgres") {
            return Ok(WarehouseTarget::Postgres { url });
        }
        let stage = needed("stage", "the s3:// prefix flow stages loads under for COPY")?;
        if !stage.starts_with("s3://") {
            return Err(OperatorError::Fatal(format!(
                "connection `{name}`: stage `{stage}` is not an s3:// URL"
            )));
        }
        Ok(WarehouseTarget::Redshift(Redshift {
            url,
            iam_role: needed("iam_role", "the role Redshift's COPY reads the stage with")?,
            stage,
            stage_connection: text("stage_connection")?,
        }))
    }
}

/// Connection keys whose values are secrets.
const SECRET_KEYS: &[&str] = &["secret_access_key", "session_token", "password"];

/// The password of a URL (`scheme://user:PASSWORD@host/...`), as written and percent-decoded:
/// either form may show up in a message.
pub fn url_password(url: &str) -> Vec<String> {
    let Some(password) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .filter(|p| !p.is_empty() && !template::is_template(p))
    else {
        return Vec::new();
    };
    let decoded = percent_encoding::percent_decode_str(&password)
        .decode_utf8_lossy()
        .into_owned();
    if decoded == password {
        vec![password]
    } else {
        vec![password, decoded]
    }
}

fn render_key(
    name: &str,
    entry: &Map<String, Json>,
    key: &str,
    secrets: &Secrets,
) -> Result<Option<String>, OperatorError> {
    let value = match entry.get(key) {
        None => return Ok(None),
        Some(Json::String(s)) => s,
        Some(_) => {
            return Err(OperatorError::Fatal(format!(
                "connection `{name}`: {key} must be a string"
            )));
        }
    };
    if !template::is_template(value) {
        return Ok(Some(value.clone()));
    }
    let ctx = template::context(serde_json::json!({ "secrets": secrets.to_json() }));
    template::render(value, &ctx).map(Some).map_err(|e| {
        OperatorError::Fatal(
            secrets
                .masker()
                .mask(&format!("connection `{name}`: {key} did not render: {e}")),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns() -> Connections {
        let toml: BTreeMap<String, Map<String, Json>> = serde_json::from_value(serde_json::json!({
            "lake": {"type": "aws", "region": "us-east-1", "endpoint_url": "http://127.0.0.1:5055",
                     "force_path_style": true, "access_key_id": "AK",
                     "secret_access_key": "{{ secrets.LAKE_SECRET }}"},
            "warehouse": {"type": "postgres", "url": "postgres://loader:{{ secrets.WH }}@h/db"},
        }))
        .unwrap();
        Connections::new(toml)
    }

    #[test]
    fn renders_secrets_into_the_connection_it_is_asked_for() {
        let secrets = Secrets::from_pairs([
            ("LAKE_SECRET".to_string(), "s3cr3t".to_string()),
            ("WH".to_string(), "pw".to_string()),
        ]);
        let aws = conns().aws(Some("lake"), &secrets).unwrap();
        assert_eq!(aws.secret_access_key.as_deref(), Some("s3cr3t"));
        assert_eq!(aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5055"));
        assert!(aws.force_path_style);
        assert!(!format!("{aws:?}").contains("s3cr3t"));
        assert_eq!(
            conns().warehouse("warehouse", &secrets).unwrap(),
            WarehouseTarget::Postgres {
                url: "postgres://loader:pw@h/db".into()
            }
        );
    }

    #[test]
    fn passwords_written_in_flow_toml_are_found_for_masking() {
        let toml: BTreeMap<String, Map<String, Json>> = serde_json::from_value(serde_json::json!({
            "lake": {"type": "aws", "access_key_id": "AK", "secret_access_key": "plain-secret"},
            "wh": {"type": "postgres", "url": "postgres://loader:p%40ss@h/db"},
            "named": {"type": "postgres", "url": "postgres://u:{{ secrets.WH }}@h/db"},
            "host": {"type": "postgres", "url": "postgres://u:plainpw@{{ secrets.HOST }}/db"},
        }))
        .unwrap();
        let secrets = Secrets::from_pairs([
            ("WH".to_string(), "wh-secret".to_string()),
            ("HOST".to_string(), "db.internal".to_string()),
        ]);
        let mut found = Connections::new(toml).plain_secrets(&secrets);
        found.sort();
        assert_eq!(
            found,
            vec!["p%40ss", "p@ss", "plain-secret", "plainpw", "wh-secret"]
        );
        assert!(url_password("sqlite:///tmp/flow.db").is_empty());
        assert!(url_password("postgres://postgres@127.0.0.1/x").is_empty());
    }

    #[test]
    fn unknown_wrong_type_and_missing_secret_are_clear_errors() {
        let secrets = Secrets::from_pairs([]);
        let err = conns().aws(Some("lak"), &secrets).unwrap_err().to_string();
        assert!(
            err.contains("`lak` is not defined") && err.contains("lake, warehouse"),
            "{err}"
        );
        let err = conns()
            .aws(Some("warehouse"), &secrets)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a \"aws\" connection"), "{err}");
        let err = conns()
            .warehouse("warehouse", &secrets)
            .unwrap_err()
            .to_string();
        assert!(err.contains("url did not render"), "{err}");
        let err = conns().warehouse("lake", &secrets).unwrap_err().to_string();
        assert!(
            err.contains("needs a \"postgres\" or \"redshift\" connection"),
            "{err}"
        );
    }

    #[test]
    fn a_redshift_connection_needs_its_role_and_an_s3_stage() {
        let of = |entry: Json| {
            let toml: BTreeMap<String, Map<String, Json>> =
                serde_json::from_value(serde_json::json!({ "rs": entry })).unwrap();
            Connections::new(toml).warehouse("rs", &Secrets::from_pairs([]))
        };
        let full = serde_json::json!({"type": "redshift", "url": "postgres://u:pw@c:5439/dev",
            "iam_role": "arn:aws:iam::1:role/load", "stage": "s3://b/stage/",
            "stage_connection": "lake"});
        let WarehouseTarget::Redshift(rs) = of(full.clone()).unwrap() else {
            panic!("not redshift");
        };
        assert_eq!(rs.iam_role, "arn:aws:iam::1:role/load");
        assert_eq!(rs.stage_connection.as_deref(), Some("lake"));
        assert!(!format!("{rs:?}").contains("pw"));
        let without = |key: &str| {
            let mut e = full.clone();
            e.as_object_mut().unwrap().remove(key);
            of(e).unwrap_err().to_string()
        };
        assert!(without("iam_role").contains("`rs` has no iam_role"));
        assert!(without("stage").contains("`rs` has no stage"));
        let mut local = full.clone();
        local["stage"] = "/tmp/stage".into();
        assert!(
            of(local)
                .unwrap_err()
                .to_string()
                .contains("is not an s3:// URL")
        );
    }
}

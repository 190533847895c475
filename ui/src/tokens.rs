//! `flow tokens create|list|revoke`: the API tokens' lifecycle from the command line. The same
//! operations are `POST`, `GET` and `DELETE /api/v1/tokens` for admins (`api/meta.rs`).

use anyhow::Result;
use chrono::{DateTime, Utc};
use flow_engine::store::{Role, TokenInfo, new_token};
use flow_engine::time::{now, rfc3339};
use serde_json::{Value as Json, json};

use crate::cli::Global;
use crate::context::{open, usage};
use crate::render::{short_ts, table};

/// When a token made now with `--expires TEXT` (`30d`, `12h`) stops working.
pub fn expiry(text: Option<&str>, from: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
    let Some(text) = text else {
        return Ok(None);
    };
    let d = flow_engine::schedule::parse_duration(text)
        .map_err(|e| format!("--expires {text}: {e}"))?;
    if d.is_zero() {
        return Err(format!(
            "--expires {text}: a token must live longer than that"
        ));
    }
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| from.checked_add_signed(d))
        .map(Some)
        .ok_or_else(|| format!("--expires {text}: too far in the future"))
}

/// A token as `flow tokens list --json` and `GET /api/v1/tokens` show it.
pub fn token_json(t: &TokenInfo) -> Json {
    json!({
        "name": t.name,
        "role": t.role.as_str(),
        "created_at": rfc3339(t.created_at),
        "last_used_at": t.last_used_at.map(rfc3339),
        "expires_at": t.expires_at.map(rfc3339),
    })
}

pub async fn create(g: &Global, name: &str, role: &str, expires: Option<&str>) -> Result<u8> {
    let role: Role = role.parse().map_err(usage)?;
    if name.trim().is_empty() {
        return Err(usage("the token name must not be empty"));
    }
    let created = now();
    let expires_at = expiry(expires, created).map_err(usage)?;
    let ctx = open(g).await?;
    let (token, hash) = new_token();
    if !ctx
        .store
        .create_token(name, role, &hash, created, expires_at)
        .await?
    {
        return Err(usage(format!(
            "a token named '{name}' exists already; choose another name"
        )));
    }
    println!("{token}");
    let until = expires_at.map_or(String::new(), |t| format!(", valid until {}", rfc3339(t)));
    eprintln!(
        "token '{name}' ({}) created{until}; it is shown only this once",
        role.as_str()
    );
    Ok(0)
}

pub async fn list(g: &Global, as_json: bool) -> Result<u8> {
    let ctx = open(g).await?;
    let tokens = ctx.store.list_tokens().await?;
    if as_json {
        let all: Vec<Json> = tokens.iter().map(token_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(0);
    }
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.as_str().to_string(),
                short_ts(Some(t.created_at)),
                short_ts(t.last_used_at),
                short_ts(t.expires_at),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["name", "role", "created", "last used", "expires"], rows)
    );
    Ok(0)
}

pub async fn revoke(g: &Global, name: &str) -> Result<u8> {
    let ctx = open(g).await?;
    if !ctx.store.revoke_token(name).await? {
        return Err(usage(format!("no token is named '{name}'")));
    }
    eprintln!("token '{name}' revoked: it is refused from now on, its page sessions included");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_a_duration_from_now() {
        let t0 = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(expiry(None, t0), Ok(None));
        assert_eq!(
            expiry(Some("30d"), t0),
            Ok(Some(t0 + chrono::Duration::days(30)))
        );
        assert!(expiry(Some("0s"), t0).is_err());
        assert!(expiry(Some("soon"), t0).is_err());
    }
}

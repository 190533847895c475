//! API tokens (migrations 0002 and 0011): [`TokenStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Result;

/// API token roles, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role '{s}' (expected viewer, operator or admin)"
            )),
        }
    }
}

/// A new API token: the secret (shown once) and the hash the database keeps.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "flow_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An API token as listed: never its secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Who a valid token speaks for: [`TokenStore::token_role`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub name: String,
    pub role: Role,
}

/// When a token was used: [`TokenStore::touch_tokens`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUsed {
    pub name: String,
    pub at: DateTime<Utc>,
}

/// One request against a budget kept in the database ([`TokenStore::spend_rate`]): the
/// generic cell rate algorithm (GCRA), as the `governor` crate runs it in a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateAsk {
    /// Whose budget: a token's name, say.
    pub key: String,
    pub now: DateTime<Utc>,
    /// The time one request costs: a minute over the requests allowed per minute.
    pub emission: std::time::Duration,
    /// Requests allowed at once from a full budget.
    pub burst: u32,
}

/// What [`TokenStore::spend_rate`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateAnswer {
    Allowed,
    /// Over budget: the request is refused and may be made again after this long.
    Wait(std::time::Duration),
}

/// API tokens: only a SHA-256 hash of each is kept.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a token's hash under a unique name; false if the name is taken.
    async fn create_token(
        &self,
        name: &str,
        role: Role,
        token_hash: &str,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool>;
    /// The name and role of the token with this hash, if it exists and has not expired at
    /// `now`.
    async fn token_role(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<TokenGrant>>;
    /// Every token, by name.
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>>;
    /// Deletes the token named `name`; false if there is none.
    async fn revoke_token(&self, name: &str) -> Result<bool>;
    /// Records when tokens were last used, a batch in one transaction; a time never moves back.
    async fn touch_tokens(&self, used: &[TokenUsed]) -> Result<()>;
    /// Spends one request of the budget `ask.key` names, shared by every process on this
    /// database, in one atomic statement; a refused request spends nothing.
    async fn spend_rate(&self, ask: &RateAsk) -> Result<RateAnswer>;
}

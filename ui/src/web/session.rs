//! Login, sessions and CSRF (design in `docs/ui.md`).
//!
//! A session is an opaque random id in an HttpOnly, SameSite=Strict cookie; the server keeps, in
//! memory, the hash of the token that logged in and the session's CSRF token. The token itself is
//! never stored in the browser, and each request looks the token's role up again, so a session
//! has exactly its token's rights. Sessions end on logout, after `IDLE` without a request, or
//! when the server restarts (people log in again; scripts use a bearer header).
//!
//! CSRF: every form of a session carries the session's synchronizer token, compared on every POST
//! in constant time. Requests with an `Authorization: Bearer` header need none: a browser never
//! adds that header on its own, so a forged cross-site request cannot carry it.

use std::sync::Arc;

use askama::Template;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, COOKIE, HeaderValue, SET_COOKIE};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use flow_engine::store::{Role, TokenGrant, token_hash};
use serde::Deserialize;

use super::{Base, PageError, PageForm, PageResult, html};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "flow_session";
/// The login form's own CSRF token (double submit: cookie and form field must match), so that
/// another site cannot log a browser in under its own token.
const LOGIN_COOKIE: &str = "flow_login";
/// Compares secrets without an early exit, so the time taken says nothing about the prefix.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Who is looking at a page: by bearer header or session cookie. Without either, the page
/// redirects to the login form.
#[derive(Debug, Clone)]
pub struct Who {
    pub name: String,
    pub role: Role,
    /// The session's CSRF token; None for a bearer caller (who needs none).
    pub csrf: Option<String>,
}

impl Who {
    pub fn can_operate(&self) -> bool {
        self.role >= Role::Operator
    }

    /// For a POST: the CSRF token of the form must be the session's.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), PageError> {
        match &self.csrf {
            None => Ok(()),
            Some(expected) if given.is_some_and(|g| same(g, expected)) => Ok(()),
            Some(_) => Err(PageError::Forbidden(
                "the form's CSRF token is missing or not this session's; reload the page and \
                 try again"
                    .into(),
            )),
        }
    }

    /// For an action: the token must be an operator's or an admin's.
    pub fn require_operator(&self) -> Result<(), PageError> {
        if self.can_operate() {
            Ok(())
        } else {
            Err(PageError::Forbidden(format!(
                "token '{}' has the role {}; this needs operator or above",
                self.name,
                self.role.as_str()
            )))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Who {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Who, PageError> {
        let (hash, csrf) = if let Some(value) = parts.headers.get(AUTHORIZATION) {
            let text = value.to_str().unwrap_or("");
            let token = match text.split_once(' ') {
                Some((scheme, t))
                    if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() =>
                {
                    t.trim()
                }
                _ => {
                    return Err(PageError::Unauthorized(
                        "the Authorization header must be `Bearer TOKEN`".into(),
                    ));
                }
            };
            (token_hash(token), None)
        } else if let Some(live) =
            cookie(&parts.headers, SESSION_COOKIE).and_then(|id| state.sessions.touch(id))
        {
            (live.token_hash, Some(live.csrf))
        } else {
            return Err(login_redirect(parts));
        };
        let now = flow_engine::time::now();
        let Some(TokenGrant { name, role }) = state.store.token_role(&hash, now).await? else {
            if csrf.is_some() {
                // The session's token is gone from the database (revoked) or expired: so is
                // the session.
                if let Some(id) = cookie(&parts.headers, SESSION_COOKIE) {
                    state.sessions.remove(id);
                }
                return Err(login_redirect(parts));
            }
            return Err(PageError::Unauthorized(
                "unknown token (or one that expired or was revoked); create one with `flow tokens \
                 create NAME --role ROLE`"
                    .into(),
            ));
        };
        state.token_use.note(&name, now);
        // Pages count against the token's budget like the API, so a script polling pages cannot
        // starve the other clients either.
        if state.limiter.check_key(&name).is_err() {
            return Err(PageError::TooManyRequests);
        }
        Ok(Who { name, role, csrf })
    }
}

fn login_redirect(parts: &Parts) -> PageError {
    // After logging in the browser GETs `next`: a form's POST target would only answer 405.
    let next = match parts.method {
        axum::http::Method::GET => parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into()),
        _ => "/".into(),
    };
    PageError::Login { next }
}

/// Only a path on this server: `//host` and `/\host` would leave it (an open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.starts_with("/login")
                && !n.chars().any(char::is_control) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    base: Base,
    csrf: String,
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_page(next: String, error: Option<String>) -> Response {
    let csrf = crate::state::sessions::random_hex();
    let mut res = html(&LoginPage {
        base: Base::anonymous("Log in"),
        csrf: csrf.clone(),
        next,
        error: error.clone(),
    });
    if error.is_some() {
        *res.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
    }
    set_cookie(&mut res, &format!("{LOGIN_COOKIE}={csrf}"));
    res
}

fn set_cookie(res: &mut Response, value: &str) {
    // Without `Secure`: the server is usually reached over plain http on localhost; behind a TLS
    // proxy the cookie is still only sent back to this origin (SameSite=Strict, docs/ui.md).
    let full = format!("{value}; HttpOnly; SameSite=Strict; Path=/");
    if let Ok(v) = HeaderValue::from_str(&full) {
        res.headers_mut().append(SET_COOKIE, v);
    }
}

pub async fn login_form(Query(q): Query<NextQuery>) -> Response {
    login_page(safe_next(q.next.as_deref()), None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: Option<String>,
    next: Option<String>,
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    PageForm(form): PageForm<LoginForm>,
) -> PageResult {
    let client = crate::client::client_addr(peer.ip(), &headers, &state.trusted_proxies);
    if state.login_limiter.check_key(&client).is_err() {
        tracing::warn!("too many login attempts from {client}");
        return Err(PageError::TooManyRequests);
    }
    let next = safe_next(form.next.as_deref());
    let expected = cookie(&headers, LOGIN_COOKIE);
    let fresh = match (expected, form.csrf.as_deref()) {
        (Some(a), Some(b)) => same(a, b),
        _ => false,
    };
    if !fresh {
        return Err(PageError::Forbidden(
            "the login form's CSRF token is missing or does not match its cookie; open /login \
             again"
                .into(),
        ));
    }
    let hash = token_hash(form.token.trim());
    let Some(TokenGrant { name, .. }) = state
        .store
        .token_role(&hash, flow_engine::time::now())
        .await?
    else {
        return Ok(login_page(
            next,
            Some(
                "unknown token (or one that expired or was revoked); create one with `flow tokens \
                 create NAME --role ROLE`"
                    .into(),
            ),
        ));
    };
    let id = state.sessions.create(hash);
    tracing::info!("token '{name}' logged in to the web pages");
    let mut res = Redirect::to(&next).into_response();
    set_cookie(&mut res, &format!("{SESSION_COOKIE}={id}"));
    // The login form's cookie has done its job.
    set_cookie(&mut res, &format!("{LOGIN_COOKIE}=; Max-Age=0"));
    Ok(res)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

pub async fn logout(
    State(state): State<Arc<AppState>>,
    who: Who,
    headers: HeaderMap,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    who.check_csrf(form.csrf.as_deref())?;
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state.sessions.remove(id);
    }
    let mut res = Redirect::to("/login").into_response();
    set_cookie(&mut res, &format!("{SESSION_COOKIE}=; Max-Age=0"));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/dags/a?x=1")), "/dags/a?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/login")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn csrf_is_checked_only_for_sessions() {
        let bearer = Who {
            name: "t".into(),
            role: Role::Operator,
            csrf: None,
        };
        assert!(bearer.check_csrf(None).is_ok());
        let session = Who {
            csrf: Some("abc".into()),
            ..bearer
        };
        assert!(session.check_csrf(Some("abc")).is_ok());
        assert!(session.check_csrf(Some("abd")).is_err());
        assert!(session.check_csrf(None).is_err());
    }
}

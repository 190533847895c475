//! The pages' CSS and JavaScript, compiled into the binary: nothing to install or build beside
//! `cargo`. Each URL carries a hash of the file's content, so the files can be cached for a year
//! and a new binary's files are still fetched at once.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use super::PageError;

const FILES: &[(&str, &str, &[u8])] = &[
    (
        "flow.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/flow.css"),
    ),
    (
        "flow.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/flow.js"),
    ),
];

static VERSIONS: LazyLock<Vec<String>> = LazyLock::new(|| {
    use sha2::Digest;
    FILES
        .iter()
        .map(|(_, _, bytes)| {
            sha2::Sha256::digest(bytes)
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
});

/// The URL of an embedded file, with its content hash.
pub fn url(name: &str) -> String {
    match FILES.iter().position(|(n, _, _)| *n == name) {
        Some(i) => format!("/static/{name}?v={}", VERSIONS[i]),
        None => format!("/static/{name}"),
    }
}

pub async fn serve(Path(file): Path<String>) -> Result<Response, PageError> {
    let Some((_, mime, bytes)) = FILES.iter().find(|(n, _, _)| *n == file) else {
        return Err(PageError::NotFound(format!("no static file '{file}'")));
    };
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(res)
}

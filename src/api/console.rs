//! The web console: the single-page app compiled into the binary (from
//! `src/web/dist`, see ARCHITECTURE.md), or from `console_dir` when one is
//! configured (console development). Served at `/`, with every unknown
//! non-API path answered by its `index.html` (the app routes itself);
//! unknown `/api/…` paths stay JSON errors.

use std::path::Path;

use axum::Router;
use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use super::ApiError;

/// The built console (`npm --prefix src/web run build`), committed so that a
/// clone with only Rust builds the whole product; CI checks it is current.
#[derive(rust_embed::Embed)]
#[folder = "src/web/dist/"]
struct Bundle;

/// The fallback of the API router: the console's files.
pub fn fallback(dir: Option<&Path>) -> Router {
    let files = dir.map(|dir| ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html"))));
    Router::new().fallback(move |request: Request| {
        let files = files.clone();
        async move {
            if request.uri().path().starts_with("/api/") {
                return ApiError::NoRoute(request.uri().path().to_owned()).into_response();
            }
            match files {
                Some(files) => match files.oneshot(request).await {
                    Ok(response) => response.into_response(),
                    Err(error) => ApiError::Internal(error.to_string()).into_response(),
                },
                None => embedded(&request),
            }
        }
    })
}

/// A file of the compiled-in bundle (`index.html` for any other path), with an
/// ETag so that a browser revalidates instead of downloading it again.
fn embedded(request: &Request) -> Response {
    let path = request.uri().path().trim_start_matches('/');
    let file = Bundle::get(path)
        .filter(|_| !path.is_empty())
        .or_else(|| Bundle::get("index.html"));
    let Some(file) = file else {
        return ApiError::Internal("the binary was built without the console".into())
            .into_response();
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let etag = HeaderValue::from_str(&etag).expect("hex is a valid header value");
    if request.headers().get(IF_NONE_MATCH) == Some(&etag) {
        return (StatusCode::NOT_MODIFIED, [(ETAG, etag)]).into_response();
    }
    let content_type = HeaderValue::from_str(file.metadata.mimetype())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    (
        [
            (CONTENT_TYPE, content_type),
            (ETAG, etag),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        file.data,
    )
        .into_response()
}

//! The web console: the built single-page app from `console_dir`, served at
//! `/`, with every unknown non-API path answered by its `index.html` (the app
//! routes itself). Unknown `/api/…` paths stay JSON errors.

use std::path::Path;

use axum::Router;
use axum::extract::Request;
use axum::response::{Html, IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use super::ApiError;

/// The fallback of the API router: the console's files, or what to do when it is not built.
pub fn fallback(dir: &Path) -> Router {
    let index = dir.join("index.html");
    let files = index
        .exists()
        .then(|| ServeDir::new(dir).fallback(ServeFile::new(&index)));
    let missing = dir.display().to_string();
    Router::new().fallback(move |request: Request| {
        let (files, missing) = (files.clone(), missing.clone());
        async move {
            if request.uri().path().starts_with("/api/") {
                return ApiError::NoRoute(request.uri().path().to_owned()).into_response();
            }
            match files {
                Some(files) => match files.oneshot(request).await {
                    Ok(response) => response.into_response(),
                    Err(error) => ApiError::Internal(error.to_string()).into_response(),
                },
                None => not_built(&missing),
            }
        }
    })
}

fn not_built(dir: &str) -> Response {
    Html(format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>LinkOps</title>\
         <h1>LinkOps</h1><p>The API is up (<a href=\"/api/openapi.json\">OpenAPI</a>), but the web console \
         is not installed in <code>{dir}</code>.</p><p>Build it with <code>npm --prefix src/web ci &amp;&amp; \
         npm --prefix src/web run build</code> and point <code>console_dir</code> at <code>src/web/dist</code>.</p>"
    ))
    .into_response()
}

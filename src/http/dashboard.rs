//! The web dashboard at `/`: one page of plain HTML, CSS and JavaScript,
//! embedded in the binary (no build step, nothing fetched from a network),
//! that reads and steers everything through API v1 with the user's token.
//!
//! The page itself holds no data, so it needs no token; the API calls it
//! makes do. It keeps the token in the tab's `sessionStorage`, asks for one
//! when the API answers 401, and takes one from `/?token=T`, which it then
//! removes from the address bar. Its content security policy allows only
//! its own scripts and styles.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// Only the page's own files; inline `style` attributes draw progress bars.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                      img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The token may arrive in the address (`/?token=T`): never send
            // the address on to another site.
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// `GET /`.
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/app.js`.
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /dashboard/app.css`.
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

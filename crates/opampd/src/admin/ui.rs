//! The operator console: a static page on the admin listener, `/` and its assets under `/ui/`.
//! The files (`crates/opampd/ui/`) are compiled into the binary; there is no build step and no
//! third-party code. The page reads the admin API from the browser (`/api/...`, with the admin
//! token as a bearer header when one is set), so serving it needs no token and no state.
//!
//! Every answer forbids what the page never does (inline script, other origins, framing) with a
//! strict `Content-Security-Policy`, and is revalidated by its `ETag` (a hash of the file, so a
//! new binary's page is never mixed with a cached old script).

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::state::AppState;

/// One embedded file.
#[derive(Debug)]
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../ui/index.html"),
};

const ASSETS: [Asset; 3] = [
    Asset {
        path: "/ui/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/console.js"),
    },
    Asset {
        path: "/ui/console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/console.css"),
    },
    Asset {
        path: "/ui/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../ui/favicon.svg"),
    },
];

/// Only this origin's script, styles, images and API; no inline script or style, no plugins,
/// no framing, no form posts, no `<base>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    let mut router = Router::new().route("/", get(|h: HeaderMap| async move { serve(&INDEX, &h) }));
    for asset in &ASSETS {
        router = router.route(asset.path, get(move |h: HeaderMap| async move { serve(asset, &h) }));
    }
    router
}

/// 200 with the file, or 304 when the browser's copy is current. `axum` answers `HEAD` from
/// the same handler without the body.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = etag(asset.body);
    let current = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == etag || tag.trim() == "*");
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // cached, but asked again every time: the answer is a 304 unless the binary changed
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex is a header value"));
    if current {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (StatusCode::OK, headers, asset.body).into_response()
    }
}

/// A strong validator: FNV-1a of the file, quoted.
fn etag(body: &[u8]) -> String {
    let hash = body
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_by_relative_path() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        for asset in &ASSETS {
            let relative = asset.path.trim_start_matches('/');
            assert!(page.contains(&format!("\"{relative}\"")), "index.html refers to {relative}");
        }
        // nothing inline for the CSP to refuse, and nothing from elsewhere
        assert!(
            !page.contains("<script>") && !page.contains("style="),
            "no inline script or style"
        );
        assert!(!page.contains("http://") && !page.contains("https://"), "no other origin");
    }

    #[test]
    fn the_script_never_parses_data_as_html() {
        let js = std::str::from_utf8(ASSETS[0].body).unwrap();
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!js.contains(sink), "console.js must not use {sink}");
        }
    }

    #[test]
    fn etags_differ_by_content() {
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"a"), etag(b"a"));
        assert!(etag(b"").starts_with('"') && etag(b"").ends_with('"'));
    }
}

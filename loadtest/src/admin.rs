//! opampd's admin API as the loadtest calls it: one client for the admin listeners (loopback
//! only, checked by the caller) that sends `--admin-token` as a bearer token on every call, and
//! the remote-config calls (`PUT`/`GET /api/configs/{name}`). `verify` pages the agents through
//! the same client. No judging here: callers read the JSON.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;

/// Tries of one config call, rotating through the admin URLs (an instance may be down, a write
/// may meet a concurrent one). A `PUT` of the same body is idempotent, so retrying it is safe.
const TRIES: usize = 4;

/// The admin listeners, tried in turn, and a client that authenticates to them.
#[derive(Debug, Clone)]
pub struct Admin {
    client: reqwest::Client,
    urls: Vec<Url>,
}

impl Admin {
    /// `token`, when given, is the whole `Authorization` value (see [`bearer`]).
    pub fn new(urls: Vec<Url>, token: Option<&HeaderValue>) -> anyhow::Result<Self> {
        if urls.is_empty() {
            bail!("no admin URL");
        }
        let mut headers = HeaderMap::new();
        if let Some(value) = token {
            headers.insert(AUTHORIZATION, value.clone());
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .context("building the admin client")?;
        Ok(Self { client, urls })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn urls(&self) -> &[Url] {
        &self.urls
    }

    /// `PUT /api/configs/{name}` with `body`; the stored config as the server answers it.
    pub async fn put_config(&self, name: &str, body: &Value) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(body).context("encoding the config")?;
        self.config_call(name, Some(body)).await
    }

    /// `GET /api/configs/{name}`: the config and its `"agents"` counts.
    pub async fn get_config(&self, name: &str) -> anyhow::Result<Value> {
        self.config_call(name, None).await
    }

    async fn config_call(&self, name: &str, put: Option<Vec<u8>>) -> anyhow::Result<Value> {
        let path = format!("api/configs/{name}");
        let method = if put.is_some() { "PUT" } else { "GET" };
        let mut last = String::new();
        for attempt in 0..TRIES {
            let base = &self.urls[attempt % self.urls.len()];
            let url = base.join(&path).with_context(|| format!("joining {path} to {base}"))?;
            let request = match &put {
                Some(body) => self
                    .client
                    .put(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone()),
                None => self.client.get(url.clone()),
            };
            match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&text)
                            .with_context(|| format!("{method} {url}: not JSON"));
                    }
                    last = format!("{method} {url}: HTTP {status}: {}", brief(&text));
                    // a refusal of this request will not change on another try
                    let retry = status == StatusCode::CONFLICT || status.is_server_error();
                    if !retry {
                        bail!("{last}");
                    }
                }
                Err(e) => last = format!("{method} {url}: {}", chain(&e)),
            }
            if attempt + 1 < TRIES {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        bail!("{last}")
    }
}

/// The `Authorization` value for `--admin-token`, marked sensitive so no debug output shows it.
pub fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    let token = token.trim();
    if token.is_empty() {
        bail!("--admin-token is empty");
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("--admin-token holds characters a header cannot carry"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A client error with its causes (reqwest's own text leaves out why a request failed).
fn chain(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An error body, cut short for a log line.
fn brief(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_a_sensitive_bearer_header() {
        let v = bearer(" s3cret ").unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer s3cret");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("s3cret"));
        assert!(bearer("  ").is_err());
        assert!(bearer("a\nb").is_err());
    }

    #[test]
    fn error_bodies_are_cut_short() {
        assert_eq!(brief(" no "), "no");
        assert_eq!(brief(&"x".repeat(300)).len(), 203);
    }
}

//! Just enough of the W3C WebDriver protocol (JSON over HTTP) to drive headless Chromium through
//! `chromedriver`: a session, navigation, element clicks and keys, scripts that read the page,
//! bounded waits and screenshots. Written on the test's HTTP client instead of a WebDriver crate:
//! the dozen commands a test needs do not justify another dependency tree.
//!
//! `chromedriver` runs in a process group of its own; dropping the [`Driver`] kills that group,
//! so neither it nor the browser it started outlives the test, whatever the test's outcome.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

/// The key under which WebDriver names an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The browser and its driver: `OPAMPD_TEST_CHROMIUM` / `OPAMPD_TEST_CHROMEDRIVER`, else
/// `chromium` and `chromedriver` on the PATH (Debian's packages). `None` when either is missing.
pub fn tools() -> Option<(PathBuf, PathBuf)> {
    let find = |var: &str, name: &str| -> Option<PathBuf> {
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p)).filter(|p| p.is_file());
        }
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
    };
    Some((
        find("OPAMPD_TEST_CHROMIUM", "chromium")?,
        find("OPAMPD_TEST_CHROMEDRIVER", "chromedriver")?,
    ))
}

async fn read_json(resp: reqwest::Response) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&resp.bytes().await?)?)
}

/// A running `chromedriver` on a free loopback port.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Driver {
    /// Starts `chromedriver` and waits (at most 15 s) until it answers `/status` ready.
    pub async fn start(chromedriver: &Path, log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let http =
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
        let mut driver = Self { child, url: format!("http://127.0.0.1:{port}"), http };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = driver.child.try_wait()? {
                bail!("chromedriver exited at start ({status}); see {}", log.display());
            }
            let ready = driver.http.get(format!("{}/status", driver.url)).send().await;
            if let Ok(resp) = ready
                && let Ok(body) = read_json(resp).await
                && body["value"]["ready"] == true
            {
                return Ok(driver);
            }
            if Instant::now() > deadline {
                bail!("chromedriver not ready within 15 s; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A headless Chromium session (no sandbox: tests run as root in containers) with its
    /// profile in `profile` and a `width` x `height` window.
    pub async fn session(
        &self,
        chromium: &Path,
        profile: &Path,
        (width, height): (u32, u32),
    ) -> anyhow::Result<Session> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"script": 10_000, "pageLoad": 20_000, "implicit": 0},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-background-networking",
                    "--disable-sync",
                    "--disable-component-update",
                    "--password-store=basic",
                    "--hide-scrollbars",
                    "--force-device-scale-factor=1",
                    "--lang=en-US",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let resp = self
            .http
            .post(format!("{}/session", self.url))
            .header("content-type", "application/json")
            .body(caps.to_string())
            .send()
            .await?;
        let body = read_json(resp).await.context("new session answer")?;
        let Some(id) = body["value"]["sessionId"].as_str() else {
            bail!("no session: {body}");
        };
        Ok(Session { http: self.http.clone(), base: format!("{}/session/{id}", self.url) })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // the whole group: chromedriver and the browser processes it started
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    base: String,
}

impl Session {
    async fn command(
        &self,
        method: http::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = self.http.request(method.clone(), &url);
        let req = if method == http::Method::GET || method == http::Method::DELETE {
            req
        } else {
            req.header("content-type", "application/json").body(body.to_string())
        };
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let answer = read_json(resp).await.with_context(|| format!("{method} {path}: body"))?;
        if !status.is_success() {
            let v = &answer["value"];
            bail!("{method} {path}: {status} {} {}", v["error"], v["message"]);
        }
        Ok(answer["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.command(http::Method::POST, path, body).await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.post("/url", json!({"url": url})).await.map(drop)
    }

    pub async fn set_window(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.post("/window/rect", json!({"width": width, "height": height})).await.map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.post("/execute/sync", json!({"script": script, "args": args})).await
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let v = self.post("/element", json!({"using": "css selector", "value": css})).await?;
        v[ELEMENT].as_str().map(str::to_owned).with_context(|| format!("no element {css}: {v}"))
    }

    /// Clicks the element `css` selects as a user would (scrolled into view, real events).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.element(css).await?;
        self.post(&format!("/element/{id}/click"), json!({})).await.map(drop)
    }

    /// Clears the input `css` selects and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.element(css).await?;
        self.post(&format!("/element/{id}/clear"), json!({})).await?;
        self.post(&format!("/element/{id}/value"), json!({"text": text})).await.map(drop)
    }

    /// Picks `value` in the `<select>` `css` selects, by clicking its option.
    pub async fn select(&self, css: &str, value: &str) -> anyhow::Result<()> {
        let option = format!("{css} option[value=\"{value}\"]");
        self.click(&option).await
    }

    /// Runs `script` every 100 ms until `done` holds for its value, for at most `within`;
    /// returns that value, or fails naming `what` and the last value seen.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.js(script, json!([])).await?;
            if done(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {within:?} waiting for {what}; last seen: {v}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let v = self.command(http::Method::GET, "/screenshot", Value::Null).await?;
        let b64 = v.as_str().context("screenshot is base64 text")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    }

    /// Ends the session (the browser exits).
    pub async fn close(self) -> anyhow::Result<()> {
        self.command(http::Method::DELETE, "", Value::Null).await.map(drop)
    }
}

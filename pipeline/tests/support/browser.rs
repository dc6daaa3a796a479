//! A real headless Chromium (Debian's `chromium`, installed by `scripts/test.sh`) driven over
//! the DevTools protocol: JSON commands on a WebSocket, with the WebSocket client the tests
//! already use. Enough for the web pages' tests: open a URL at a screen size, evaluate
//! JavaScript (awaiting its promise), take a screenshot.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: Socket,
    next_id: u64,
}

/// Debian's binary, or `CHROMIUM` when set.
fn binary() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("chromium")
            .to_string()
    })
}

impl Browser {
    /// A fresh browser (its own profile: no shared session storage) with a page of
    /// `width` × `height` CSS pixels.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium runs (scripts/test.sh installs it)");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = child.stderr.take().unwrap();
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stderr).lines();
            let port = loop {
                let line = lines
                    .next()
                    .expect("chromium printed its DevTools address")
                    .unwrap();
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    break rest.split('/').next().unwrap().parse::<u16>().unwrap();
                }
            };
            // Keep draining, so chromium never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            port
        })
        .await
        .unwrap();
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page_url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("chromium opened a page")
            .to_string();
        let (page, _) = tokio_tungstenite::connect_async(page_url).await.unwrap();
        let mut browser = Browser {
            child,
            _profile: profile,
            page,
            next_id: 0,
        };
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
            )
            .await;
        browser
    }

    /// Sends one command and returns its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method}: {error}"),
        }
    }

    /// [`Browser::call`], with chromium's error as the error.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.page.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
                .expect("the DevTools socket is open")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                if let Some(error) = answer.get("error") {
                    return Err(error.clone());
                }
                return Ok(answer["result"].clone());
            }
        }
    }

    /// Opens `url` and waits until its document has loaded.
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.eval_until(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await;
    }

    /// The value of `expression` (a promise is awaited); a thrown error panics with it.
    pub async fn eval(&mut self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(value) => value,
            Err(error) => panic!("{expression}: {error}"),
        }
    }

    /// Err when the page navigated away while the expression ran (its document is gone).
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            let text = exception.to_string();
            if text.contains("timed out waiting for") {
                panic!("{expression}: {exception}");
            }
            return Err(exception.clone());
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits, inside the page, until `condition` is truthy: it is checked again on every
    /// change of the document (a `MutationObserver`), not on a timer. Returns its value.
    pub async fn eval_until(&mut self, condition: &str, limit: Duration) -> Value {
        let script = format!(
            r#"new Promise((resolve, reject) => {{
                const check = () => {{ try {{ return ({condition}); }} catch (_) {{ return false; }} }};
                const now = check();
                if (now) return resolve(now);
                const observer = new MutationObserver(() => {{
                    const value = check();
                    if (value) {{ observer.disconnect(); clearTimeout(timer); resolve(value); }}
                }});
                observer.observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
                const timer = setTimeout(() => {{ observer.disconnect(); reject(new Error("timed out waiting for: {escaped}")); }}, {ms});
            }})"#,
            escaped = condition.replace('\\', "\\\\").replace('"', "\\\""),
            ms = limit.as_millis()
        );
        // A navigation (a sign-in's redirects) ends the document the wait ran in: wait again
        // in the next one.
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.try_eval(&script).await {
                Ok(value) => return value,
                Err(error) if std::time::Instant::now() < deadline => {
                    let _ = error;
                    tokio::task::yield_now().await;
                }
                Err(error) => panic!("{condition}: {error}"),
            }
        }
    }

    /// Presses a key as a keyboard does (`"Tab"`, `"Enter"`).
    pub async fn press(&mut self, key: &str) {
        let code = match key {
            "Tab" => 9,
            "Enter" => 13,
            other => panic!("no key code for {other}"),
        };
        for kind in ["rawKeyDown", "keyUp"] {
            let mut event =
                json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code});
            if key == "Enter" && kind == "rawKeyDown" {
                event["text"] = json!("\r");
                event["type"] = json!("keyDown");
            }
            self.call("Input.dispatchKeyEvent", event).await;
        }
    }

    /// A PNG of the page as a user sees it, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

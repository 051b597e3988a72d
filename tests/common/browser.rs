//! A real browser for tests: Debian's headless Chromium, driven over the Chrome DevTools
//! Protocol with the tests' own WebSocket client (tungstenite). It loads a page, runs
//! JavaScript in it (to type, click and read what the page shows, as a user would see it)
//! and takes screenshots. Chromium runs as a child of the test in its own process group
//! with a profile in a temporary directory, and is stopped by its PID.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use super::proxy::TempDir;
use super::WAIT;

/// The Chromium binary: Debian's real one (its /usr/bin/chromium is a shell wrapper), or
/// whatever `chromium` is on PATH. Fails the test, loudly, when there is none: tools/test.sh
/// installs it, and a browser test must not pass by doing nothing.
fn chromium() -> PathBuf {
    let debian = PathBuf::from("/usr/lib/chromium/chromium");
    if debian.exists() {
        return debian;
    }
    let on_path = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        on_path,
        "chromium is not installed: run tools/test.sh --install-only (Debian package chromium)"
    );
    PathBuf::from("chromium")
}

pub struct Browser {
    child: Child,
    cdp: WebSocket<MaybeTlsStream<TcpStream>>,
    /// The flat-mode session of the one page this browser drives.
    session: String,
    next_id: u64,
    _profile: TempDir,
}

impl Browser {
    /// Starts headless Chromium with one blank page to drive.
    pub fn start() -> Browser {
        let profile = TempDir::new("chromium");
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                // The tests run as root in a container: Chromium's sandbox needs user
                // namespaces it cannot have there.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start chromium");
        // Chromium writes the port it chose and the browser target's path here.
        let active = profile.0.join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&active) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_string(), path.to_string());
                }
            }
            assert!(Instant::now() < deadline, "chromium never opened DevTools");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stream = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (cdp, _) = tungstenite::client(
            format!("ws://127.0.0.1:{port}{path}"),
            MaybeTlsStream::Plain(stream),
        )
        .expect("DevTools WebSocket");
        let mut browser = Browser {
            child,
            cdp,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.page("Page.enable", json!({}));
        browser
    }

    /// One DevTools command; returns its result (events in between are skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.cdp
            .send(Message::text(command.to_string()))
            .expect("send to DevTools");
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no DevTools answer to {method}");
            let message = self.cdp.read().expect("read from DevTools");
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("DevTools {method}: {error}");
            }
            return answer["result"].clone();
        }
    }

    /// A command to the page's session.
    pub fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Loads `url` and waits until its document has loaded.
    pub fn goto(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url}));
        self.wait_for(
            &format!("{url} to load"),
            "document.readyState === 'complete' && location.href !== 'about:blank'",
        );
    }

    /// The value of a JavaScript expression in the page (promises awaited); a thrown
    /// exception fails the test with its text.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.page(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page; fails the test after `WAIT`, saying
    /// what it waited for and what the page's body showed.
    pub fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.eval(&format!(
                "(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()"
            ));
            if !matches!(value, Value::Null | Value::Bool(false)) && value != json!("") {
                return value;
            }
            if Instant::now() >= deadline {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` into the element with this id, as a user would (focus, then the text
    /// inserted through the input pipeline, which fires `input` events).
    pub fn type_into(&mut self, id: &str, text: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById({id:?}); e.focus(); e.select && e.select(); return true; }})()"
        ));
        self.page("Input.insertText", json!({"text": text}));
    }

    /// Chooses an option of a `<select>` by value (and fires `change`).
    pub fn select(&mut self, id: &str, value: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.getElementById({id:?}); e.value = {value:?}; e.dispatchEvent(new Event('change', {{bubbles: true}})); return e.value; }})()"
        ));
    }

    /// Clicks the element with this id with the mouse, at its centre.
    pub fn click(&mut self, id: &str) {
        let point = self.eval(&format!(
            "(() => {{ const e = document.getElementById({id:?}); e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2, e.disabled]; }})()"
        ));
        assert_eq!(point[2], json!(false), "#{id} is disabled");
        for kind in ["mousePressed", "mouseReleased"] {
            self.page(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": point[0], "y": point[1], "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Saves a PNG of the page's viewport to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.page("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.next_id += 1;
        let close = json!({"id": self.next_id, "method": "Browser.close"});
        let _ = self.cdp.send(Message::text(close.to_string()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill(2) on the process group this test created for its own Chromium.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

//! The pages in a real browser: headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/install-browser` when missing). A screenshot of each page
//! is kept under `target/e2e-screenshots/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use zeroci_testkit::{bin_dir, wait_for};

use crate::harness::{Repo, Settings, TestEnv, pipeline};

const ADMIN: &str = "admin-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

/// A chromedriver process and one browser session; both end on drop.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let (chromium, driver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
        if !PathBuf::from(chromium).is_file() || !PathBuf::from(driver).is_file() {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-browser");
            let installed = Command::new(&script).status();
            assert!(
                installed.is_ok_and(|s| s.success()),
                "browser tests need Chromium: run {} as root (apt-get install chromium chromium-driver)",
                script.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
        };
        wait_for("chromedriver to be ready", || {
            browser
                .try_call("GET", "/status", None)
                .filter(|v| v["value"]["ready"] == true)
                .map(|_| ())
        });
        let created = browser.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1000"]
                }
            }}})),
        );
        browser.session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Option<Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .ok()?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        // chromedriver keeps the connection open whatever the request says: read by Content-Length.
        let mut response = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let (split, length) = loop {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            response.extend_from_slice(&chunk[..n]);
            if let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())?;
                break (split, length);
            }
        };
        while response.len() < split + 4 + length {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            response.extend_from_slice(&chunk[..n]);
        }
        serde_json::from_slice(&response[split + 4..split + 4 + length]).ok()
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|| panic!("WebDriver {method} {path} failed"))
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let value = self.call(method, &format!("/session/{}{path}", self.session), body);
        assert!(
            value["value"]["error"].is_null(),
            "WebDriver {path}: {value}"
        );
        value["value"].clone()
    }

    fn open(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn text_of(&self, selector: &str) -> String {
        let script = format!(
            "var e = document.querySelector({}); return e ? e.textContent : null;",
            serde_json::to_string(selector).unwrap()
        );
        self.script(&script)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Clicks the first element matching `selector`.
    fn click(&self, selector: &str) {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": selector })),
        );
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {selector}: {found}"))
            .to_string();
        self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Keeps a screenshot as `target/e2e-screenshots/NAME.png`.
    fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self.session_call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or_default())
            .unwrap();
        let dir = bin_dir().join("e2e-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }

    fn sign_in(&self, base: &str, token: &str) {
        self.open(&format!("{base}/login"));
        self.script(&format!(
            "document.querySelector('input[name=token]').value = {};",
            serde_json::to_string(token).unwrap()
        ));
        self.click("button[type=submit]");
        wait_for("the sign-in to land", || {
            (!self.url().contains("/login")).then_some(())
        });
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn web_env() -> TestEnv {
    TestEnv::start_with(Settings {
        extra: format!("[web]\nadmin_tokens = [\"{ADMIN}\"]\nviewer_tokens = [\"{VIEWER}\"]\n"),
        ..Settings::default()
    })
}

#[test]
fn a_running_jobs_page_shows_new_lines_as_they_arrive() {
    let env = web_env();
    let repo = Repo::new(&env, "live-page", &[("README", "x")]);
    let gate = repo.path.join(".git/gate");
    let done = repo.path.join(".git/done");
    repo.commit(
        &[(
            "zeroCI.yaml",
            &pipeline(&[&format!(
                "echo first; while [ ! -e {} ]; do sleep 0.05; done; printf 'second-line \\033[1;32mgreen\\033[0m\\n'; while [ ! -e {} ]; do sleep 0.05; done",
                gate.display(),
                done.display()
            )]),
        )],
        "gated",
    );
    let id = env.submit(&repo.path);
    env.wait_for_output(id, Some("1"), "first");
    let browser = Browser::start();
    let base = format!("http://{}", env.http_addr);
    browser.open(&format!("{base}/jobs/{id}"));
    assert!(browser.text_of("#log").contains("first"));
    assert!(!browser.text_of("#log").contains("second-line"));
    // A mark on this very page: a reload would drop it.
    browser.script("window.zerociMark = 1;");
    std::fs::write(&gate, "").unwrap();
    wait_for("the new line on the page", || {
        browser
            .text_of("#log")
            .contains("second-line")
            .then_some(())
    });
    assert_eq!(
        browser.script("return window.zerociMark;"),
        json!(1),
        "arrived live, not by a reload"
    );
    // Its colour came along: bold green, not an escape code.
    assert_eq!(browser.text_of("#log span.b.f2"), "green");
    assert!(!browser.text_of("#log").contains('\u{1b}'));
    browser.screenshot("job-page-running");
    std::fs::write(&done, "").unwrap();
    assert_eq!(env.wait_job(id)["status"], "success");
    // The page reloads itself at the end and shows the final status.
    wait_for("the final status on the page", || {
        (browser.text_of("#status") == "success").then_some(())
    });
}

#[test]
fn earlier_output_of_a_long_log_loads_above_and_a_line_link_finds_its_part() {
    let env = web_env();
    let repo = Repo::new(
        &env,
        "long-log",
        &[("zeroCI.yaml", &pipeline(&["seq -f 'line %g' 1 30000"]))],
    );
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let browser = Browser::start();
    let base = format!("http://{}", env.http_addr);
    browser.open(&format!("{base}/jobs/{id}"));
    let first_shown = || {
        browser
            .script("return Number(document.querySelector('#log a.ln').dataset.n);")
            .as_u64()
            .unwrap()
    };
    let tail_starts_at = first_shown();
    assert!(tail_starts_at > 1);
    browser.script("window.zerociMark = 1;");
    browser.click("#earlier");
    wait_for("earlier output above the tail", || {
        (first_shown() < tail_starts_at).then_some(())
    });
    assert_eq!(
        browser.script("return window.zerociMark;"),
        json!(1),
        "loaded in place"
    );
    // What was loaded ends where the tail begins: every line once, in order.
    let numbers = browser.script(
        "return Array.from(document.querySelectorAll('#log a.ln')).map(function (a) { return Number(a.dataset.n); });",
    );
    let numbers: Vec<u64> = numbers
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (numbers[0]..=30000).collect();
    assert_eq!(numbers, expected);
    browser.screenshot("job-page-earlier-output");
    // A link to a line the tail does not hold opens the part that does, with the line marked.
    browser.open(&format!("{base}/jobs/{id}#L100"));
    wait_for("the part with line 100", || {
        browser.url().contains("line=100").then_some(())
    });
    // The line is there and is the target (the page colours it).
    assert_eq!(
        browser.script(
            "var a = document.getElementById('L100'); return a ? getComputedStyle(a).color : null;"
        ),
        json!("rgb(255, 216, 102)")
    );
}

#[test]
fn the_test_report_and_the_dashboard_read_well_in_a_browser() {
    let env = web_env();
    let yaml = r#"script:
  - name: tests
    cmd: printf '<testsuite name="s"><testcase classname="c" name="ok"/><testcase classname="c" name="broken"><failure message="expected 1">trace line</failure></testcase><testcase classname="c" name="later"><skipped/></testcase></testsuite>' > "$ZEROCI_TEST_XML"
"#;
    let repo = Repo::new(&env, "reported", &[("zeroCI.yaml", yaml)]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let browser = Browser::start();
    let base = format!("http://{}", env.http_addr);
    browser.open(&format!("{base}/jobs/{id}"));
    let body = browser.text_of("body");
    assert!(
        body.contains("3 tests, 1 failed, 0 errored, 1 skipped"),
        "{body}"
    );
    assert!(body.contains("c broken: expected 1"), "{body}");
    // The failure's details open on a click; the tabs switch without a reload.
    browser.click(".panel.f details summary");
    assert_eq!(
        browser.script("return document.querySelector('.panel.f details').open;"),
        json!(true)
    );
    browser.click("label[for$=s]");
    assert_eq!(
        browser.script("return getComputedStyle(document.querySelector('.panel.s')).display;"),
        json!("block")
    );
    assert!(browser.text_of(".panel.s").contains("c later"));
    browser.screenshot("job-page-tests");
    browser.open(&format!("{base}/"));
    assert!(browser.text_of("body").contains("reported"));
    browser.screenshot("dashboard");
}

#[test]
fn an_admin_reruns_from_the_page_and_a_viewer_cannot() {
    let env = web_env();
    let repo = Repo::new(&env, "rerun-page", &[("zeroCI.yaml", &pipeline(&["true"]))]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let base = format!("http://{}", env.http_addr);

    let viewer = Browser::start();
    viewer.sign_in(&base, VIEWER);
    viewer.open(&format!("{base}/jobs/{id}"));
    assert_eq!(
        viewer.script("return document.querySelectorAll('form[action$=rerun]').length;"),
        json!(0)
    );
    // Even a hand-made form post is refused.
    let status = viewer.script(&format!(
        "var r = new XMLHttpRequest(); r.open('POST', '/jobs/{id}/rerun', false); \
         r.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded'); r.send('csrf=x'); return r.status;"
    ));
    assert_eq!(status, json!(403));
    viewer.screenshot("job-page-viewer");

    let admin = Browser::start();
    admin.sign_in(&base, ADMIN);
    admin.open(&format!("{base}/jobs/{id}"));
    admin.screenshot("job-page-admin");
    admin.click("form[action$=rerun] button");
    wait_for("the new job's page", || {
        let url = admin.url();
        (!url.ends_with(&format!("/jobs/{id}")) && url.contains("/jobs/")).then_some(url)
    });
    let new_id: u64 = admin.url().rsplit('/').next().unwrap().parse().unwrap();
    assert_eq!(env.wait_job(new_id)["status"], "success");
}

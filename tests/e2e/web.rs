//! What monitors and READMEs read over HTTP: the badge and its redirect, metrics, health.

use crate::harness::{Repo, TestEnv, pipeline};

#[test]
fn the_badge_shows_the_latest_finished_run_and_links_to_it() {
    let env = TestEnv::start();
    let repo = Repo::new(&env, "badged", &[("zeroCI.yaml", &pipeline(&["true"]))]);
    let passed = env.submit(&repo.path);
    assert_eq!(env.wait_job(passed)["status"], "success");
    let job = env.job(passed);
    let (name, branch) = (
        job["repo"].as_str().unwrap().to_string(),
        job["ref"].as_str().unwrap().to_string(),
    );
    let badge = format!("/status?repo={name}&branch={branch}");
    let (code, head, body) = env.http_get_with_head(&badge);
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-type: image/svg+xml"), "{head}");
    let svg = String::from_utf8(body).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains(">passing<"),
        "{svg}"
    );

    repo.commit(&[("zeroCI.yaml", &pipeline(&["false"]))], "break");
    let failed = env.submit(&repo.path);
    assert_eq!(env.wait_job(failed)["status"], "failure");
    let (_, _, body) = env.http_get_with_head(&badge);
    assert!(String::from_utf8(body).unwrap().contains(">failing<"));

    let (code, head, _) = env.http_get_with_head(&format!("{badge}&result=1"));
    assert_eq!(code, 302, "{head}");
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_default();
    assert!(
        location.starts_with("http") && location.ends_with(&format!("/jobs/{failed}")),
        "{head}"
    );
    assert_eq!(env.http_get(&format!("/status?repo={name}")).0, 400);
    assert_eq!(
        env.http_get(&format!("/status?repo={name}&branch=nope")).0,
        404
    );
    assert_eq!(
        env.http_get("/status?repo=nobody/nothing&branch=main").0,
        404
    );
}

#[test]
fn metrics_and_health_describe_the_controller() {
    let env = TestEnv::start();
    let repo = Repo::new(&env, "counted", &[("zeroCI.yaml", &pipeline(&["true"]))]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let (code, head, body) = env.http_get_with_head("/metrics");
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    for line in [
        "zeroci_jobs_finished_total{status=\"success\"} 1",
        "zeroci_jobs_queued 0",
        "# TYPE zeroci_step_duration_seconds histogram",
        "zeroci_notification_failures_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    let (code, _, body) = env.http_get_with_head("/healthz");
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["store"], "ok");
    assert_eq!(health["machines"]["kind"], "local");
}

/// (event, id, data) of each Server-Sent Event in `body`.
fn sse_events(body: &[u8]) -> Vec<(String, String, serde_json::Value)> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|block| {
            let mut event = String::new();
            let mut id = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            (!event.is_empty()).then(|| (event, id, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

/// The bytes of the `output` events, in order.
fn output_of(events: &[(String, String, serde_json::Value)]) -> String {
    use base64::Engine as _;
    let mut out = Vec::new();
    for (event, _, data) in events {
        if event == "output" {
            let b64 = data["b64"].as_str().unwrap();
            out.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            );
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn the_event_stream_resumes_after_the_last_event_seen_without_loss_or_repeat() {
    let env = TestEnv::start();
    let repo = Repo::new(
        &env,
        "streamed",
        &[(
            "zeroCI.yaml",
            &pipeline(&["echo one", "echo two", "echo 'th<b>ree'"]),
        )],
    );
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let path = format!("/jobs/{id}/events");
    let (code, head, body) = env.http_get_with_head(&path);
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let all = sse_events(&body);
    assert_eq!(output_of(&all), "one\ntwo\nth<b>ree\n");
    let (last, _, done) = all.last().unwrap();
    assert_eq!(
        (last.as_str(), done["status"].as_str()),
        ("done", Some("success"))
    );
    assert!(
        all.iter()
            .any(|(e, _, d)| e == "step" && d["status"] == "success")
    );
    // Resume after the first line, as a browser does with Last-Event-ID, or as a page with ?after=.
    let first = &all.iter().find(|(e, _, _)| e == "output").unwrap().1;
    let (_, _, body) = env.http_get_sending(&path, &[("Last-Event-ID", first)]);
    assert_eq!(output_of(&sse_events(&body)), "two\nth<b>ree\n");
    let (_, _, body) = env.http_get_with_head(&format!("{path}?after={first}"));
    assert_eq!(output_of(&sse_events(&body)), "two\nth<b>ree\n");
    assert_eq!(env.http_get(&format!("{path}?after=nonsense")).0, 400);
    assert_eq!(env.http_get("/jobs/999/events").0, 404);
}

#[test]
fn the_job_page_shows_steps_tests_artifacts_and_log_with_everything_escaped() {
    let env = TestEnv::start();
    let yaml = r#"bin_path: out/app.bin
script:
  - printf '<script>alert(1)</script>\n\033[31mred\033[0m\n'
  - name: tests
    cmd: printf '<testsuite name="s"><testcase classname="c" name="&lt;img src=x onerror=alert(2)&gt;"><failure message="boom &amp; bust">trace</failure></testcase><testcase classname="c" name="fine"/></testsuite>' > "$ZEROCI_TEST_XML"
  - mkdir -p out && echo bin > out/app.bin
"#;
    let repo = Repo::new(&env, "paged", &[("zeroCI.yaml", yaml)]);
    let id = env.submit(&repo.path);
    // A failed test case is the report's news; the step's exit code decides the job.
    assert_eq!(env.wait_job(id)["status"], "success");
    let (code, head, body) = env.http_get_with_head(&format!("/jobs/{id}"));
    assert_eq!(code, 200, "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    let html = String::from_utf8(body).unwrap();
    // The job's own text never becomes markup.
    assert!(
        !html.contains("<script>alert(1)") && !html.contains("<img src=x"),
        "{html}"
    );
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{html}"
    );
    assert!(
        html.contains("&#60;img src=x onerror=alert(2)&#62;"),
        "{html}"
    );
    // Terminal colours are shown as colours, never as escape codes.
    assert!(
        html.contains("<span class=\"f1\"><a class=\"ln\" id=\"L2\"")
            && html.contains("></a>red</span>")
            && !html.contains("\u{1b}["),
        "{html}"
    );
    for expected in [
        "Job #",
        "2 tests, 1 failed",
        "boom &#38; bust",
        "trace",
        &format!("/jobs/{id}/artifacts/out/app.bin"),
        &format!("/jobs/{id}/log"),
    ] {
        assert!(html.contains(expected), "{expected:?} not in {html}");
    }
    // A finished job's page has no script: nothing is live.
    assert!(!html.contains("EventSource"), "{html}");
    assert_eq!(env.http_get("/jobs/999").0, 404);
    assert_eq!(env.http_get("/jobs/nope").0, 404);
}

#[test]
fn a_running_jobs_page_follows_its_log_from_where_the_tail_ends() {
    let env = TestEnv::start();
    let repo = Repo::new(
        &env,
        "live",
        &[(
            "zeroCI.yaml",
            &pipeline(&["echo first; sleep 3; echo later"]),
        )],
    );
    let id = env.submit(&repo.path);
    env.wait_for_output(id, Some("1"), "first");
    let (code, _, body) = env.http_get_with_head(&format!("/jobs/{id}"));
    assert_eq!(code, 200);
    let html = String::from_utf8(body).unwrap();
    // The tail so far, and the script that goes on from its cursor.
    assert!(html.contains("data-n=\"1\"></a>first\n</pre>"), "{html}");
    assert!(
        html.contains(&format!("new EventSource(\"/jobs/{id}/events?after=\""))
            && html.contains("data-after=\"1."),
        "{html}"
    );
    assert_eq!(env.wait_job(id)["status"], "success");
}

/// The `before` offset of a page's "earlier output" link, if it has one.
fn earlier_link(html: &str) -> Option<u64> {
    let (_, rest) = html.split_once("id=\"earlier\" href=\"")?;
    let (_, rest) = rest.split_once("?before=")?;
    rest.split(['#', '"']).next()?.parse().ok()
}

/// The number and text of the first numbered line of an HTML part of a log.
fn first_numbered_line(html: &str) -> (u64, String) {
    let (_, rest) = html.split_once("data-n=\"").unwrap();
    let (n, rest) = rest.split_once('"').unwrap();
    let text = rest.trim_start_matches("></a>").split('\n').next().unwrap();
    (n.parse().unwrap(), text.to_string())
}

#[test]
fn a_long_log_is_shown_in_parts_numbered_as_in_the_whole_log() {
    let env = TestEnv::start();
    // 30,000 lines, ~340 KB: several parts of 64 KiB.
    let repo = Repo::new(
        &env,
        "long",
        &[("zeroCI.yaml", &pipeline(&["seq -f 'line %g' 1 30000"]))],
    );
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let page = |path: &str| {
        let (code, head, body) = env.http_get_with_head(path);
        assert_eq!(code, 200, "{path}: {head}");
        (head, String::from_utf8(body).unwrap())
    };
    let (_, tail) = page(&format!("/jobs/{id}"));
    assert!(tail.contains("id=\"L30000\""), "the tail ends the log");
    assert!(!tail.contains("id=\"L1\""), "the tail is not the whole log");
    let (n, text) = first_numbered_line(&tail);
    assert_eq!(text, format!("line {n}"), "lines keep their numbers");

    // Earlier parts, as the page's script loads them, down to the first line: no line lost or twice.
    let mut before = earlier_link(&tail).expect("an earlier-output link");
    let mut first = n;
    let mut parts = 0;
    loop {
        let (head, part) = page(&format!("/jobs/{id}/log/part?before={before}"));
        let (n, text) = first_numbered_line(&part);
        assert_eq!(text, format!("line {n}"));
        assert!(
            part.contains(&format!("id=\"L{}\"", first - 1))
                && !part.contains(&format!("id=\"L{first}\"")),
            "part before {before} must end just before line {first}"
        );
        first = n;
        parts += 1;
        let start = head
            .lines()
            .find_map(|l| l.strip_prefix("x-log-start: "))
            .expect("X-Log-Start")
            .trim()
            .parse::<u64>()
            .unwrap();
        if start == 0 {
            break;
        }
        before = start;
    }
    assert_eq!((first, parts > 2), (1, true));

    // The same without scripts: the link opens a page with that part, and one back to the end.
    let (_, earlier) = page(&format!(
        "/jobs/{id}?before={}",
        earlier_link(&tail).unwrap()
    ));
    assert!(earlier.contains(&format!("href=\"/jobs/{id}#log\">latest output")));
    assert!(!earlier.contains("id=\"L30000\""));
    // A line's own address shows the part that holds it.
    let (_, around) = page(&format!("/jobs/{id}?line=12345"));
    assert!(around.contains("id=\"L12345\" href=\"#L12345\" data-n=\"12345\"></a>line 12345\n"));
}

#[test]
fn the_dashboard_and_histories_list_repositories_branches_and_jobs() {
    let env = TestEnv::start();
    let hostile = Repo::new(&env, "x<b>y", &[("zeroCI.yaml", &pipeline(&["true"]))]);
    let plain = Repo::new(&env, "plain", &[("zeroCI.yaml", &pipeline(&["false"]))]);
    let first = env.submit(&hostile.path);
    assert_eq!(env.wait_job(first)["status"], "success");
    let failed = env.submit(&plain.path);
    assert_eq!(env.wait_job(failed)["status"], "failure");
    let second = env.submit(&hostile.path);
    assert_eq!(env.wait_job(second)["status"], "success");
    let hostile_name = env.job(first)["repo"].as_str().unwrap().to_string();

    let (code, head, body) = env.http_get_with_head("/");
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    let html = String::from_utf8(body).unwrap();
    assert!(
        !html.contains("x<b>y") && html.contains("x&#60;b&#62;y"),
        "{html}"
    );
    // Each branch once, with its latest job.
    assert!(
        html.contains(&format!("href=\"/jobs/{second}\">#{second}")),
        "{html}"
    );
    assert!(
        !html.contains(&format!("href=\"/jobs/{first}\">#{first}")),
        "{html}"
    );
    assert!(
        html.contains(&format!("href=\"/jobs/{failed}\">#{failed}")),
        "{html}"
    );
    assert!(html.contains("Nothing runs now."), "{html}");

    let query: String = hostile_name.bytes().map(|b| format!("%{b:02X}")).collect();
    let (code, _, body) = env.http_get_with_head(&format!("/repos?repo={query}"));
    assert_eq!(code, 200);
    let html = String::from_utf8(body).unwrap();
    assert!(
        html.contains(&format!("#{first}")) && html.contains(&format!("#{second}")),
        "{html}"
    );
    assert!(!html.contains(&format!("#{failed}<")), "{html}");
    let (_, _, body) = env.http_get_with_head(&format!("/repos?repo={query}&before={second}"));
    let older = String::from_utf8(body).unwrap();
    assert!(
        older.contains(&format!("#{first}")) && !older.contains(&format!("#{second}<")),
        "{older}"
    );
    assert_eq!(env.http_get("/repos").0, 400);
}

const ADMIN: &str = "admin-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

fn web_settings(public: bool) -> crate::harness::Settings {
    crate::harness::Settings {
        extra: format!(
            "[web]\nadmin_tokens = [\"{ADMIN}\"]\nviewer_tokens = [\"{VIEWER}\"]\npublic = {public}\n"
        ),
        ..crate::harness::Settings::default()
    }
}

/// Signs in with `token`: the `Cookie` header value of the session.
fn sign_in(env: &TestEnv, token: &str) -> String {
    let (code, head, _) = env.http_post_form("/login", &[], &format!("token={token}&next=/"));
    assert_eq!(code, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(
        cookie.contains("httponly") && cookie.contains("samesite=strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token of the rerun form on a page.
fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_string())
}

#[test]
fn admins_rerun_from_the_page_and_viewers_and_forged_forms_are_refused() {
    let env = TestEnv::start_with(web_settings(true));
    let repo = Repo::new(&env, "acted", &[("zeroCI.yaml", &pipeline(&["true"]))]);
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    let page = format!("/jobs/{id}");
    let rerun = format!("/jobs/{id}/rerun");

    // Public reading, no forms for strangers, and no acting either.
    let (_, _, body) = env.http_get_with_head(&page);
    let html = String::from_utf8(body).unwrap();
    assert!(
        html.contains("sign in") && csrf_of(&html).is_none(),
        "{html}"
    );
    let (code, head, _) = env.http_post_form(&rerun, &[], "csrf=x");
    assert_eq!(code, 303, "{head}");
    assert!(head.contains("location: /login"), "{head}");

    // A wrong token does not sign in.
    let (code, head, _) = env.http_post_form("/login", &[], "token=not-a-token-at-all-xx&next=/");
    assert_eq!(code, 303);
    assert!(head.contains("location: /login?failed=1"), "{head}");

    // A viewer reads, sees no forms, and is refused.
    let viewer = sign_in(&env, VIEWER);
    let (_, _, body) = env.http_get_sending(&page, &[("Cookie", &viewer)]);
    let html = String::from_utf8(body).unwrap();
    assert!(
        html.contains("viewer") && csrf_of(&html).is_none(),
        "{html}"
    );
    assert_eq!(
        env.http_post_form(&rerun, &[("Cookie", &viewer)], "csrf=x")
            .0,
        403
    );

    // An admin's page has the forms; a form without the session's token, or posted from another
    // site, is refused; the real one starts a new job.
    let admin = sign_in(&env, ADMIN);
    let (_, _, body) = env.http_get_sending(&page, &[("Cookie", &admin)]);
    let html = String::from_utf8(body).unwrap();
    let csrf = csrf_of(&html).unwrap_or_else(|| panic!("no form: {html}"));
    assert_eq!(
        env.http_post_form(&rerun, &[("Cookie", &admin)], "csrf=forged")
            .0,
        403
    );
    let cross = [("Cookie", admin.as_str()), ("Sec-Fetch-Site", "cross-site")];
    assert_eq!(
        env.http_post_form(&rerun, &cross, &format!("csrf={csrf}"))
            .0,
        403
    );
    let (code, head, _) =
        env.http_post_form(&rerun, &[("Cookie", &admin)], &format!("csrf={csrf}"));
    assert_eq!(code, 303, "{head}");
    let new_id: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("location: /jobs/"))
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("{head}"));
    assert_ne!(new_id, id);
    assert_eq!(env.wait_job(new_id)["status"], "success");
}

#[test]
fn private_pages_need_a_sign_in_while_badges_and_health_stay_public() {
    let env = TestEnv::start_with(web_settings(false));
    let repo = Repo::new(
        &env,
        "private",
        &[("zeroCI.yaml", &pipeline(&["echo secret-ish"]))],
    );
    let id = env.submit(&repo.path);
    assert_eq!(env.wait_job(id)["status"], "success");
    for path in [
        "/",
        &format!("/jobs/{id}"),
        &format!("/jobs/{id}/log"),
        &format!("/jobs/{id}/log/part?before=5"),
        &format!("/jobs/{id}/events"),
    ] {
        let (code, head, _) = env.http_get_with_head(path);
        assert_eq!(code, 303, "{path}: {head}");
        assert!(head.contains("location: /login?next="), "{head}");
    }
    assert_eq!(env.http_get("/healthz").0, 200);
    assert_eq!(env.http_get("/metrics").0, 200);
    let viewer = sign_in(&env, VIEWER);
    let (code, _, body) = env.http_get_sending(&format!("/jobs/{id}/log"), &[("Cookie", &viewer)]);
    assert_eq!((code, body), (200, b"secret-ish\n".to_vec()));
}

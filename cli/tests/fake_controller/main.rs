//! The real `zeroci` binary against an in-process fake controller (real mTLS, scripted answers): exit
//! statuses, byte-exact output, closed pipes, error messages, resuming after a controller restart.
//! End-to-end tests against the real controller live in the workspace's `tests/`.

mod fake;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use fake::{Fake, finished, output, setup, started};
use tokio::io::AsyncReadExt;
use zeroci::pb;

fn zeroci(profile: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_zeroci"));
    cmd.arg("--profile")
        .arg(profile)
        .args(args)
        .env_remove("ZEROCI_PROFILE")
        .kill_on_drop(true);
    cmd
}

async fn run(profile: &Path, args: &[&str]) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(60), zeroci(profile, args).output()).await;
    out.expect("zeroci took too long").unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn git_repo() -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("demo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("zeroCI.yaml"), "script: [make]\n").unwrap();
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "-m",
        "one",
    ]);
    let head = git(&["rev-parse", "HEAD"]);
    let repo = repo.canonicalize().unwrap();
    (tmp, repo, head)
}

fn build_log() -> Vec<pb::LogEvent> {
    vec![
        started(),
        output(b"hello\n"),
        output(b"partial"),
        finished(1),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_the_job_and_exits_with_its_status() {
    let s = setup(Fake::new("failure", build_log(), Duration::ZERO)).await;
    let (_tmp, repo, head) = git_repo();
    let out = run(
        &s.profile,
        &["run", repo.to_str().unwrap(), "--timeout", "30"],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(out.stdout, b"hello\npartial");
    assert!(
        stderr.contains("job 7 queued: http://ci.test/jobs/7"),
        "{stderr}"
    );
    assert!(stderr.contains("==> build\n"), "{stderr}");
    assert!(stderr.contains("<== build: exit 1 (1.5s)"), "{stderr}");
    assert!(
        stderr.contains("job 7 failure in 3.2s — http://ci.test/jobs/7"),
        "{stderr}"
    );
    let submitted = s.fake.state().submitted.clone();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].commit, head);
    assert_eq!(submitted[0].ref_name, "main");
    assert_eq!(submitted[0].repo_name, "demo");
    assert_eq!(submitted[0].repo_url, repo.to_str().unwrap());
    assert_eq!(submitted[0].step_timeout_secs, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_json_and_detach() {
    let s = setup(Fake::new("error", build_log(), Duration::ZERO)).await;
    let (_tmp, repo, _head) = git_repo();
    let out = run(&s.profile, &["run", repo.to_str().unwrap(), "--json"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["id"], 7);
    assert_eq!(doc["status"], "error");
    assert_eq!(doc["steps"][0]["exit_code"], 0);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let out = run(&s.profile, &["run", repo.to_str().unwrap(), "--detach"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "7\n");
    let out = run(
        &s.profile,
        &["run", repo.to_str().unwrap(), "--detach", "--json"],
    )
    .await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "queued");
    assert_eq!(doc["finished_at"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_raw_is_byte_exact_and_logs_has_headers() {
    let bytes: &[u8] = b"\x00\xff\xfe not utf-8 \r\x1b[31mred\x1b[0m";
    let log = vec![
        started(),
        output(bytes),
        output(b"\nend without newline"),
        finished(0),
    ];
    let s = setup(Fake::new("success", log, Duration::ZERO)).await;
    let out = run(&s.profile, &["logs", "7", "--raw"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut expected = bytes.to_vec();
    expected.extend_from_slice(b"\nend without newline");
    assert_eq!(out.stdout, expected);

    let out = run(&s.profile, &["logs", "7", "--step", "bu"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("==> build\n"), "{stdout}");
    assert!(
        stdout.contains("end without newline\n<== build: exit 0 (1.5s)\n"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("job 7 success in 3.2s — http://ci.test/jobs/7\n"),
        "{stdout}"
    );

    let out = run(&s.profile, &["logs", "7", "--step", "deploy"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("has no step \"deploy\" (steps: build)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pipe_ends_logs_quietly() {
    let mut log = vec![started()];
    log.extend((0..50).map(|i| output(format!("line {i}\n").as_bytes())));
    let s = setup(Fake::new("success", log, Duration::from_millis(20))).await;
    let mut child = zeroci(&s.profile, &["logs", "7", "--raw", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"line 0\nlin");
    drop(stdout);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_survives_a_controller_restart() {
    let mut log = vec![started()];
    log.extend((0..40).map(|i| output(format!("{i},").as_bytes())));
    log.push(finished(0));
    let s = setup(Fake::new("success", log, Duration::from_millis(25))).await;
    let child = zeroci(&s.profile, &["logs", "7", "--raw", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the controller mid-stream, then bring it back on the same address.
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(s.server);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let listener = std::net::TcpListener::bind(&s.addr).unwrap();
    let _server = s.pki.serve(s.fake.clone(), listener);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let expected: String = (0..40).map(|i| format!("{i},")).collect();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), expected, "every byte once, in order");
    assert!(s.fake.state().stream_calls >= 2);
    assert!(
        text(&out.stderr).contains("reconnect"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands() {
    let s = setup(Fake::new("success", build_log(), Duration::ZERO)).await;
    let out = run(&s.profile, &["jobs"]).await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("ID  STATUS   REPO  REF   COMMIT   CREATED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("7   success  demo  main  0123456  "),
        "{stdout}"
    );
    assert!(stdout.ends_with("  3.2s\n"), "{stdout}");
    let out = run(&s.profile, &["jobs", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc[0]["ref"], "main");

    let out = run(&s.profile, &["show", "7"]).await;
    assert!(text(&out.stdout).starts_with("job 7: success\n"));
    let out = run(&s.profile, &["show", "http://ci.test/jobs/7", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["url"], "http://ci.test/jobs/7");

    let out = run(&s.profile, &["cancel", "7"]).await;
    assert_eq!(text(&out.stdout), "job 7: cancelled\n");

    let out = run(&s.profile, &["agents"]).await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("sandbox-7") && stdout.contains("2m ago"),
        "{stdout}"
    );
    assert!(
        stdout.contains("POOL HOST")
            && stdout.contains("rack-1")
            && stdout.contains("linux,gpu")
            && stdout.contains("1/4"),
        "{stdout}"
    );
    let out = run(&s.profile, &["agents", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["agents"][0]["hostname"], "sandbox-7");
    assert_eq!(
        doc["pool_hosts"][0]["machines"],
        serde_json::json!(["job-7-1"])
    );

    for args in [&["show", "99"][..], &["logs", "99"], &["cancel", "99"]] {
        let out = run(&s.profile, args).await;
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        assert_eq!(text(&out.stderr), "zeroci: job 99 not found\n", "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_problems_are_explained() {
    let s = setup(Fake::new("success", vec![], Duration::ZERO)).await;
    let foreign = s.pki.profile(&s.addr, true);
    let out = run(&foreign, &["jobs"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.starts_with("zeroci: "), "{stderr}");
    assert!(
        stderr.contains("refused this client certificate"),
        "{stderr}"
    );

    // Nothing listens there any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = run(&s.pki.profile(&closed, false), &["jobs"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("the controller at {closed} is not reachable")),
        "{stderr}"
    );

    let out = run(&s.pki.dir.path().join("missing.toml"), &["jobs"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("zeroci-controller init"));
}

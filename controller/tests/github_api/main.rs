//! The GitHub API client (`github/api.rs`) against the fake GitHub in `fake_github.rs`.

mod fake_github;

use fake_github::{Fake, REPO, SHA, TOKEN, YAML, client, fake_with_yaml, serve};
use zeroci_controller::github::api::*;

#[tokio::test]
async fn file_at_decodes_wrapped_base64_at_the_ref_with_the_token() {
    let fake = fake_with_yaml();
    let api = serve(&fake, "").await;
    let got = api
        .file_at(REPO, "zeroCI.yaml", SHA)
        .await
        .expect("file_at");
    assert_eq!(got.as_deref(), Some(YAML));
    let state = fake.lock().expect("lock");
    let (path, auth, accept) = &state.seen[0];
    assert_eq!(
        path,
        &format!("/repos/{REPO}/contents/zeroCI.yaml?ref={SHA}")
    );
    assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(accept.as_deref(), Some("application/vnd.github+json"));
}

#[tokio::test]
async fn file_at_missing_file_is_none_and_not_retried() {
    let fake = fake_with_yaml();
    let api = serve(&fake, "").await;
    assert_eq!(
        api.file_at(REPO, "zeroCI.yaml", "main")
            .await
            .expect("file_at"),
        None
    );
    assert_eq!(
        api.file_at(REPO, "other.yaml", SHA).await.expect("file_at"),
        None
    );
    assert_eq!(fake.lock().expect("lock").seen.len(), 2);
}

#[tokio::test]
async fn file_at_over_one_mib_falls_back_to_the_raw_media_type() {
    let fake = Fake::default();
    let big = vec![b'x'; 1024 * 1024 + 10];
    {
        let mut state = fake.lock().expect("lock");
        state
            .files
            .insert((REPO.into(), "big.yaml".into(), SHA.into()), big.clone());
        state.large.push("big.yaml".into());
    }
    let api = serve(&fake, "").await;
    let got = api.file_at(REPO, "big.yaml", SHA).await.expect("file_at");
    assert_eq!(got.map(|b| b.len()), Some(big.len()));
    let state = fake.lock().expect("lock");
    assert_eq!(
        state.seen[1].2.as_deref(),
        Some("application/vnd.github.raw")
    );
}

#[tokio::test]
async fn file_at_a_directory_is_an_error() {
    let api = serve(&Fake::default(), "").await;
    let err = api.file_at(REPO, "docs", SHA).await.expect_err("directory");
    assert!(
        matches!(err, GitHubError::NotAFile { ref kind, .. } if kind == "directory"),
        "{err}"
    );
}

#[tokio::test]
async fn branch_head_keeps_a_branch_with_slashes_in_one_segment() {
    let fake = Fake::default();
    fake.lock()
        .expect("lock")
        .branches
        .insert((REPO.into(), "feature/a/b".into()), SHA.into());
    let api = serve(&fake, "").await;
    assert_eq!(
        api.branch_head(REPO, "feature/a/b").await.expect("head"),
        SHA
    );
    let state = fake.lock().expect("lock");
    assert_eq!(
        state.seen[0].0,
        format!("/repos/{REPO}/branches/feature%2Fa%2Fb")
    );
    assert_eq!(state.branch_names, ["feature/a/b"]);
}

#[tokio::test]
async fn branch_head_of_a_missing_branch_is_not_found() {
    let api = serve(&Fake::default(), "").await;
    let err = api.branch_head(REPO, "nope").await.expect_err("missing");
    assert!(matches!(err, GitHubError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn set_status_posts_state_url_description_and_context() {
    let fake = Fake::default();
    let api = serve(&fake, "").await;
    api.set_status(
        REPO,
        SHA,
        StatusState::Pending,
        "https://ci.example.com/jobs/42",
        "Queued",
    )
    .await
    .expect("status");
    let state = fake.lock().expect("lock");
    assert_eq!(state.statuses.len(), 1);
    let (target, body) = &state.statuses[0];
    assert_eq!(target, &format!("{REPO}@{SHA}"));
    assert_eq!(
        body,
        &serde_json::json!({"state": "pending", "target_url": "https://ci.example.com/jobs/42",
            "description": "Queued", "context": "continuous-integration/ZeroCI"})
    );
    assert_eq!(
        state.seen[0].1.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn set_status_truncates_the_description_and_omits_an_empty_url() {
    let fake = Fake::default();
    let api = serve(&fake, "").await;
    let long = "é".repeat(300);
    api.set_status(REPO, SHA, StatusState::Failure, "", &long)
        .await
        .expect("status");
    let state = fake.lock().expect("lock");
    let body = &state.statuses[0].1;
    let description = body["description"].as_str().expect("description");
    assert_eq!(description.chars().count(), MAX_DESCRIPTION_CHARS);
    assert!(description.ends_with('…'));
    assert!(body.get("target_url").is_none());
    assert_eq!(body["state"], "failure");
}

#[tokio::test]
async fn set_status_retries_502_and_succeeds_on_the_third_attempt() {
    let fake = Fake::default();
    fake.lock().expect("lock").status_failures = 2;
    let api = serve(&fake, "").await;
    api.set_status(
        REPO,
        SHA,
        StatusState::Success,
        "https://ci.example.com/jobs/1",
        "Passed",
    )
    .await
    .expect("third attempt succeeds");
    assert_eq!(fake.lock().expect("lock").statuses.len(), 3);
}

#[tokio::test]
async fn set_status_gives_up_after_four_attempts() {
    let fake = Fake::default();
    fake.lock().expect("lock").status_failures = 100;
    let api = serve(&fake, "").await;
    let err = api
        .set_status(REPO, SHA, StatusState::Error, "", "x")
        .await
        .expect_err("gives up");
    assert!(
        matches!(err, GitHubError::GaveUp { attempts: 4, ref last }
            if matches!(**last, GitHubError::Status { status: 502, .. })),
        "{err}"
    );
    assert_eq!(fake.lock().expect("lock").statuses.len(), 4);
    // report_status swallows the same failure.
    api.report_status(REPO, SHA, StatusState::Error, "", "x")
        .await;
}

#[tokio::test]
async fn set_status_does_not_retry_422_or_a_plain_403() {
    for (code, headers) in [
        (422, vec![]),
        (403, vec![("x-ratelimit-remaining", "4000")]),
    ] {
        let fake = Fake::default();
        fake.lock().expect("lock").status_answer = Some((code, headers));
        let api = serve(&fake, "").await;
        let err = api
            .set_status(REPO, SHA, StatusState::Success, "", "x")
            .await
            .expect_err("refused");
        assert!(
            matches!(err, GitHubError::Status { status, ref message, .. }
                if status == code && message == "Validation Failed"),
            "{err}"
        );
        assert_eq!(fake.lock().expect("lock").statuses.len(), 1, "{code}");
    }
}

#[tokio::test]
async fn set_status_retries_a_rate_limited_403() {
    let fake = Fake::default();
    fake.lock().expect("lock").status_answer = Some((
        403,
        vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")],
    ));
    let api = serve(&fake, "").await;
    let err = api
        .set_status(REPO, SHA, StatusState::Success, "", "x")
        .await
        .expect_err("still limited");
    assert!(
        matches!(err, GitHubError::GaveUp { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(fake.lock().expect("lock").statuses.len(), 4);
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // A port that was just free: nothing listens there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let api = client(&format!("http://{addr}"));
    let err = api.branch_head(REPO, "main").await.expect_err("refused");
    assert!(
        matches!(err, GitHubError::GaveUp { attempts: 4, ref last }
            if matches!(**last, GitHubError::Transport(_))),
        "{err}"
    );
}

#[tokio::test]
async fn enterprise_api_path_is_kept() {
    let fake = fake_with_yaml();
    let api = serve(&fake, "/api/v3").await;
    let got = api
        .file_at(REPO, "zeroCI.yaml", SHA)
        .await
        .expect("file_at");
    assert_eq!(got.as_deref(), Some(YAML));
    let seen = &fake.lock().expect("lock").seen;
    assert!(seen[0].0.starts_with("/api/v3/repos/"), "{:?}", seen[0].0);
}

#[tokio::test]
async fn clone_urls_follow_the_api_host() {
    let public = client(DEFAULT_API_URL);
    assert_eq!(
        public.clone_url(REPO).expect("url"),
        "https://github.com/threefoldtech/zeroCI.git"
    );
    assert_eq!(
        public.authenticated_clone_url(REPO).expect("url"),
        format!("https://x-access-token:{TOKEN}@github.com/threefoldtech/zeroCI.git")
    );
    let ghe = client("https://ghe.example.com/api/v3/");
    assert_eq!(
        ghe.clone_url("o/r").expect("url"),
        "https://ghe.example.com/o/r.git"
    );
    assert_eq!(
        ghe.authenticated_clone_url("o/r").expect("url"),
        format!("https://x-access-token:{TOKEN}@ghe.example.com/o/r.git")
    );
    let anonymous = GitHubApi::new(&ApiSettings::default()).expect("client");
    assert_eq!(
        anonymous.authenticated_clone_url(REPO).expect("url"),
        "https://github.com/threefoldtech/zeroCI.git"
    );
}

#[tokio::test]
async fn bad_repo_names_and_api_urls_are_refused() {
    let api = client(DEFAULT_API_URL);
    for repo in ["", "zeroCI", "a/b/c", "../x", "o/..", "o/r?x=1", "o /r"] {
        assert!(
            matches!(api.clone_url(repo), Err(GitHubError::InvalidRepo(_))),
            "{repo}"
        );
    }
    for url in ["", "api.github.com", "not a url"] {
        let settings = ApiSettings {
            api_url: url.into(),
            ..ApiSettings::default()
        };
        assert!(
            matches!(
                GitHubApi::new(&settings),
                Err(GitHubError::InvalidApiUrl { .. })
            ),
            "{url}"
        );
    }
}

#[tokio::test]
async fn debug_output_hides_the_token() {
    let api = client(DEFAULT_API_URL);
    let settings = ApiSettings {
        access_token: Some(TOKEN.into()),
        ..ApiSettings::default()
    };
    for text in [format!("{api:?}"), format!("{settings:?}")] {
        assert!(!text.contains(TOKEN), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}

#[test]
fn building_a_client_outside_a_runtime_is_an_error_not_a_panic() {
    let err = GitHubApi::new(&ApiSettings::default()).expect_err("no runtime");
    assert!(matches!(err, GitHubError::NoRuntime), "{err}");
}

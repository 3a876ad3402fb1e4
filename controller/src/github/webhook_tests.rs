//! Tests for `webhook.rs` against GitHub-shaped payloads in `controller/tests/data/github/`.

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../tests/data/github/", $name)).as_slice()
    };
}

/// GitHub's own documented example ("Validating webhook deliveries"): secret and payload below give this
/// signature. Recomputed independently with
/// `printf 'Hello, World!' | openssl dgst -sha256 -hmac "It's a Secret to Everybody"`.
const DOC_SECRET: &[u8] = b"It's a Secret to Everybody";
const DOC_BODY: &[u8] = b"Hello, World!";
const DOC_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

/// `openssl dgst -sha256 -hmac "It's a Secret to Everybody" ping.json` over the fixture's exact bytes
/// (editing the fixture changes it; recompute with that command).
const PING_SIGNATURE: &str =
    "sha256=05a611729f01815812055641555f1944b0fba8ac07d62e659cd83bce88cd0e5c";

fn push(body: &[u8]) -> Push {
    match parse_event("push", body).expect("parses") {
        WebhookEvent::Push(p) => p,
        other => panic!("expected a push, got {other:?}"),
    }
}

fn pull_request(body: &[u8]) -> PullRequest {
    match parse_event("pull_request", body).expect("parses") {
        WebhookEvent::PullRequest(p) => p,
        other => panic!("expected a pull request, got {other:?}"),
    }
}

fn ignored_reason(event: &str, body: &[u8]) -> String {
    match parse_event(event, body).expect("parses") {
        WebhookEvent::Ignored { reason } => reason,
        other => panic!("expected Ignored, got {other:?}"),
    }
}

#[test]
fn signature_documented_vector_verifies() {
    assert_eq!(
        verify_signature(DOC_SECRET, DOC_BODY, Some(DOC_SIGNATURE)),
        Ok(())
    );
    // Upper-case hex and surrounding whitespace are the same signature.
    let upper = format!(" sha256={} ", DOC_SIGNATURE[7..].to_uppercase());
    assert_eq!(verify_signature(DOC_SECRET, DOC_BODY, Some(&upper)), Ok(()));
}

#[test]
fn signature_of_fixture_verifies() {
    assert_eq!(
        verify_signature(DOC_SECRET, fixture!("ping.json"), Some(PING_SIGNATURE)),
        Ok(())
    );
}

#[test]
fn signature_bad_body_secret_or_digest_is_mismatch() {
    assert_eq!(
        verify_signature(DOC_SECRET, b"Hello, World?", Some(DOC_SIGNATURE)),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature(b"another secret", DOC_BODY, Some(DOC_SIGNATURE)),
        Err(SignatureError::Mismatch)
    );
    let flipped = format!("{}0", &DOC_SIGNATURE[..DOC_SIGNATURE.len() - 1]);
    assert_eq!(
        verify_signature(DOC_SECRET, DOC_BODY, Some(&flipped)),
        Err(SignatureError::Mismatch)
    );
}

#[test]
fn signature_missing_header() {
    assert_eq!(
        verify_signature(DOC_SECRET, DOC_BODY, None),
        Err(SignatureError::Missing)
    );
}

#[test]
fn signature_wrong_prefix_is_malformed() {
    // The legacy SHA-1 header's format must not be accepted in place of SHA-256.
    let sha1 = DOC_SIGNATURE.replace("sha256=", "sha1=");
    for header in [&DOC_SIGNATURE[7..], sha1.as_str(), ""] {
        assert!(
            matches!(
                verify_signature(DOC_SECRET, DOC_BODY, Some(header)),
                Err(SignatureError::Malformed(_))
            ),
            "{header:?}"
        );
    }
}

#[test]
fn signature_bad_hex_is_malformed() {
    let odd = &DOC_SIGNATURE[..DOC_SIGNATURE.len() - 1];
    let not_hex = DOC_SIGNATURE.replace('7', "g");
    let short = &DOC_SIGNATURE[..DOC_SIGNATURE.len() - 2];
    for header in [odd, not_hex.as_str(), short, "sha256="] {
        assert!(
            matches!(
                verify_signature(DOC_SECRET, DOC_BODY, Some(header)),
                Err(SignatureError::Malformed(_))
            ),
            "{header:?}"
        );
    }
}

#[test]
fn push_to_main() {
    let p = push(fixture!("push_main.json"));
    assert_eq!(p.repo, "threefoldtech/zeroCI");
    assert_eq!(p.branch.as_deref(), Some("main"));
    assert_eq!(p.tag, None);
    assert_eq!(p.git_ref, "refs/heads/main");
    assert_eq!(p.commit, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
    assert_eq!(p.before, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    assert!(!p.deleted);
    assert_eq!(p.clone_url, "https://github.com/threefoldtech/zeroCI.git");
    assert_eq!(p.pusher, "AhmedHanafy725");
    assert_eq!(p.head_author.as_deref(), Some("Ahmed Hanafy"));
    assert_eq!(
        p.head_message.as_deref(),
        Some("Run black on the backend\n\nLine length 120, as CI checks.")
    );
    assert_eq!(p.skip_reason(), None);
}

#[test]
fn push_to_branch_with_slashes_keeps_the_whole_name() {
    let p = push(fixture!("push_feature_slash.json"));
    assert_eq!(p.branch.as_deref(), Some("feature/a/b"));
    assert_eq!(p.commit, "9c2b7e1f4a5d6c3b8e0f1a2b3c4d5e6f7a8b9c0d");
    // A new branch has an all-zero `before`; that is not a deletion.
    assert_eq!(p.before, ZERO_SHA);
    assert!(!p.deleted);
}

#[test]
fn branch_deletion_is_a_push_marked_deleted() {
    let p = push(fixture!("push_delete_branch.json"));
    assert_eq!(p.branch.as_deref(), Some("feature/old"));
    assert!(p.deleted);
    assert_eq!(p.head_message, None);
    let reason = p.skip_reason().expect("a deletion is skipped");
    assert!(reason.contains("refs/heads/feature/old"), "{reason}");
}

#[test]
fn zero_after_alone_means_deleted() {
    // Older payloads and other forges may lack `deleted`; the zero SHA decides then.
    let body = br#"{"ref":"refs/heads/x","before":"1111111111111111111111111111111111111111",
        "after":"0000000000000000000000000000000000000000",
        "repository":{"full_name":"o/r","clone_url":"https://github.com/o/r.git"},
        "pusher":{"name":"u"},"head_commit":null}"#;
    assert!(push(body).deleted);
}

#[test]
fn tag_push() {
    let p = push(fixture!("push_tag.json"));
    assert_eq!(p.tag.as_deref(), Some("v1.0.0"));
    // The tagged commit is main's head, which GitHub says in `base_ref`.
    assert_eq!(p.branch.as_deref(), Some("main"));
    assert_eq!(p.git_ref, "refs/tags/v1.0.0");
    assert_eq!(p.commit, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
    assert!(!p.deleted);
}

#[test]
fn push_to_another_kind_of_ref_is_ignored() {
    let body =
        br#"{"ref":"refs/notes/commits","after":"1111111111111111111111111111111111111111"}"#;
    assert!(ignored_reason("push", body).contains("refs/notes/commits"));
}

#[test]
fn pull_request_opened_from_a_fork() {
    let pr = pull_request(fixture!("pull_request_opened.json"));
    assert_eq!(
        pr,
        PullRequest {
            repo: "threefoldtech/zeroCI".into(),
            number: 74,
            action: "opened".into(),
            head_sha: "5e3f1b2a9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f".into(),
            head_ref: "ui/running-first".into(),
            base_ref: "development".into(),
            head_clone_url: "https://github.com/samaradel/zeroCI.git".into(),
            sender: "samaradel".into(),
            from_fork: true,
        }
    );
}

#[test]
fn pull_request_synchronize_takes_the_new_head() {
    let pr = pull_request(fixture!("pull_request_synchronize.json"));
    assert_eq!(pr.action, "synchronize");
    assert_eq!(pr.head_sha, "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678");
    assert!(
        pr.from_fork,
        "head samaradel/zeroCI is not the base repository"
    );
    // The same pull request from a branch of the base repository is trusted.
    let same_repo = String::from_utf8_lossy(fixture!("pull_request_synchronize.json"))
        .replace("samaradel/zeroCI", "threefoldtech/zeroCI");
    assert!(!pull_request(same_repo.as_bytes()).from_fork);
}

#[test]
fn pull_request_reopened_is_runnable() {
    let body = String::from_utf8_lossy(fixture!("pull_request_opened.json")).replacen(
        r#""action": "opened""#,
        r#""action": "reopened""#,
        1,
    );
    assert_eq!(pull_request(body.as_bytes()).action, "reopened");
}

#[test]
fn pull_request_closed_is_ignored() {
    let reason = ignored_reason("pull_request", fixture!("pull_request_closed.json"));
    assert!(reason.contains("`closed`"), "{reason}");
}

#[test]
fn pull_request_from_a_deleted_fork_uses_the_base_clone_url() {
    let mut v: serde_json::Value =
        serde_json::from_slice(fixture!("pull_request_synchronize.json")).expect("json");
    v["pull_request"]["head"]["repo"] = serde_json::Value::Null;
    let pr = pull_request(&serde_json::to_vec(&v).expect("json"));
    assert_eq!(
        pr.head_clone_url,
        "https://github.com/threefoldtech/zeroCI.git"
    );
}

#[test]
fn ping() {
    assert_eq!(
        parse_event("ping", fixture!("ping.json")).expect("parses"),
        WebhookEvent::Ping {
            zen: "Design for failure.".into(),
            hook_id: 478632019,
            repo: Some("threefoldtech/zeroCI".into()),
        }
    );
}

#[test]
fn unknown_event_is_ignored() {
    let reason = ignored_reason("issues", br#"{"action":"opened"}"#);
    assert!(reason.contains("`issues`"), "{reason}");
}

#[test]
fn missing_fields_are_named_by_path() {
    let cases: [(&str, &[u8], &str); 5] = [
        ("push", br#"{"ref":"refs/heads/main"}"#, "repository"),
        (
            "push",
            br#"{"ref":"refs/heads/main","after":"1111111111111111111111111111111111111111",
                "before":"2222222222222222222222222222222222222222",
                "repository":{"full_name":"o/r"},"pusher":{"name":"u"}}"#,
            "repository.clone_url",
        ),
        ("push", br#"{"after":"1"}"#, "ref"),
        (
            "pull_request",
            br#"{"action":"opened","number":1,"pull_request":{"head":{"ref":"x"},
                "base":{"ref":"main"}},"repository":{"full_name":"o/r","clone_url":"c"},
                "sender":{"login":"u"}}"#,
            "pull_request.head.sha",
        ),
        ("ping", br#"{"zen":"z"}"#, "hook_id"),
    ];
    for (event, body, field) in cases {
        match parse_event(event, body) {
            Err(e @ WebhookError::Missing { .. }) => {
                assert!(e.to_string().contains(&format!("`{field}`")), "{e}")
            }
            other => panic!("{event} {field}: expected Missing, got {other:?}"),
        }
    }
}

#[test]
fn invalid_json_is_an_error_not_a_panic() {
    for body in [&b"{"[..], b"", b"[]", b"null", br#"{"ref": 5}"#] {
        assert!(parse_event("push", body).is_err(), "{body:?}");
    }
}

#[test]
fn configured_repos_match_case_insensitively() {
    let configured = vec!["threefoldtech/zeroci".to_string()];
    assert!(repo_allowed(&configured, "threefoldtech/zeroCI"));
    assert!(!repo_allowed(&configured, "threefoldtech/zeroCI-fork"));
    assert!(!repo_allowed(&[], "threefoldtech/zeroCI"));
}

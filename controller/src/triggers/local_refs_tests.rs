//! Tests of the ref watch against real git repositories in temporary directories.

use super::*;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use zeroci_testkit::{git as git_in, patience};

const POLL: Duration = Duration::from_millis(25);

/// A work tree with one commit on `main`.
fn repo_with_commit() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    git_in(dir.path(), &["init", "-q", "-b", "main"]);
    commit(dir.path(), "first");
    dir
}

/// An empty commit on the checked-out branch; returns its object name.
fn commit(dir: &Path, message: &str) -> String {
    git_in(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git_in(dir, &["rev-parse", "HEAD"])
}

struct Watch {
    rx: mpsc::Receiver<RefUpdate>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), WatchError>>,
}

impl Watch {
    /// Starts a watch and returns once its first scan is recorded.
    async fn start(repo: &Path, report_existing: bool) -> Watch {
        let (tx, rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let options = WatchOptions {
            poll_interval: POLL,
            report_existing,
        };
        let task = tokio::spawn(watch(
            repo.to_path_buf(),
            tx,
            shutdown.clone(),
            options,
            Some(ready_tx),
        ));
        tokio::time::timeout(patience(), ready_rx)
            .await
            .expect("first scan in time")
            .expect("watch started");
        Watch { rx, shutdown, task }
    }

    async fn next(&mut self) -> RefUpdate {
        tokio::time::timeout(patience(), self.rx.recv())
            .await
            .expect("an update in time")
            .expect("watch still running")
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(patience(), self.task)
            .await
            .expect("watch ends on shutdown")
            .expect("watch task did not panic");
        assert!(result.is_ok(), "{result:?}");
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).expect("canonicalize")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_on_main_is_reported() {
    let repo = repo_with_commit();
    let mut watch = Watch::start(repo.path(), false).await;
    let sha = commit(repo.path(), "second");
    let update = watch.next().await;
    assert_eq!(
        update,
        RefUpdate {
            repo_path: canonical(repo.path()),
            branch: "main".into(),
            commit: sha,
        }
    );
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_branch_keeps_its_slashes() {
    let repo = repo_with_commit();
    let mut watch = Watch::start(repo.path(), false).await;
    git_in(repo.path(), &["branch", "feature/a/b"]);
    let update = watch.next().await;
    assert_eq!(update.branch, "feature/a/b");
    assert_eq!(update.commit, git_in(repo.path(), &["rev-parse", "main"]));
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_branch_reports_nothing() {
    let repo = repo_with_commit();
    git_in(repo.path(), &["branch", "doomed"]);
    let mut watch = Watch::start(repo.path(), false).await;
    git_in(repo.path(), &["branch", "-D", "doomed"]);
    // A later change proves the watch went on scanning: whatever it reported for the deletion
    // would arrive before this.
    git_in(repo.path(), &["branch", "marker"]);
    assert_eq!(watch.next().await.branch, "marker");
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_successive_commits_report_the_last() {
    let repo = repo_with_commit();
    let mut watch = Watch::start(repo.path(), false).await;
    let middle = commit(repo.path(), "second");
    let last = commit(repo.path(), "third");
    loop {
        let update = watch.next().await;
        assert_eq!(update.branch, "main");
        if update.commit == last {
            break;
        }
        // The intermediate head is reported only if a scan happened to see it.
        assert_eq!(update.commit, middle);
    }
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_scan_reports_nothing_by_default() {
    let repo = repo_with_commit();
    git_in(repo.path(), &["branch", "existing"]);
    let mut watch = Watch::start(repo.path(), false).await;
    git_in(repo.path(), &["branch", "marker"]);
    assert_eq!(watch.next().await.branch, "marker");
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_scan_reports_existing_when_asked_including_packed_refs() {
    let repo = repo_with_commit();
    git_in(repo.path(), &["branch", "packed/one"]);
    git_in(repo.path(), &["pack-refs", "--all"]);
    let sha = git_in(repo.path(), &["rev-parse", "main"]);
    let mut watch = Watch::start(repo.path(), true).await;
    let first = watch.next().await;
    let second = watch.next().await;
    assert_eq!((first.branch.as_str(), first.commit), ("main", sha.clone()));
    assert_eq!((second.branch.as_str(), second.commit), ("packed/one", sha));
    // A loose ref written over a packed one is seen too.
    let newer = commit(repo.path(), "second");
    let update = watch.next().await;
    assert_eq!((update.branch.as_str(), update.commit), ("main", newer));
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_repository_sees_pushes() {
    let bare = tempfile::tempdir().expect("tempdir");
    git_in(bare.path(), &["init", "-q", "--bare", "-b", "main"]);
    let work = repo_with_commit();
    let bare_path = bare.path().to_str().expect("utf-8 temp path");
    git_in(work.path(), &["push", "-q", bare_path, "main"]);
    let mut watch = Watch::start(bare.path(), false).await;
    let sha = commit(work.path(), "second");
    git_in(work.path(), &["push", "-q", bare_path, "main:release/1.0"]);
    let update = watch.next().await;
    assert_eq!(update.repo_path, canonical(bare.path()));
    assert_eq!(
        (update.branch.as_str(), update.commit),
        ("release/1.0", sha)
    );
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_repository_is_retried() {
    let parent = tempfile::tempdir().expect("tempdir");
    let path = parent.path().join("repo");
    let aside = parent.path().join("aside");
    std::fs::create_dir(&path).expect("mkdir");
    git_in(&path, &["init", "-q", "-b", "main"]);
    commit(&path, "first");
    let mut watch = Watch::start(&path, false).await;
    std::fs::rename(&path, &aside).expect("move away");
    // Let a few scans fail (not a wait for the result, which is awaited below with a timeout).
    tokio::time::sleep(POLL * 4).await;
    let sha = commit(&aside, "while away");
    std::fs::rename(&aside, &path).expect("move back");
    let update = watch.next().await;
    assert_eq!((update.branch.as_str(), update.commit), ("main", sha));
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_task() {
    let repo = repo_with_commit();
    let watch = Watch::start(repo.path(), false).await;
    watch.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_receiver_ends_the_task() {
    let repo = repo_with_commit();
    let Watch { rx, task, .. } = Watch::start(repo.path(), false).await;
    drop(rx);
    commit(repo.path(), "second");
    let result = tokio::time::timeout(patience(), task)
        .await
        .expect("watch ends without a receiver")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn non_repository_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, _rx) = mpsc::channel(1);
    let result = watch_refs(
        dir.path().to_path_buf(),
        tx,
        CancellationToken::new(),
        WatchOptions::default(),
    )
    .await;
    assert!(
        matches!(result, Err(WatchError::NotARepository { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn missing_path_and_subdirectory_of_a_work_tree_are_errors() {
    let repo = repo_with_commit();
    let sub = repo.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    for path in [sub, repo.path().join("missing")] {
        let (tx, _rx) = mpsc::channel(1);
        let result = watch_refs(path, tx, CancellationToken::new(), WatchOptions::default()).await;
        assert!(
            matches!(result, Err(WatchError::NotARepository { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn changes_report_new_and_moved_branches_only() {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(b, c)| (b.to_string(), c.to_string()))
            .collect()
    };
    let previous = map(&[("main", "aa"), ("gone", "bb"), ("same", "cc")]);
    let current = map(&[("main", "dd"), ("same", "cc"), ("new/x", "ee")]);
    assert_eq!(
        changes(&previous, &current),
        vec![
            ("main".to_string(), "dd".to_string()),
            ("new/x".to_string(), "ee".to_string())
        ]
    );
}

#[test]
fn parse_skips_malformed_lines() {
    let out = b"0123abcd refs/heads/main\nnot-hex refs/heads/x\nabcd refs/tags/v1\n\xff\xfe refs/heads/bad\nabcd refs/heads/a/b\n";
    let heads = parse_heads(Path::new("/r"), out);
    assert_eq!(heads.len(), 2);
    assert_eq!(heads["main"], "0123abcd");
    assert_eq!(heads["a/b"], "abcd");
}

#[test]
fn backoff_doubles_and_caps() {
    let base = Duration::from_millis(250);
    assert_eq!(backoff(base, 1), Duration::from_millis(500));
    assert_eq!(backoff(base, 2), Duration::from_secs(1));
    assert_eq!(backoff(base, 40), MAX_BACKOFF);
}

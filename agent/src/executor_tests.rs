//! Tests of the executor's job rules with local git repositories and a perfect (always acking)
//! controller.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;
use zeroci::pb::AgentEvent;

use super::*;
use crate::mask::Secrets;
use crate::outbox::Outbox;
use crate::step::RunOptions;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A repository with one commit holding `files`; returns its path and commit id.
fn make_repo(root: &Path, files: &[(&str, &[u8])]) -> (PathBuf, String) {
    let dir = root.join("repo");
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-q", "--allow-empty", "-m", "c"]);
    let sha = git(&dir, &["rev-parse", "HEAD"]);
    (dir, sha)
}

struct Job {
    outbox: Arc<Outbox>,
    control: Arc<JobControl>,
    events: Arc<Mutex<Vec<AgentEvent>>>,
    executor: Option<Executor>,
    _acker: tokio::task::JoinHandle<()>,
}

impl Job {
    fn new(root: &Path, repo_url: &str, commit: &str) -> Job {
        Job::with_assignment(
            root,
            Assignment {
                job_id: 9,
                attempt: 1,
                repo_url: repo_url.into(),
                commit: commit.into(),
                repo_name: "r".into(),
                ..Default::default()
            },
        )
    }

    fn with_assignment(root: &Path, assignment: Assignment) -> Job {
        let outbox = Arc::new(Outbox::default());
        let events = Arc::new(Mutex::new(Vec::new()));
        let acker = tokio::spawn({
            let (outbox, events) = (outbox.clone(), events.clone());
            async move {
                loop {
                    let event = outbox.next_unsent().await;
                    let seq = event.seq;
                    events.lock().unwrap().push(event);
                    outbox.ack(seq);
                }
            }
        });
        let control = Arc::new(JobControl::new(CancellationToken::new()));
        let ctx = StepContext {
            outbox: outbox.clone(),
            cancel: control.cancel().clone(),
            groups: control.groups().clone(),
            secrets: Secrets::default(),
            options: RunOptions {
                kill_grace: Duration::from_secs(1),
                drain_limit: Duration::from_millis(200),
                shared_test_xml: None,
                isolate_network: false,
                unisolated: false,
                clean_environment: false,
            },
        };
        let workdir = root.join("work");
        std::fs::create_dir_all(&workdir).unwrap();
        let executor = Executor::new(ctx, control.clone(), Arc::new(assignment), workdir);
        Job {
            outbox,
            control,
            events,
            executor: Some(executor),
            _acker: acker,
        }
    }

    async fn run(&mut self) -> Vec<AgentEvent> {
        let finished = self.executor.take().unwrap().run().await;
        // The acker records an event before acknowledging it.
        tokio::time::timeout(Duration::from_secs(10), self.outbox.wait_acked(finished))
            .await
            .unwrap();
        self.events.lock().unwrap().clone()
    }
}

fn checked_out(events: &[AgentEvent]) -> Option<pb::CheckedOut> {
    events.iter().find_map(|e| match &e.kind {
        Some(Kind::CheckedOut(c)) => Some(c.clone()),
        _ => None,
    })
}

/// Everything step 0 (the checkout) printed, in order.
fn checkout_output(events: &[AgentEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Output(o)) if o.step == 0 => Some(o.data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The first step exit among the events.
fn first_exit(events: &[AgentEvent]) -> pb::StepExited {
    events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::StepExited(x)) => Some(x.clone()),
            _ => None,
        })
        .expect("a step exited")
}

fn exits(events: &[AgentEvent]) -> Vec<(u32, i32)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StepExited(x)) => Some((x.step, x.exit_code)),
            _ => None,
        })
        .collect()
}

fn step(index: u32, kind: StepKind, script: &str, timeout_secs: u64) -> pb::Step {
    pb::Step {
        index,
        name: format!("s{index}"),
        kind: kind as i32,
        script: script.into(),
        timeout_secs,
        ..Default::default()
    }
}

#[tokio::test]
async fn missing_pipeline_file_and_install_failure_stop_the_job() {
    let root = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(root.path(), &[("README", b"x")]);
    let mut job = Job::new(root.path(), &repo.to_string_lossy(), &sha[..8]);
    job.control.deliver_steps(pb::RunSteps {
        bin_path: String::new(),
        artifacts: Vec::new(),
        steps: vec![
            step(1, StepKind::Install, "exit 4", 0),
            step(2, StepKind::Script, "echo never", 0),
        ],
    });
    let events = job.run().await;
    let co = checked_out(&events).expect("CheckedOut");
    assert_eq!(co.commit, sha, "abbreviated commit resolved to the full id");
    assert!(!co.has_pipeline_file && co.pipeline_file.is_empty());
    assert_eq!(exits(&events), vec![(0, 0), (1, 4)]);
    assert!(matches!(
        events.last().unwrap().kind,
        Some(Kind::Finished(_))
    ));
}

#[tokio::test]
async fn oversized_pipeline_file_is_flagged_without_bytes() {
    let root = tempfile::tempdir().unwrap();
    let big = vec![b'#'; zeroci::pipeline::MAX_FILE_BYTES + 1];
    let (repo, sha) = make_repo(root.path(), &[(PIPELINE_FILE, &big)]);
    let mut job = Job::new(root.path(), &repo.to_string_lossy(), &sha);
    job.control.deliver_steps(pb::RunSteps::default());
    let events = job.run().await;
    let co = checked_out(&events).unwrap();
    assert!(co.has_pipeline_file && co.pipeline_file_too_large && co.pipeline_file.is_empty());
}

#[tokio::test]
async fn timed_out_step_stops_the_job() {
    let root = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(root.path(), &[(PIPELINE_FILE, b"steps: []\n")]);
    let mut job = Job::new(root.path(), &repo.to_string_lossy(), "main");
    job.control.deliver_steps(pb::RunSteps {
        bin_path: String::new(),
        artifacts: Vec::new(),
        steps: vec![
            step(1, StepKind::Script, "exit 1", 0),
            step(2, StepKind::Script, "sleep 30", 1),
            step(3, StepKind::Script, "echo never", 0),
        ],
    });
    let events = job.run().await;
    assert_eq!(
        checked_out(&events).unwrap().pipeline_file,
        &b"steps: []\n"[..]
    );
    assert_eq!(
        checked_out(&events).unwrap().commit,
        sha,
        "a branch name works too"
    );
    assert_eq!(exits(&events), vec![(0, 0), (1, 1), (2, 124)]);
}

#[tokio::test]
async fn failed_clone_ends_the_job_after_step_0() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("no-such-repo");
    let mut job = Job::new(root.path(), &missing.to_string_lossy(), "abc123");
    let events = job.run().await;
    assert!(checked_out(&events).is_none());
    let exited = first_exit(&events);
    assert_eq!(exited.step, 0);
    assert_ne!(exited.exit_code, 0);
    assert_eq!(exited.message, "git clone failed");
    let log = String::from_utf8(checkout_output(&events)).unwrap();
    assert!(log.contains("attempt 1 of 3"), "{log}");
    assert!(log.contains("attempt 2 of 3"), "{log}");
    assert!(!log.contains("attempt 3 of 3"), "{log}");
    assert_eq!(events.len(), events.iter().filter(|e| e.seq > 0).count());
    assert!(matches!(
        events.last().unwrap().kind,
        Some(Kind::Finished(_))
    ));
}

#[tokio::test]
async fn a_git_server_that_never_answers_fails_the_checkout_at_its_timeout_without_retrying() {
    let root = tempfile::tempdir().unwrap();
    // Accepts git's connection and then says nothing, like a hung server or a black-holed proxy.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("git://{}/repo", server.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = server.accept().await {
            connections.push(socket);
        }
    });
    let mut job = Job::with_assignment(
        root.path(),
        Assignment {
            job_id: 9,
            attempt: 1,
            repo_url: url,
            commit: "main".into(),
            checkout_timeout_secs: 1,
            ..Default::default()
        },
    );
    let events = job.run().await;
    held.abort();
    assert!(checked_out(&events).is_none());
    let exited = first_exit(&events);
    assert_eq!((exited.step, exited.exit_code), (0, 124));
    assert_eq!(exited.message, "git clone failed: timed out after 1s");
    let log = String::from_utf8(checkout_output(&events)).unwrap();
    assert!(!log.contains("retrying"), "{log}");
}

#[tokio::test]
async fn a_failed_clone_is_cleaned_up_and_tried_again() {
    let root = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(root.path(), &[("README", b"x")]);
    let mut job = Job::new(root.path(), &repo.to_string_lossy(), &sha);
    // Leftovers in the workspace make the first clone fail; the retry starts from an empty one.
    let leftovers = root.path().join("work/workspace");
    std::fs::create_dir_all(&leftovers).unwrap();
    std::fs::write(leftovers.join("stale"), "x").unwrap();
    job.control.deliver_steps(pb::RunSteps::default());
    let events = job.run().await;
    assert_eq!(checked_out(&events).unwrap().commit, sha);
    assert_eq!(exits(&events), vec![(0, 0)]);
    let log = String::from_utf8(checkout_output(&events)).unwrap();
    assert!(log.contains("already exists"), "{log}");
    assert!(
        log.contains("zeroci: git clone failed (attempt 1 of 3); retrying"),
        "{log}"
    );
    assert!(!leftovers.join("stale").exists());
}

#[tokio::test]
async fn unknown_commit_and_cancel_before_steps() {
    let root = tempfile::tempdir().unwrap();
    let (repo, _) = make_repo(root.path(), &[("README", b"x")]);
    let mut job = Job::new(
        root.path(),
        &repo.to_string_lossy(),
        "0123456789abcdef0123456789abcdef01234567",
    );
    let events = job.run().await;
    assert_eq!(exits(&events).len(), 1);
    assert_ne!(exits(&events)[0].1, 0);

    let root = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(root.path(), &[("README", b"x")]);
    let mut job = Job::new(root.path(), &repo.to_string_lossy(), &sha);
    job.control.cancel().cancel("stop", Duration::from_secs(1));
    let events = job.run().await;
    // The checkout itself was cancelled right away; no step ran.
    assert_eq!(exits(&events).len(), 1);
    assert!(checked_out(&events).is_none());
    assert!(matches!(
        events.last().unwrap().kind,
        Some(Kind::Finished(_))
    ));
}

#[test]
fn the_credential_header_reaches_git_only_through_its_environment_config() {
    assert_eq!(
        super::git_env(""),
        vec![("GIT_TERMINAL_PROMPT".to_string(), "0".to_string())]
    );
    let env = super::git_env("Authorization: Basic eDp5");
    assert!(env.contains(&(
        "GIT_CONFIG_KEY_0".to_string(),
        "http.extraHeader".to_string()
    )));
    assert!(env.contains(&(
        "GIT_CONFIG_VALUE_0".to_string(),
        "Authorization: Basic eDp5".to_string()
    )));
}

#[tokio::test]
async fn a_local_repository_at_a_full_commit_is_checked_out_without_cloning() {
    let root = tempfile::tempdir().unwrap();
    let (repo, sha) = make_repo(root.path(), &[("zeroCI.yaml", b"script: [true]\n")]);
    let mut job = Job::new(root.path(), &repo.to_string_lossy(), &sha);
    job.control.deliver_steps(pb::RunSteps::default());
    let events = job.run().await;
    let checked_out = checked_out(&events).expect("checked out");
    assert_eq!(checked_out.commit, sha);
    assert_eq!(checked_out.pipeline_file.as_ref(), b"script: [true]\n");
    assert_eq!(exits(&events), vec![(0, 0)]);
    // The shortcut: the workspace borrows the repository's objects instead of copying them.
    let alternates = root
        .path()
        .join("work/workspace/.git/objects/info/alternates");
    assert!(alternates.is_file());
}

/// A local repository whose refs git cannot read: `packed-refs` is a FIFO, so git blocks opening it
/// until someone opens the other end. Returns the repository, its commit and the FIFO's path.
fn repo_with_hanging_refs(root: &Path) -> (PathBuf, String, PathBuf) {
    let (repo, sha) = make_repo(root, &[("zeroCI.yaml", b"script: [true]\n")]);
    let fifo = repo.join(".git/packed-refs");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    (repo, sha, fifo)
}

#[tokio::test]
async fn a_hung_local_checkout_ends_at_the_checkout_timeout_without_falling_back_to_a_clone() {
    let root = tempfile::tempdir().unwrap();
    let (repo, sha, _fifo) = repo_with_hanging_refs(root.path());
    let mut job = Job::with_assignment(
        root.path(),
        Assignment {
            job_id: 9,
            attempt: 1,
            repo_url: repo.to_string_lossy().into(),
            commit: sha,
            checkout_timeout_secs: 1,
            ..Default::default()
        },
    );
    let events = job.run().await;
    assert!(checked_out(&events).is_none());
    let exited = first_exit(&events);
    assert_eq!((exited.step, exited.exit_code), (0, 124));
    assert_eq!(exited.message, "git checkout failed: timed out after 1s");
}

#[tokio::test]
async fn a_cancel_during_the_local_checkout_ends_it_without_starting_a_clone() {
    let root = tempfile::tempdir().unwrap();
    let (repo, sha, _fifo) = repo_with_hanging_refs(root.path());
    let mut job = Job::new(root.path(), &repo.to_string_lossy(), &sha);
    let control = job.control.clone();
    // Once git reads the source's refs (and hangs there: nobody ever opens the FIFO's other end),
    // the shortcut is under way: cancel then.
    let git_dir = repo.join(".git").to_string_lossy().into_owned();
    let cancel_once_git_reads = tokio::task::spawn_blocking(move || {
        zeroci_testkit::wait_for("git reading the source's refs", || {
            let entries = std::fs::read_dir("/proc").ok()?;
            entries.flatten().find_map(|entry| {
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline);
                (cmdline.contains(&git_dir) && cmdline.contains("for-each-ref")).then_some(())
            })
        });
        control.cancel().cancel("stop", Duration::from_secs(1));
    });
    let events = job.run().await;
    cancel_once_git_reads.await.unwrap();
    assert!(checked_out(&events).is_none());
    let exited = first_exit(&events);
    assert_eq!(exited.step, 0);
    assert_eq!(exited.message, "checkout cancelled: stop");
    assert!(!root.path().join("work/workspace").exists());
}

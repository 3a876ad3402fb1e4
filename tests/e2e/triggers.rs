//! Local triggers: git hooks installed by `zeroci hook install`, and `zeroci rerun`.

use crate::harness::{Repo, TestEnv};
use zeroci_testkit::git;

#[test]
fn a_commit_in_a_repository_with_the_hook_queues_a_job_before_git_returns() {
    let env = TestEnv::start();
    let repo = Repo::new(
        &env,
        "hooked",
        &[("zeroCI.yaml", "script:\n  - echo hooked\n")],
    );
    let out = env.cli(&["hook", "install", repo.path_str()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(repo.path.join(".git/hooks/post-commit").exists());
    let commit = repo.commit(&[("file", "1")], "change");
    // The post-commit hook ran synchronously: the job is there already.
    let jobs = env.cli(&["jobs", "--json"]).json();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs:#}");
    let job = env.wait_job(jobs[0]["id"].as_u64().unwrap());
    assert_eq!(job["status"], "success");
    assert_eq!(job["commit"], commit);
    assert_eq!(job["ref"], "main");
    // Installing again replaces our own hook instead of refusing.
    assert_eq!(env.cli(&["hook", "install", repo.path_str()]).code, 0);
}

#[test]
fn a_push_to_a_bare_repository_queues_one_job_per_branch_with_slashes_kept() {
    let env = TestEnv::start();
    let bare = env.dir.path().join("origin.git");
    git(
        env.dir.path(),
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    let out = env.cli(&["hook", "install", bare.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let work = Repo::new(
        &env,
        "work",
        &[("zeroCI.yaml", "script:\n  - echo \"$ZEROCI_BRANCH\"\n")],
    );
    git(
        &work.path,
        &["remote", "add", "origin", bare.to_str().unwrap()],
    );
    git(&work.path, &["push", "-q", "origin", "main:feature/a/b"]);
    // post-receive runs before the push returns: the job is queued already.
    let jobs = env.cli(&["jobs", "--json"]).json();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs:#}");
    let id = jobs[0]["id"].as_u64().unwrap();
    assert_eq!(env.wait_job(id)["status"], "success");
    assert_eq!(env.raw_log(id, None), b"feature/a/b\n");
    // Deleting the branch queues nothing.
    git(&work.path, &["push", "-q", "origin", ":feature/a/b"]);
    assert_eq!(
        env.cli(&["jobs", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn rerun_tests_the_same_commit_again() {
    let env = TestEnv::start();
    let repo = Repo::new(
        &env,
        "again",
        &[("zeroCI.yaml", "script:\n  - git rev-parse HEAD\n")],
    );
    let first = env.submit(&repo.path);
    let first_job = env.wait_job(first);
    repo.commit(
        &[("later", "x")],
        "a later commit the rerun must not pick up",
    );
    let out = env.cli(&["rerun", &first.to_string()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let second = env.cli(&["jobs", "--json"]).json()[0].clone();
    assert_ne!(second["id"], first_job["id"]);
    assert_eq!(second["commit"], first_job["commit"]);
    assert!(
        second["triggered_by"]
            .as_str()
            .unwrap()
            .contains(&format!("rerun of job {first}"))
    );
    assert_eq!(
        out.stdout_str(),
        format!("{}\n", first_job["commit"].as_str().unwrap())
    );
}

#[test]
fn a_watched_local_repository_gets_a_job_for_each_new_branch_head() {
    let outside = tempfile::tempdir().unwrap();
    let repo = Repo::at(
        &outside.path().join("watched"),
        &[("zeroCI.yaml", "script:\n  - echo \"$ZEROCI_BRANCH\"\n")],
    );
    let extra = format!("[repos.\"local:{}\"]\n", repo.path_str());
    let env = TestEnv::start_with(crate::harness::Settings {
        extra,
        ..Default::default()
    });
    // The watcher's first scan only records the heads it finds; commits after it are jobs.
    zeroci_testkit::wait_for("the watcher's first scan", || {
        env.controller_log_text()
            .contains("branch heads recorded")
            .then_some(())
    });
    let sha = repo.commit(&[("f", "1")], "watched change");
    let job = zeroci_testkit::wait_for("a job for the new head", || {
        let jobs = env.cli(&["jobs", "--json"]).json();
        jobs.as_array()
            .unwrap()
            .iter()
            .find(|j| j["commit"] == sha.as_str())
            .cloned()
    });
    let id = job["id"].as_u64().unwrap();
    assert_eq!(env.wait_job(id)["status"], "success");
    assert_eq!(env.raw_log(id, None), b"main\n");
}

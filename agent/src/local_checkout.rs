//! A faster checkout of a repository on this host's file system (local hooks, `zeroci run PATH`).
//!
//! `git clone` of a local path costs ~13 ms even for a tiny repository, most of it starting
//! `git-upload-pack` to advertise refs; that was half of the time from a commit to its result. Here the
//! workspace is made the way `git clone --shared` makes it, without the transport: `git init`, the
//! source's object directory as an alternate (nothing copied), `origin` pointing at the source, its
//! branches as `refs/remotes/origin/*` and its tags (`git for-each-ref`, written as `packed-refs`),
//! then `git checkout --detach COMMIT`. The job sees the same workspace a clone gives it (remote,
//! remote-tracking branches, tags, detached HEAD at the commit).
//!
//! Only for a full SHA-1 commit id and a plain repository (a work tree with a `.git` directory, or a
//! bare one); anything else — a branch name, a linked work tree, SHA-256 objects, a commit the source
//! does not hold, any failure — returns an error and the caller clones as before, so this path can
//! only make a checkout faster, never fail one. The alternate is the caveat `git clone --shared`
//! documents: objects the source prunes while the job runs would vanish from the workspace; a source
//! only prunes unreachable objects older than two weeks, and the commit under test is reachable.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Upper bound for each git command here when the job sets no checkout timeout.
const DEFAULT_LIMIT: Duration = Duration::from_secs(600);

/// A repository on this host that a workspace can borrow objects from.
#[derive(Debug, PartialEq)]
pub struct LocalSource {
    /// Its git directory (`PATH/.git`, or `PATH` for a bare repository).
    git_dir: PathBuf,
    /// What `origin` is set to: the path the job was submitted with.
    url: String,
}

impl LocalSource {
    /// The repository at `url` when it is an absolute path to one here.
    pub fn find(url: &str) -> Option<LocalSource> {
        let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
        if !path.is_absolute() {
            return None;
        }
        let dot_git = path.join(".git");
        let git_dir = if dot_git.is_dir() {
            dot_git
        } else if path.join("objects").is_dir() && path.join("HEAD").is_file() {
            path.to_path_buf()
        } else {
            return None;
        };
        Some(LocalSource {
            git_dir,
            url: url.to_string(),
        })
    }
}

/// Whether `commit` is a full SHA-1 commit id (lowercase hex), the only form this path takes.
pub fn is_full_sha1(commit: &str) -> bool {
    commit.len() == 40
        && commit
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes `workspace` (which must not exist) a checkout of `commit` borrowing `source`'s objects; see
/// the module docs. On error the workspace may be half made: the caller removes it.
pub async fn check_out(
    source: &LocalSource,
    commit: &str,
    workspace: &Path,
    limit: Option<Duration>,
) -> Result<(), String> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    let refs = git(
        None,
        &[
            "--git-dir".as_ref(),
            source.git_dir.as_os_str(),
            "for-each-ref".as_ref(),
            "--format=%(objectname) %(refname)".as_ref(),
            "refs/heads".as_ref(),
            "refs/tags".as_ref(),
        ],
        limit,
    )
    .await?;
    let packed = packed_refs(&refs)?;
    git(
        None,
        &[
            "init".as_ref(),
            "--quiet".as_ref(),
            "--template=".as_ref(),
            workspace.as_os_str(),
        ],
        limit,
    )
    .await?;
    let dot_git = workspace.join(".git");
    let objects = source.git_dir.join("objects");
    let objects = objects.to_str().ok_or("the source's path is not UTF-8")?;
    write(
        &dot_git.join("objects/info/alternates"),
        &format!("{objects}\n"),
    )?;
    let mut config = std::fs::read_to_string(dot_git.join("config")).map_err(|e| e.to_string())?;
    config.push_str(&format!(
        "[remote \"origin\"]\n\turl = {}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n",
        quoted(&source.url)
    ));
    write(&dot_git.join("config"), &config)?;
    write(&dot_git.join("packed-refs"), &packed)?;
    git(
        Some(workspace),
        &[
            "-c".as_ref(),
            "advice.detachedHead=false".as_ref(),
            "checkout".as_ref(),
            "--quiet".as_ref(),
            "--detach".as_ref(),
            commit.as_ref(),
        ],
        limit,
    )
    .await?;
    Ok(())
}

/// `packed-refs` for the workspace from the source's `OID REFNAME` lines: branches become
/// remote-tracking branches of `origin`, tags stay tags; sorted, as git keeps the file.
fn packed_refs(for_each_ref: &str) -> Result<String, String> {
    let mut refs = Vec::new();
    for line in for_each_ref.lines() {
        let (oid, name) = line
            .split_once(' ')
            .ok_or_else(|| format!("unexpected ref line {line:?}"))?;
        if !is_full_sha1(oid) {
            return Err(format!("not a SHA-1 object id: {oid:?}"));
        }
        let name = match name.strip_prefix("refs/heads/") {
            Some(branch) => format!("refs/remotes/origin/{branch}"),
            None => name.to_string(),
        };
        refs.push((name, oid.to_string()));
    }
    refs.sort();
    let mut text = String::from("# pack-refs with: sorted \n");
    for (name, oid) in refs {
        text.push_str(&format!("{oid} {name}\n"));
    }
    Ok(text)
}

/// A git config value in double quotes (a path may hold anything).
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs git with its output captured; its stdout on success, its stderr as the error otherwise.
async fn git(
    cwd: Option<&Path>,
    args: &[&std::ffi::OsStr],
    limit: Duration,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new("git");
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = tokio::time::timeout(limit, command.output())
        .await
        .map_err(|_| format!("git timed out after {limit:?}"))?
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    String::from_utf8(output.stdout).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroci_testkit::{commit_files, git, init_repo};

    #[test]
    fn only_full_lowercase_sha1_ids_take_this_path() {
        assert!(is_full_sha1(&"a".repeat(40)));
        assert!(!is_full_sha1(&"A".repeat(40)));
        assert!(!is_full_sha1(&"a".repeat(64)));
        assert!(!is_full_sha1("main"));
    }

    #[test]
    fn packed_refs_map_branches_to_origin_and_keep_tags_sorted() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let text = format!("{a} refs/tags/v1\n{b} refs/heads/main\n");
        assert_eq!(
            packed_refs(&text).unwrap(),
            format!("# pack-refs with: sorted \n{b} refs/remotes/origin/main\n{a} refs/tags/v1\n")
        );
        assert!(packed_refs(&format!("{} refs/heads/x\n", "c".repeat(64))).is_err());
    }

    #[tokio::test]
    async fn a_workspace_borrows_the_sources_objects_and_looks_like_a_clone() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let first = init_repo(&src, &[("zeroCI.yaml", "script: [true]\n")]);
        git(&src, &["tag", "-a", "v1", "-m", "v1"]);
        commit_files(&src, &[("more", "x")], "two");
        let source = LocalSource::find(src.to_str().unwrap()).expect("a repository");

        let workspace = dir.path().join("workspace");
        check_out(&source, &first, &workspace, None).await.unwrap();
        assert_eq!(git(&workspace, &["rev-parse", "HEAD"]), first);
        assert_eq!(git(&workspace, &["status", "--porcelain"]), "");
        assert!(workspace.join("zeroCI.yaml").is_file() && !workspace.join("more").exists());
        assert_eq!(
            git(&workspace, &["remote", "get-url", "origin"]),
            src.to_str().unwrap()
        );
        assert_eq!(
            git(&workspace, &["rev-parse", "origin/main"]),
            git(&src, &["rev-parse", "main"])
        );
        assert_eq!(git(&workspace, &["describe", "--tags"]), "v1");
        // A commit made in the job goes into the workspace, not the source.
        git(
            &workspace,
            &["commit", "-q", "--allow-empty", "-m", "job's"],
        );
        let made = git(&workspace, &["rev-parse", "HEAD"]);
        let in_source = std::process::Command::new("git")
            .current_dir(&src)
            .args(["cat-file", "-e", &made])
            .status()
            .unwrap();
        assert!(!in_source.success());

        // A commit the source does not hold is an error (the caller clones instead).
        let elsewhere = dir.path().join("elsewhere");
        let missing = "0123456789abcdef0123456789abcdef01234567";
        assert!(check_out(&source, missing, &elsewhere, None).await.is_err());
    }

    #[test]
    fn only_plain_repositories_on_absolute_paths_are_sources() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LocalSource::find("relative/path"), None);
        assert_eq!(LocalSource::find("https://example.com/x.git"), None);
        assert_eq!(LocalSource::find(dir.path().to_str().unwrap()), None);
        git(dir.path(), &["init", "-q", "--bare"]);
        assert_eq!(
            LocalSource::find(dir.path().to_str().unwrap()).map(|s| s.git_dir),
            Some(dir.path().to_path_buf())
        );
    }
}

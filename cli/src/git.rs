//! Working out what `zeroci run` submits: repository URL, commit, ref and display name, from a local
//! checkout or a remote URL.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

/// What to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub repo_url: String,
    pub repo_name: String,
    pub commit: String,
    pub ref_name: String,
    /// The commit's author, when known (a local checkout); for display.
    pub committer: String,
    /// For a local checkout: whether the work tree has uncommitted changes (which the job will not see).
    pub dirty: bool,
}

/// Remote look-ups must not hang on a credential prompt or a dead host.
const LS_REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves `source` (a directory or a URL) at `git_ref` (default HEAD).
pub async fn resolve(source: &str, git_ref: Option<&str>) -> anyhow::Result<Source> {
    if let Some(r) = git_ref {
        // A ref starting with '-' would be taken by git as an option.
        if r.is_empty() || r.starts_with('-') {
            bail!("invalid ref {r:?}");
        }
    }
    if Path::new(source).is_dir() {
        return resolve_local(Path::new(source), git_ref);
    }
    if !looks_like_url(source) {
        bail!("{source} is neither a directory nor a repository URL");
    }
    resolve_remote(source, git_ref).await
}

/// URLs (`scheme://…`) and scp-like `[user@]host:path`; anything else is meant as a local path.
pub fn looks_like_url(s: &str) -> bool {
    if s.contains("://") {
        return true;
    }
    // scp-like syntax: a colon before the first slash (git's own rule), and not a Windows drive letter.
    match (s.find(':'), s.find('/')) {
        (Some(colon), slash) => colon > 1 && slash.is_none_or(|slash| colon < slash),
        _ => false,
    }
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .context("cannot run git (is it installed?)")
}

fn stdout_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// A local repository: the job clones the top-level directory by absolute path.
pub fn resolve_local(path: &Path, git_ref: Option<&str>) -> anyhow::Result<Source> {
    let shown = path.display();
    let top = git(path, &["rev-parse", "--show-toplevel"])?;
    let (top, bare) = if top.status.success() {
        (stdout_line(&top), false)
    } else {
        // A bare repository has no work tree but can still be cloned and tested.
        let bare = git(path, &["rev-parse", "--is-bare-repository"])?;
        if !(bare.status.success() && stdout_line(&bare) == "true") {
            bail!("{shown} is not in a git repository ({})", stderr_text(&top));
        }
        let dir = git(path, &["rev-parse", "--absolute-git-dir"])?;
        if !dir.status.success() {
            bail!("{shown}: {}", stderr_text(&dir));
        }
        (stdout_line(&dir), true)
    };
    let top_path = Path::new(&top);
    let wanted = git_ref.unwrap_or("HEAD");
    // One git process for the commit id and its author (each costs about a millisecond of the
    // commit → result time).
    let commit = git(
        top_path,
        &[
            "show",
            "--no-patch",
            "--no-show-signature",
            "--format=%H%x00%an",
            &format!("{wanted}^{{commit}}"),
            "--",
        ],
    )?;
    if !commit.status.success() {
        if git_ref.is_none() {
            bail!("the repository {top} has no commits yet (HEAD does not name a commit)");
        }
        bail!("unknown ref {wanted:?} in {top}: it names no commit");
    }
    let shown_commit = stdout_line(&commit);
    let (commit_id, committer) = shown_commit
        .split_once('\0')
        .unwrap_or((shown_commit.as_str(), ""));
    let ref_name = match git_ref {
        Some(r) => r.to_string(),
        None => {
            let branch = git(top_path, &["rev-parse", "--abbrev-ref", "HEAD"])?;
            let branch = stdout_line(&branch);
            // "HEAD" means a detached head: there is no branch to report.
            if branch == "HEAD" {
                String::new()
            } else {
                branch
            }
        }
    };
    // Only worth a note (and a `git status`, the slowest call here) when the user tests what is
    // checked out; a named ref (hooks name the commit) is tested as named.
    let dirty = !bare
        && git_ref.is_none()
        && git(top_path, &["status", "--porcelain", "--untracked-files=no"])
            .map(|o| o.status.success() && !o.stdout.is_empty())
            .unwrap_or(false);
    let name = top_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Source {
        repo_name: name
            .strip_suffix(".git")
            .map(str::to_string)
            .unwrap_or(name),
        repo_url: top,
        commit: commit_id.to_string(),
        committer: committer.to_string(),
        ref_name,
        dirty,
    })
}

/// A remote repository: resolve the ref with `git ls-remote` when the remote answers; otherwise submit
/// the ref itself and let the controller resolve it when it clones.
async fn resolve_remote(url: &str, git_ref: Option<&str>) -> anyhow::Result<Source> {
    let repo_name = repo_name_from_url(url);
    if let Some(r) = git_ref.filter(|r| is_full_commit_id(r)) {
        return Ok(Source {
            repo_url: url.to_string(),
            repo_name,
            commit: r.to_string(),
            committer: String::new(),
            ref_name: String::new(),
            dirty: false,
        });
    }
    let wanted = git_ref.unwrap_or("HEAD");
    let mut args = vec!["ls-remote"];
    if git_ref.is_none() {
        // Also reports which branch HEAD points at, for the ref column.
        args.push("--symref");
    }
    // A pattern matches the peeled entry of an annotated tag (`v1^{}`) only when asked for explicitly.
    let peeled = format!("{wanted}^{{}}");
    args.extend(["--", url, wanted, &peeled]);
    let listing = ls_remote(&args).await;
    let (commit, symref) = match listing.as_deref() {
        Some(text) => pick_ref(text, wanted),
        None => (None, None),
    };
    let ref_name = match git_ref {
        Some(r) => r.to_string(),
        None => symref.unwrap_or_default(),
    };
    Ok(Source {
        repo_url: url.to_string(),
        repo_name,
        commit: commit.unwrap_or_else(|| wanted.to_string()),
        committer: String::new(),
        ref_name,
        dirty: false,
    })
}

async fn ls_remote(args: &[&str]) -> Option<String> {
    let child = tokio::process::Command::new("git")
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LS_REMOTE_TIMEOUT, child)
        .await
        .ok()?
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// From `git ls-remote` output, the commit for `wanted` and (with `--symref`) the branch HEAD points at.
/// Exact branch and tag names win over other refs that merely end the same way, and a tag is peeled to
/// its commit (`refs/tags/v1^{}`).
pub fn pick_ref(listing: &str, wanted: &str) -> (Option<String>, Option<String>) {
    let mut symref = None;
    let mut refs: Vec<(&str, &str)> = Vec::new();
    for line in listing.lines() {
        if let Some(rest) = line.strip_prefix("ref: ") {
            if let Some((target, name)) = rest.split_once('\t') {
                if name == "HEAD" {
                    symref = Some(
                        target
                            .strip_prefix("refs/heads/")
                            .unwrap_or(target)
                            .to_string(),
                    );
                }
            }
            continue;
        }
        if let Some((sha, name)) = line.split_once('\t') {
            refs.push((sha.trim(), name.trim()));
        }
    }
    let preferred = [
        format!("refs/heads/{wanted}"),
        format!("refs/tags/{wanted}^{{}}"),
        format!("refs/tags/{wanted}"),
        format!("{wanted}^{{}}"),
        wanted.to_string(),
    ];
    let commit = preferred
        .iter()
        .find_map(|p| refs.iter().find(|(_, name)| name == p))
        .or_else(|| refs.first())
        .map(|(sha, _)| (*sha).to_string());
    (commit, symref)
}

fn is_full_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The display name of a repository URL: its last path segment without `.git`.
pub fn repo_name_from_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    let last = trimmed.rsplit(['/', ':']).next().unwrap_or(trimmed);
    let name = last.strip_suffix(".git").unwrap_or(last);
    if name.is_empty() {
        url.to_string()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A repository "demo" on branch "trunk" with two commits and an annotated tag on the first.
    fn sample_repo() -> (tempfile::TempDir, std::path::PathBuf, String, String) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("demo");
        std::fs::create_dir_all(repo.join("sub")).unwrap();
        run_git(&repo, &["init", "-q", "-b", "trunk"]);
        std::fs::write(repo.join("sub/a.txt"), "1").unwrap();
        run_git(&repo, &["add", "."]);
        run_git(&repo, &["commit", "-q", "-m", "one"]);
        let first = run_git(&repo, &["rev-parse", "HEAD"]);
        run_git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
        std::fs::write(repo.join("sub/a.txt"), "2").unwrap();
        run_git(&repo, &["commit", "-q", "-am", "two"]);
        let second = run_git(&repo, &["rev-parse", "HEAD"]);
        let repo = repo.canonicalize().unwrap();
        (tmp, repo, first, second)
    }

    #[test]
    fn local_head_from_a_subdirectory() {
        let (_tmp, repo, _first, second) = sample_repo();
        let s = resolve_local(&repo.join("sub"), None).unwrap();
        assert_eq!(s.repo_url, repo.to_str().unwrap());
        assert_eq!(s.repo_name, "demo");
        assert_eq!(s.commit, second);
        assert_eq!(
            s.committer, "t",
            "the commit's author, read with the commit id"
        );
        assert_eq!(s.ref_name, "trunk");
        assert!(!s.dirty);
    }

    #[test]
    fn local_tag_branch_and_short_ids() {
        let (_tmp, repo, first, second) = sample_repo();
        let s = resolve_local(&repo, Some("v1")).unwrap();
        assert_eq!(s.commit, first, "annotated tag peeled to its commit");
        assert_eq!(s.ref_name, "v1");
        let s = resolve_local(&repo, Some("trunk~1")).unwrap();
        assert_eq!(s.commit, first);
        let s = resolve_local(&repo, Some(&second[..8])).unwrap();
        assert_eq!(s.commit, second, "short id expanded to the full commit id");
    }

    #[test]
    fn local_detached_head_has_no_ref_and_dirty_is_seen() {
        let (_tmp, repo, first, _second) = sample_repo();
        run_git(&repo, &["checkout", "-q", &first]);
        std::fs::write(repo.join("sub/a.txt"), "changed").unwrap();
        let s = resolve_local(&repo, None).unwrap();
        assert_eq!(s.commit, first);
        assert_eq!(s.ref_name, "");
        assert!(s.dirty);
        // A named commit (what hooks submit) is tested as named: no note, no `git status`.
        assert!(!resolve_local(&repo, Some(&first)).unwrap().dirty);
    }

    #[test]
    fn local_errors() {
        let (_tmp, repo, _first, _second) = sample_repo();
        let err = resolve_local(&repo, Some("no-such-branch"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown ref \"no-such-branch\""), "{err}");

        let plain = tempfile::tempdir().unwrap();
        let err = resolve_local(plain.path(), None).unwrap_err().to_string();
        assert!(err.contains("not in a git repository"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        run_git(empty.path(), &["init", "-q"]);
        let err = resolve_local(empty.path(), None).unwrap_err().to_string();
        assert!(err.contains("no commits"), "{err}");
    }

    #[test]
    fn bare_repository() {
        let (tmp, repo, _first, second) = sample_repo();
        let bare = tmp.path().join("demo-bare.git");
        run_git(
            tmp.path(),
            &[
                "clone",
                "-q",
                "--bare",
                repo.to_str().unwrap(),
                bare.to_str().unwrap(),
            ],
        );
        let s = resolve_local(&bare, None).unwrap();
        assert_eq!(s.commit, second);
        assert_eq!(s.repo_name, "demo-bare");
        assert_eq!(s.ref_name, "trunk");
    }

    #[tokio::test]
    async fn remote_resolution_through_ls_remote() {
        let (_tmp, repo, first, second) = sample_repo();
        let url = format!("file://{}", repo.display());
        let s = resolve(&url, None).await.unwrap();
        assert_eq!(s.commit, second);
        assert_eq!(s.ref_name, "trunk");
        assert_eq!(s.repo_name, "demo");
        assert_eq!(s.repo_url, url);
        let s = resolve(&url, Some("v1")).await.unwrap();
        assert_eq!(s.commit, first, "tag peeled");
        assert_eq!(s.ref_name, "v1");
        // Unknown to the remote: submitted as is, the controller will report it.
        let s = resolve(&url, Some("feature")).await.unwrap();
        assert_eq!(s.commit, "feature");
    }

    #[tokio::test]
    async fn bad_sources() {
        let err = resolve("/definitely/not/here", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither a directory nor a repository URL"),
            "{err}"
        );
        let err = resolve(".", Some("--upload-pack=x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid ref"), "{err}");
    }

    #[test]
    fn url_detection_and_names() {
        assert!(looks_like_url("https://github.com/o/n.git"));
        assert!(looks_like_url("git@github.com:o/n.git"));
        assert!(looks_like_url("host:repo"));
        assert!(!looks_like_url("./dir"));
        assert!(!looks_like_url("dir/with:colon"));
        assert!(!looks_like_url("C:"));
        assert_eq!(repo_name_from_url("https://github.com/o/name.git"), "name");
        assert_eq!(repo_name_from_url("https://github.com/o/name/"), "name");
        assert_eq!(repo_name_from_url("git@github.com:o/name.git"), "name");
        assert_eq!(repo_name_from_url("host:name"), "name");
    }

    #[test]
    fn ref_picking() {
        let listing = "aaa\trefs/remotes/origin/main\nbbb\trefs/heads/main\n";
        assert_eq!(pick_ref(listing, "main"), (Some("bbb".into()), None));
        let tags = "ttt\trefs/tags/v1\nccc\trefs/tags/v1^{}\n";
        assert_eq!(pick_ref(tags, "v1").0.as_deref(), Some("ccc"));
        let head = "ref: refs/heads/trunk\tHEAD\nddd\tHEAD\n";
        assert_eq!(
            pick_ref(head, "HEAD"),
            (Some("ddd".into()), Some("trunk".into()))
        );
        assert_eq!(pick_ref("", "x"), (None, None));
        assert!(is_full_commit_id(&"a".repeat(40)));
        assert!(!is_full_commit_id("abc"));
    }
}

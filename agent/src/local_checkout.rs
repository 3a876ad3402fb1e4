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
//! does not hold, any failure — returns an error and the caller clones as before. Only the checkout's
//! deadline or a cancel, which the caller applies to the whole shortcut, end the checkout here.
//!
//! The alternate is the caveat `git clone --shared` documents: objects the source prunes while the
//! job runs would vanish from the workspace; a source only prunes unreachable objects older than two
//! weeks, and the commit under test is reachable.

use std::path::{Path, PathBuf};
use std::process::Stdio;

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
/// the module docs. Returns the commit checked out (a tag's id given is peeled to its commit). On error
/// the workspace may be half made: the caller removes it. No time limit of its own: the caller's one
/// deadline covers the whole (each git process dies with the dropped future).
pub async fn check_out(
    source: &LocalSource,
    commit: &str,
    workspace: &Path,
) -> Result<String, String> {
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
    )
    .await?;
    // The branch the source's HEAD names becomes origin/HEAD and the workspace's own branch, as a
    // clone makes them (none for a detached or unborn HEAD).
    let head_branch = std::fs::read_to_string(source.git_dir.join("HEAD"))
        .ok()
        .and_then(|head| {
            Some(
                head.strip_prefix("ref: refs/heads/")?
                    .trim_end()
                    .to_string(),
            )
        })
        .filter(|branch| {
            let wanted = format!("refs/heads/{branch}");
            refs.lines()
                .any(|line| line.split_once(' ').is_some_and(|(_, name)| name == wanted))
        });
    let packed = packed_refs(&refs, head_branch.as_deref())?;
    git(
        None,
        &[
            // Files, not reftable, whatever the user's default (older git ignores the key).
            "-c".as_ref(),
            "init.defaultRefFormat=files".as_ref(),
            "init".as_ref(),
            "--quiet".as_ref(),
            "--template=".as_ref(),
            workspace.as_os_str(),
        ],
    )
    .await?;
    let dot_git = workspace.join(".git");
    // Refs are written as files: a workspace made as reftable anyway (GIT_DEFAULT_REF_FORMAT wins
    // over the config) would ignore them.
    if dot_git.join("reftable").exists() {
        return Err("the workspace would keep its refs as reftable".into());
    }
    let objects = source.git_dir.join("objects");
    let objects = objects.to_str().ok_or("the source's path is not UTF-8")?;
    write(
        &dot_git.join("objects/info/alternates"),
        &format!("{objects}\n"),
    )?;
    // A shallow source's boundary commits have no parents in its objects: the workspace is shallow
    // at the same commits, as a clone of it would be, instead of broken past them.
    match std::fs::copy(source.git_dir.join("shallow"), dot_git.join("shallow")) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot copy the source's shallow list: {e}")),
    }
    let mut config = std::fs::read_to_string(dot_git.join("config")).map_err(|e| e.to_string())?;
    config.push_str(&format!(
        "[remote \"origin\"]\n\turl = {}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n",
        quoted(&source.url)
    ));
    if let Some(branch) = &head_branch {
        config.push_str(&format!(
            "[branch {}]\n\tremote = origin\n\tmerge = {}\n",
            quoted(branch),
            quoted(&format!("refs/heads/{branch}"))
        ));
        let remotes = dot_git.join("refs/remotes/origin");
        std::fs::create_dir_all(&remotes).map_err(|e| format!("{}: {e}", remotes.display()))?;
        write(
            &remotes.join("HEAD"),
            &format!("ref: refs/remotes/origin/{branch}\n"),
        )?;
    }
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
    )
    .await?;
    // A detached HEAD is the commit's id itself: no git process needed to read it.
    let head = std::fs::read_to_string(dot_git.join("HEAD")).map_err(|e| e.to_string())?;
    let head = head.trim_end();
    if !is_full_sha1(head) {
        return Err(format!("unexpected HEAD after the checkout: {head:?}"));
    }
    Ok(head.to_string())
}

/// `packed-refs` for the workspace from the source's `OID REFNAME` lines: branches become
/// remote-tracking branches of `origin` (and `head_branch` a branch of the workspace too), tags stay
/// tags; sorted, as git keeps the file.
fn packed_refs(for_each_ref: &str, head_branch: Option<&str>) -> Result<String, String> {
    let mut refs = Vec::new();
    for line in for_each_ref.lines() {
        let (oid, name) = line
            .split_once(' ')
            .ok_or_else(|| format!("unexpected ref line {line:?}"))?;
        if !is_full_sha1(oid) {
            return Err(format!("not a SHA-1 object id: {oid:?}"));
        }
        let name = match name.strip_prefix("refs/heads/") {
            Some(branch) => {
                if Some(branch) == head_branch {
                    refs.push((name.to_string(), oid.to_string()));
                }
                format!("refs/remotes/origin/{branch}")
            }
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
async fn git(cwd: Option<&Path>, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let mut command = tokio::process::Command::new("git");
    command
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command
        .output()
        .await
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
        let c = "c".repeat(40);
        let text = format!("{a} refs/tags/v1\n{b} refs/heads/main\n{c} refs/heads/topic\n");
        assert_eq!(
            packed_refs(&text, Some("main")).unwrap(),
            format!(
                "# pack-refs with: sorted \n{b} refs/heads/main\n{b} refs/remotes/origin/main\n\
                 {c} refs/remotes/origin/topic\n{a} refs/tags/v1\n"
            )
        );
        assert!(packed_refs(&format!("{} refs/heads/x\n", "c".repeat(64)), None).is_err());
    }

    /// Everything about refs a job can observe: names, targets, symbolic refs, branch config.
    fn refs_and_config(repo: &Path) -> String {
        let refs = git(
            repo,
            &[
                "for-each-ref",
                "--format=%(refname) %(objectname) %(symref)",
            ],
        );
        let config = git(repo, &["config", "--get-regexp", "^(remote|branch)\\."]);
        let head = git(repo, &["rev-parse", "HEAD", "origin"]);
        format!("{refs}\n{config}\n{head}")
    }

    #[tokio::test]
    async fn a_workspace_borrows_the_sources_objects_and_has_what_a_clone_has() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let first = init_repo(&src, &[("zeroCI.yaml", "script: [true]\n")]);
        git(&src, &["tag", "-a", "v1", "-m", "v1"]);
        git(&src, &["branch", "topic"]);
        commit_files(&src, &[("more", "x")], "two");
        let source = LocalSource::find(src.to_str().unwrap()).expect("a repository");

        let workspace = dir.path().join("workspace");
        let head = check_out(&source, &first, &workspace).await.unwrap();
        assert_eq!(head, first);
        assert_eq!(git(&workspace, &["status", "--porcelain"]), "");
        assert!(workspace.join("zeroCI.yaml").is_file() && !workspace.join("more").exists());
        assert_eq!(git(&workspace, &["describe", "--tags"]), "v1");
        // The same refs, origin/HEAD, branch config and HEAD as `git clone` + a detached checkout.
        let clone = dir.path().join("clone");
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--no-checkout",
                src.to_str().unwrap(),
                "clone",
            ],
        );
        git(&clone, &["checkout", "-q", "--detach", &first]);
        assert_eq!(refs_and_config(&workspace), refs_and_config(&clone));

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

        // An annotated tag's own id is peeled to its commit, as the clone path reports it.
        let tag = git(&src, &["rev-parse", "v1"]);
        assert_ne!(tag, first);
        let tagged = dir.path().join("tagged");
        assert_eq!(check_out(&source, &tag, &tagged).await.unwrap(), first);

        // A commit the source does not hold is an error (the caller clones instead).
        let elsewhere = dir.path().join("elsewhere");
        let missing = "0123456789abcdef0123456789abcdef01234567";
        assert!(check_out(&source, missing, &elsewhere).await.is_err());
    }

    #[tokio::test]
    async fn a_shallow_source_gives_a_shallow_workspace_with_readable_history() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full");
        init_repo(&full, &[("a", "1")]);
        let tip = commit_files(&full, &[("b", "2")], "two");
        let url = format!("file://{}", full.display());
        git(dir.path(), &["clone", "-q", "--depth=1", &url, "shallow"]);
        let shallow = dir.path().join("shallow");
        let source = LocalSource::find(shallow.to_str().unwrap()).expect("a repository");

        let workspace = dir.path().join("workspace");
        assert_eq!(check_out(&source, &tip, &workspace).await.unwrap(), tip);
        assert_eq!(git(&workspace, &["rev-list", "--count", "HEAD"]), "1");
        assert_eq!(git(&workspace, &["log", "--format=%s"]), "two");
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

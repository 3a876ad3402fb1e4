//! `zeroci hook install PATH`: git hooks that queue a job the moment a commit or push lands, the way
//! Pontus's observer meant to, but without its 5-second polling or its "latest commit only" loss.
//!
//! The hooks call this same `zeroci` binary with an absolute profile path, and `--detach`, so the git
//! command returns as soon as the job is queued (a few milliseconds).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use crate::args::{HookArgs, HookCommand};

/// Marks hooks we wrote, so a second install replaces ours but never someone else's.
const MARKER: &str = "# installed by `zeroci hook install`";

pub fn hook(profile: Option<&Path>, args: HookArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        HookCommand::Install { path } => install(profile, &path),
    }
}

fn git(path: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(path)
        .args(args)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        return Err(anyhow!(
            "{} is not a git repository: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn install(profile: Option<&Path>, path: &Path) -> anyhow::Result<ExitCode> {
    let path = std::path::absolute(path).context("cannot resolve the repository path")?;
    let bare = git(&path, &["rev-parse", "--is-bare-repository"])? == "true";
    let hooks_dir = PathBuf::from(git(
        &path,
        &["rev-parse", "--path-format=absolute", "--git-path", "hooks"],
    )?);
    let repo = if bare {
        PathBuf::from(git(
            &path,
            &["rev-parse", "--path-format=absolute", "--git-dir"],
        )?)
    } else {
        PathBuf::from(git(&path, &["rev-parse", "--show-toplevel"])?)
    };
    let profile = match profile {
        Some(p) => p.to_path_buf(),
        None => zeroci::profile::Profile::default_path(),
    };
    let profile = std::path::absolute(&profile).context("cannot resolve the profile path")?;
    zeroci::profile::Profile::load(&profile).map_err(|e| {
        anyhow!(
            "{e}; the hook needs a working profile (run `zeroci-controller init` or pass --profile)"
        )
    })?;
    let zeroci = std::env::current_exe().context("cannot find this zeroci binary")?;
    let (zeroci, profile, repo) = (
        sh_quote(&zeroci.display().to_string()),
        sh_quote(&profile.display().to_string()),
        sh_quote(&repo.display().to_string()),
    );
    std::fs::create_dir_all(&hooks_dir)
        .with_context(|| format!("cannot create {}", hooks_dir.display()))?;
    let mut written = Vec::new();
    // A push to a bare repository: one job per updated branch, at the exact pushed commit.
    let post_receive = format!(
        "#!/bin/sh\n{MARKER}\nwhile read old new ref; do\n  case \"$new\" in *[!0]*) ;; *) continue ;; esac\n  case \"$ref\" in refs/heads/*) branch=\"${{ref#refs/heads/}}\" ;; *) branch=\"$ref\" ;; esac\n  {zeroci} --profile {profile} run {repo} --ref \"$new\" --branch \"$branch\" --detach >/dev/null \\\n    || echo \"zeroci: could not queue a job for $ref\" >&2\ndone\nexit 0\n"
    );
    written.push(write_hook(&hooks_dir.join("post-receive"), &post_receive)?);
    if !bare {
        // A commit in a work tree: the new HEAD, on the current branch.
        let post_commit = format!(
            "#!/bin/sh\n{MARKER}\nbranch=$(git symbolic-ref --quiet --short HEAD || true)\n{zeroci} --profile {profile} run {repo} --ref \"$(git rev-parse HEAD)\" --branch \"$branch\" --detach >/dev/null \\\n  || echo \"zeroci: could not queue a job\" >&2\nexit 0\n"
        );
        written.push(write_hook(&hooks_dir.join("post-commit"), &post_commit)?);
    }
    for hook in written {
        eprintln!("installed {}", hook.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_hook(path: &Path, script: &str) -> anyhow::Result<PathBuf> {
    if let Ok(existing) = std::fs::read_to_string(path)
        && !existing.contains(MARKER)
    {
        return Err(anyhow!(
            "{} exists and was not written by zeroci; add this line to it instead:\n{}",
            path.display(),
            script
                .lines()
                .filter(|l| l.contains("--profile"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    std::fs::write(path, script).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting_survives_spaces_and_quotes() {
        assert_eq!(super::sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}

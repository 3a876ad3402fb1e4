//! Command-line syntax (clap derive). Parsing only: what the commands do lives in `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A job status word for `jobs --status`, checked here so a typo is caught, not answered with an
/// empty list. The words are the control API's own (see `zeroci::words`).
fn job_status(word: &str) -> Result<zeroci::pb::JobStatus, String> {
    zeroci::pb::JobStatus::from_word(word).ok_or_else(|| {
        let words: Vec<String> = zeroci::pb::JobStatus::ALL
            .iter()
            .map(|s| s.word())
            .collect();
        format!("use one of {}", words.join(", "))
    })
}

/// zeroci: submit, follow and inspect ZeroCI jobs.
#[derive(Debug, Parser)]
#[command(name = "zeroci", version, about, propagate_version = true)]
pub struct Args {
    /// CLI profile (controller address and certificates). Default: $ZEROCI_PROFILE,
    /// ./.zeroci/cli.toml, then ~/.config/zeroci/cli.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub profile: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a job for a git repository and follow its output live.
    ///
    /// Exit status: 0 success, 1 failure, 2 error, 3 cancelled, 4 could not submit or follow.
    Run(RunArgs),
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show one job and its steps.
    Show(ShowArgs),
    /// Print a job's output.
    Logs(LogsArgs),
    /// Cancel a queued or running job.
    Cancel(CancelArgs),
    /// The agents connected now, with their job, and the pool hosts joined; join tokens.
    Agents(AgentsArgs),
    /// Download a file a job kept (the pipeline's `bin_path`).
    Artifact(ArtifactArgs),
    /// Run a job again: same repository, commit and settings.
    Rerun(RerunArgs),
    /// Connect a local repository to ZeroCI with git hooks.
    Hook(HookArgs),
    /// Test suites on a timetable: add, list, show, remove, run now, pause, resume.
    Schedule(ScheduleArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Check a zeroCI.yaml offline and show the plan it would run (no controller, no profile).
    ///
    /// Exit status: 0 valid, 1 invalid, 2 the file cannot be read.
    Lint(LintArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A local git repository (any directory inside it) or a URL git can clone.
    #[arg(default_value = ".", value_name = "PATH|URL")]
    pub source: String,
    /// Branch, tag or commit to test (default: HEAD).
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// Print the job id (or its JSON with --json) and return without following.
    #[arg(long)]
    pub detach: bool,
    /// Print no live output; print the final job as JSON.
    #[arg(long)]
    pub json: bool,
    /// Per-step timeout in seconds (default: the pipeline's or the controller's).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// The branch name to record for the job (default: taken from --ref or the checkout). With --repo,
    /// the branch whose latest commit is tested.
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// A GitHub repository configured on the controller (`owner/name`): test the latest commit of
    /// --branch, read from GitHub by the controller, instead of a local path or URL.
    #[arg(long, value_name = "OWNER/NAME", requires = "branch")]
    pub repo: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RerunArgs {
    /// Job id (or its result URL) to run again: same repository, commit and settings.
    #[arg(value_name = "JOB", value_parser = parse_job_id)]
    pub job: u64,
    /// Print the new job's id (or its JSON with --json) and return without following.
    #[arg(long)]
    pub detach: bool,
    /// Print no live output; print the final job as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct HookArgs {
    #[command(subcommand)]
    pub command: HookCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum HookCommand {
    /// Install git hooks in a local repository so every commit (post-commit) or push (post-receive, bare
    /// repositories) queues a job at once, with no polling.
    Install {
        /// The repository (work tree or bare).
        #[arg(default_value = ".", value_name = "PATH")]
        path: std::path::PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule: a repository's zeroCI.yaml at the head of a branch, or install and test
    /// commands with no repository.
    Add(ScheduleAddArgs),
    /// List the schedules.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show a schedule and its latest runs.
    Show {
        #[arg(value_name = "NAME")]
        name: String,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule (its runs stay).
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Start a run now and follow it, like `run`.
    Run {
        #[arg(value_name = "NAME")]
        name: String,
        /// Print the job id and return without following.
        #[arg(long)]
        detach: bool,
        /// Print no live output; print the final job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop firing until resumed.
    Pause {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Fire again, from the next tick on (ticks while paused get no run).
    Resume {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ScheduleAddArgs {
    /// Unique name: letters, digits and `._-@:/+`.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Cron expression: `MIN HOUR DAY MONTH WEEKDAY`, or with seconds first; `@daily` and the like.
    #[arg(long, value_name = "EXPR")]
    pub cron: String,
    /// The time zone the expression is read in (IANA name such as Europe/Amsterdam; default UTC).
    #[arg(long = "tz", value_name = "ZONE")]
    pub time_zone: Option<String>,
    /// The repository to test: a local path, a URL git clones, or a GitHub repository configured on
    /// the controller (`owner/name`).
    #[arg(long, value_name = "PATH|URL|OWNER/NAME", conflicts_with_all = ["install", "test", "image"])]
    pub repo: Option<String>,
    /// With --repo: the branch whose head each run tests (default: the repository's default branch).
    #[arg(long = "ref", value_name = "REF", requires = "repo")]
    pub git_ref: Option<String>,
    /// An install command (repeat for more); runs as one step that stops at the first failure.
    #[arg(long, value_name = "CMD")]
    pub install: Vec<String>,
    /// A test command (repeat for more), one step each.
    #[arg(long, value_name = "CMD", required_unless_present = "repo")]
    pub test: Vec<String>,
    /// The machine image for commands (`prerequisites: {image_name}`).
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// Per-step timeout in seconds (default: the pipeline's or the controller's).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Start a run even while the previous one is still going (default: skip that tick).
    #[arg(long)]
    pub allow_overlap: bool,
    /// Print the schedule as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Only jobs of this repository (display name or URL).
    #[arg(long, value_name = "R")]
    pub repo: Option<String>,
    /// Only jobs with this status.
    #[arg(long, value_name = "S", value_parser = job_status)]
    pub status: Option<zeroci::pb::JobStatus>,
    /// At most this many jobs (default 50).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Print a JSON array of jobs.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Job id (or its result URL).
    #[arg(value_name = "JOB", value_parser = parse_job_id)]
    pub job: u64,
    /// Print the job as one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Job id (or its result URL).
    #[arg(value_name = "JOB", value_parser = parse_job_id)]
    pub job: u64,
    /// Keep printing until the job is over.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print exactly the bytes the commands wrote, nothing added.
    #[arg(long)]
    pub raw: bool,
    /// Only this step: its index, or its name (exact or a unique prefix).
    #[arg(long, value_name = "N|NAME", value_parser = parse_step_selector)]
    pub step: Option<StepSelector>,
}

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// Job id (or its result URL).
    #[arg(value_name = "JOB", value_parser = parse_job_id)]
    pub job: u64,
}

#[derive(Debug, clap::Args)]
pub struct ArtifactArgs {
    /// Job id (or its result URL).
    #[arg(value_name = "JOB", value_parser = parse_job_id)]
    pub job: u64,
    /// The artifact's name as in `zeroci show` (default: the job's last artifact).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Where to write it: a file, or `-` for stdout (default: its file name, in the current directory).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// Print JSON: `{"agents": [...], "pool_hosts": [...]}`.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<AgentsCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentsCommand {
    /// Join tokens, which hosts join the pool with (`zeroci-agent join --token`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a join token; it is shown once.
    Create {
        /// Names the token (letters, digits, `._-`).
        name: String,
        /// Also write the controller's CA certificate here, for `zeroci-agent join --ca`.
        #[arg(long, value_name = "FILE")]
        write_ca: Option<std::path::PathBuf>,
        /// Print JSON: `{"token", "name", "id", "created_at"}`.
        #[arg(long)]
        json: bool,
    },
    /// List the join tokens (never their secrets).
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token: hosts that joined with it are dropped and cannot join again.
    Revoke {
        /// The token's name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to generate for.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// A zeroCI.yaml file, or a directory whose zeroCI.yaml is read.
    #[arg(default_value = ".", value_name = "PATH")]
    pub path: PathBuf,
    /// Print one JSON document: valid, jobs, run_on, errors, warnings.
    #[arg(long)]
    pub json: bool,
}

/// `--step N|NAME`: a number is the step index, anything else a name looked up in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepSelector {
    Index(u32),
    Name(String),
}

pub fn parse_step_selector(s: &str) -> Result<StepSelector, String> {
    if s.is_empty() {
        return Err("a step index or name is required".to_string());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(StepSelector::Index)
            .map_err(|_| format!("step index {s} is too large"));
    }
    Ok(StepSelector::Name(s.to_string()))
}

/// A job id, also accepted as `#7` or as the result URL `<domain>/jobs/7` people copy from notifications.
pub fn parse_job_id(s: &str) -> Result<u64, String> {
    let trimmed = s.trim().trim_end_matches('/');
    let candidate = match trimmed.rsplit_once("/jobs/") {
        Some((_, tail)) => tail,
        None => trimmed.strip_prefix('#').unwrap_or(trimmed),
    };
    candidate
        .parse()
        .map_err(|_| format!("{s:?} is not a job id (a number such as 7, or a job URL)"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let args = Args::try_parse_from(["zeroci", "run"]).unwrap();
        let Command::Run(run) = args.command else {
            panic!("not run")
        };
        assert_eq!(run.source, ".");
        assert_eq!(run.git_ref, None);
        assert!(!run.detach && !run.json);
        assert_eq!(run.timeout, None);
    }

    #[test]
    fn run_with_everything() {
        let args = Args::try_parse_from([
            "zeroci",
            "--profile",
            "/p.toml",
            "run",
            "https://x/y.git",
            "--ref",
            "main",
            "--detach",
            "--json",
            "--timeout",
            "30",
        ])
        .unwrap();
        assert_eq!(args.profile, Some(PathBuf::from("/p.toml")));
        let Command::Run(run) = args.command else {
            panic!("not run")
        };
        assert_eq!(run.source, "https://x/y.git");
        assert_eq!(run.git_ref.as_deref(), Some("main"));
        assert!(run.detach && run.json);
        assert_eq!(run.timeout, Some(30));
    }

    #[test]
    fn profile_is_global() {
        let args = Args::try_parse_from(["zeroci", "jobs", "--profile", "a.toml"]).unwrap();
        assert_eq!(args.profile, Some(PathBuf::from("a.toml")));
    }

    #[test]
    fn zero_timeout_is_refused() {
        assert!(Args::try_parse_from(["zeroci", "run", "--timeout", "0"]).is_err());
    }

    #[test]
    fn jobs_status_is_checked() {
        let args = Args::try_parse_from([
            "zeroci", "jobs", "--status", "failure", "--limit", "5", "--json",
        ])
        .unwrap();
        let Command::Jobs(jobs) = args.command else {
            panic!("not jobs")
        };
        assert_eq!(jobs.status, Some(zeroci::pb::JobStatus::Failure));
        assert_eq!(jobs.limit, Some(5));
        assert!(jobs.json);
        assert!(Args::try_parse_from(["zeroci", "jobs", "--status", "failed"]).is_err());
    }

    #[test]
    fn logs_arguments() {
        let args = Args::try_parse_from(["zeroci", "logs", "12", "-f", "--raw", "--step", "unit"])
            .unwrap();
        let Command::Logs(logs) = args.command else {
            panic!("not logs")
        };
        assert_eq!(logs.job, 12);
        assert!(logs.follow && logs.raw);
        assert_eq!(logs.step, Some(StepSelector::Name("unit".into())));
        let args = Args::try_parse_from(["zeroci", "logs", "12", "--step", "3"]).unwrap();
        let Command::Logs(logs) = args.command else {
            panic!("not logs")
        };
        assert_eq!(logs.step, Some(StepSelector::Index(3)));
    }

    #[test]
    fn step_selector_parsing() {
        assert_eq!(parse_step_selector("0"), Ok(StepSelector::Index(0)));
        assert_eq!(parse_step_selector("17"), Ok(StepSelector::Index(17)));
        assert_eq!(
            parse_step_selector("unit"),
            Ok(StepSelector::Name("unit".into()))
        );
        assert_eq!(
            parse_step_selector("1a"),
            Ok(StepSelector::Name("1a".into()))
        );
        assert_eq!(
            parse_step_selector("-1"),
            Ok(StepSelector::Name("-1".into()))
        );
        assert!(parse_step_selector("").is_err());
        assert!(parse_step_selector("99999999999").is_err());
    }

    #[test]
    fn job_id_parsing() {
        assert_eq!(parse_job_id("7"), Ok(7));
        assert_eq!(parse_job_id("#7"), Ok(7));
        assert_eq!(parse_job_id("https://ci.example.com/jobs/42"), Ok(42));
        assert_eq!(parse_job_id("https://ci.example.com/jobs/42/"), Ok(42));
        assert!(parse_job_id("seven").is_err());
        assert!(parse_job_id("-1").is_err());
        assert!(Args::try_parse_from(["zeroci", "show", "x"]).is_err());
    }

    #[test]
    fn lint_arguments() {
        let args = Args::try_parse_from(["zeroci", "lint"]).unwrap();
        let Command::Lint(lint) = args.command else {
            panic!("not lint")
        };
        assert_eq!(lint.path, PathBuf::from("."));
        assert!(!lint.json);
        let args = Args::try_parse_from(["zeroci", "lint", "ci/zeroCI.yaml", "--json"]).unwrap();
        let Command::Lint(lint) = args.command else {
            panic!("not lint")
        };
        assert_eq!(lint.path, PathBuf::from("ci/zeroCI.yaml"));
        assert!(lint.json);
    }

    #[test]
    fn completions_shells() {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            assert!(
                Args::try_parse_from(["zeroci", "completions", shell]).is_ok(),
                "{shell}"
            );
        }
        assert!(Args::try_parse_from(["zeroci", "completions", "tcsh"]).is_err());
    }
}

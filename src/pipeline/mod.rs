//! The `zeroCI.yaml` pipeline file: parsing, validation and the diagnostics `zeroci lint` prints.
//!
//! Every variant the original ZeroCI accepted at some point is read (see `schema.rs` for the rules):
//! the list form (`prequisties` legacy list or `prerequisites` map, `install` list, `script` list of
//! commands), the single-job form (`prerequisites: {image_name | imageName}`, `install` string,
//! `script` list of `{name, cmd}`, `bin_path`), the `jobs` form (at most [`MAX_JOBS`] jobs with
//! `name`, `prerequisites`, `install`, `script`, `bin_path` and our `timeout`), and `run_on`.
//!
//! The controller and the CLI share this code so a job's `zeroCI.yaml` step and `zeroci lint` say the
//! same thing. Checking never stops at the first problem: every error and warning is collected, each
//! with its line, column and key path. Only YAML syntax errors and the resource limits (file size,
//! nesting, alias expansion) end the reading early.

use std::fmt;

mod run_on;
mod schema;
mod yaml;

#[cfg(test)]
mod tests;

/// The file's name at the repository root.
pub const FILE_NAME: &str = "zeroCI.yaml";
/// Files larger than this are refused before parsing, by the agent (which does not send them) and
/// by `lint` alike: a pipeline is a few hundred bytes, and the limit bounds the parser's work.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// The original ZeroCI ran at most three jobs per commit.
pub const MAX_JOBS: usize = 3;
/// At most this many errors, and as many warnings, are kept; a summary line counts the rest. A
/// generated file can hold thousands of the same mistake, and one screen of them is enough.
pub const MAX_DIAGNOSTICS: usize = 100;

/// A parsed, validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Jobs in the order they run.
    pub jobs: Vec<PipelineJob>,
    /// The `run_on` section, validated and normalised (`{"push": {"branches": [..]}, "schedule":
    /// {"branch": .., "cron": ..}, ..}`; unknown keys dropped), when present.
    pub run_on: Option<serde_json::Value>,
}

/// `run_on.schedule`: the branch a repository wants built on a timetable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleTrigger {
    pub branch: String,
    pub cron: String,
    /// An IANA zone name; `UTC` when the file names none.
    pub timezone: String,
}

impl Pipeline {
    /// Why `run_on` does not start the pipeline for `event` (`push`, `pull_request`) on `branch` (the
    /// pushed branch, or a pull request's base); `None` when it does, or when the file has no `run_on`.
    pub fn run_on_excludes(&self, event: &str, branch: &str) -> Option<String> {
        let run_on = self.run_on.as_ref()?;
        let Some(rule) = run_on.get(event) else {
            return Some(format!("run_on has no `{event}` trigger"));
        };
        let listed = rule
            .get("branches")
            .and_then(|b| b.as_array())
            .is_some_and(|list| list.iter().any(|b| b.as_str() == Some(branch)));
        (!listed).then(|| format!("run_on.{event}.branches does not include {branch}"))
    }

    /// The valid `run_on.schedule`, if the file has one.
    pub fn schedule(&self) -> Option<ScheduleTrigger> {
        let schedule = self.run_on.as_ref()?.get("schedule")?;
        let text = |key: &str| schedule.get(key)?.as_str().map(str::to_string);
        Some(ScheduleTrigger {
            branch: text("branch")?,
            cron: text("cron")?,
            timezone: text("timezone").unwrap_or_else(|| crate::cron::DEFAULT_TIME_ZONE.into()),
        })
    }
}

/// One job: an install script, then script steps, in one machine.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineJob {
    pub name: String,
    pub image_name: Option<String>,
    pub shell_bin: Option<String>,
    /// What the job asks of its machine (`prerequisites: {cpus, memory_mb, pids}`).
    pub resources: crate::resources::Resources,
    /// What a pool host must offer to run it (`prerequisites.labels`); empty: any host.
    pub labels: Vec<String>,
    /// Install commands in order (the list form's items, or the install string as one element); run
    /// as one step that stops at the first failure.
    pub install: Vec<String>,
    pub steps: Vec<ScriptStep>,
    /// Seconds per step.
    pub timeout_secs: Option<u64>,
    pub bin_path: Option<String>,
}

/// One script step.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptStep {
    pub name: String,
    pub cmd: String,
}

/// One problem in the file: where (1-based line and column, in characters), which key, and what was
/// expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    /// Key path such as `jobs[1].script[0].cmd`; empty when the whole file is at fault.
    pub key: String,
    pub message: String,
}

/// Errors make the file unusable; warnings (unknown keys, ignored values) do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Diagnostic {
    pub(crate) fn new(
        line: usize,
        column: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// `FILE:LINE:COLUMN: KEY: MESSAGE` for errors and `FILE:LINE:COLUMN: warning: KEY: MESSAGE` for
    /// warnings (`KEY: ` left out when the whole file is at fault), the shape editors and terminals
    /// recognise as a location.
    pub fn render(&self, file: &str, severity: Severity) -> String {
        let mut out = format!("{file}:{}:{}: ", self.line, self.column);
        if severity == Severity::Warning {
            out.push_str("warning: ");
        }
        if !self.key.is_empty() {
            out.push_str(&self.key);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "line": self.line,
            "column": self.column,
            "key": self.key,
            "message": self.message,
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(FILE_NAME, Severity::Error))
    }
}

/// Why a pipeline file was refused: every error, then every warning (they often explain the error:
/// a misspelt `scrpt` is a warning, the missing `script` the error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct PipelineErrors {
    /// Never empty.
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl PipelineErrors {
    /// One line per error, then one per warning, as `lint` prints them for `file`.
    pub fn render(&self, file: &str) -> String {
        render_all(&self.errors, &self.warnings, file)
    }
}

impl fmt::Display for PipelineErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(FILE_NAME))
    }
}

fn render_all(errors: &[Diagnostic], warnings: &[Diagnostic], file: &str) -> String {
    let errors = errors.iter().map(|d| d.render(file, Severity::Error));
    let warnings = warnings.iter().map(|d| d.render(file, Severity::Warning));
    errors.chain(warnings).collect::<Vec<_>>().join("\n")
}

/// What `zeroci lint` reports: the plan when the file is valid, and every error and warning.
#[derive(Debug, Clone, PartialEq)]
pub struct LintReport {
    /// `Some` exactly when there are no errors.
    pub pipeline: Option<Pipeline>,
    /// Sorted by position.
    pub errors: Vec<Diagnostic>,
    /// Sorted by position.
    pub warnings: Vec<Diagnostic>,
}

impl LintReport {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    /// Error and warning lines as printed for `file` (empty when there are none).
    pub fn render_diagnostics(&self, file: &str) -> String {
        render_all(&self.errors, &self.warnings, file)
    }

    /// `{"valid", "jobs": [{"name", "image_name", "shell_bin", "resources", "labels", "timeout", "install", "steps": [{"name",
    /// "cmd"}], "bin_path"}], "run_on", "errors": [{"line", "column", "key", "message"}], "warnings"}`.
    /// An invalid file has no plan: `jobs` is empty and `run_on` null.
    pub fn to_json(&self) -> serde_json::Value {
        let (jobs, run_on) = match &self.pipeline {
            Some(p) => (p.jobs.iter().map(job_json).collect(), p.run_on.clone()),
            None => (Vec::new(), None),
        };
        serde_json::json!({
            "valid": self.is_valid(),
            "jobs": jobs,
            "run_on": run_on,
            "errors": self.errors.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
            "warnings": self.warnings.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
        })
    }

    /// The pipeline, or everything wrong with the file.
    pub fn into_result(self) -> Result<Pipeline, PipelineErrors> {
        match self.pipeline {
            Some(pipeline) if self.errors.is_empty() => Ok(pipeline),
            _ => Err(PipelineErrors {
                errors: self.errors,
                warnings: self.warnings,
            }),
        }
    }
}

fn job_json(job: &PipelineJob) -> serde_json::Value {
    serde_json::json!({
        "name": job.name,
        "image_name": job.image_name,
        "shell_bin": job.shell_bin,
        "resources": job.resources,
        "labels": job.labels,
        "timeout": job.timeout_secs,
        "install": job.install,
        "steps": job.steps.iter().map(|s| serde_json::json!({"name": s.name, "cmd": s.cmd})).collect::<Vec<_>>(),
        "bin_path": job.bin_path,
    })
}

/// Parses and validates a pipeline file: the pipeline, or every error (and the warnings beside them).
pub fn parse(text: &[u8]) -> Result<Pipeline, PipelineErrors> {
    lint(text).into_result()
}

/// The error for a file the agent did not send because it is larger than [`MAX_FILE_BYTES`]; the
/// same words `lint` uses.
pub fn too_large() -> PipelineErrors {
    PipelineErrors {
        errors: vec![too_large_diagnostic()],
        warnings: Vec::new(),
    }
}

fn too_large_diagnostic() -> Diagnostic {
    Diagnostic::new(
        1,
        1,
        "",
        format!("file is larger than {MAX_FILE_BYTES} bytes, the limit for a pipeline file"),
    )
}

/// Checks a pipeline file: never panics, and bounded in time and memory by [`MAX_FILE_BYTES`].
pub fn lint(text: &[u8]) -> LintReport {
    let mut checker = schema::Checker::default();
    let pipeline = check_bytes(text, &mut checker);
    let (errors, warnings) = checker.finish();
    LintReport {
        pipeline: pipeline.filter(|_| errors.is_empty()),
        errors,
        warnings,
    }
}

fn check_bytes(text: &[u8], checker: &mut schema::Checker) -> Option<Pipeline> {
    if text.len() > MAX_FILE_BYTES {
        checker.push_error(too_large_diagnostic());
        return None;
    }
    let text = match std::str::from_utf8(text) {
        Ok(text) => text,
        Err(e) => {
            let (line, column) = line_column(&text[..e.valid_up_to()]);
            checker.push_error(Diagnostic::new(
                line,
                column,
                "",
                "file is not UTF-8 text: invalid byte here",
            ));
            return None;
        }
    };
    match yaml::load(text) {
        Ok(Some(root)) => Some(schema::check(&root, checker)),
        Ok(None) => {
            checker.push_error(Diagnostic::new(
                1,
                1,
                "",
                "file is empty: expected a mapping with `script` (or `jobs`) at the top level",
            ));
            None
        }
        Err(diagnostic) => {
            checker.push_error(diagnostic);
            None
        }
    }
}

/// 1-based line and column (in characters) just after `before`, which is valid UTF-8 up to its end.
fn line_column(before: &[u8]) -> (usize, usize) {
    let text = String::from_utf8_lossy(before);
    let line = 1 + text.matches('\n').count();
    let column = 1 + text
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count());
    (line, column)
}

//! `zeroci lint [PATH] [--json]`: checks a zeroCI.yaml with the controller's own parser, offline, and
//! shows the plan it would run or everything wrong with it.
//!
//! Its exit statuses are those of a linter, not of a job: 0 valid, 1 invalid, 2 the file cannot be
//! read. Diagnostics go to stdout (they are the command's product); only "cannot read" goes to stderr.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use zeroci::pipeline::{self, LintReport, Pipeline, PipelineJob};

use crate::args::LintArgs;
use crate::display::{eprint_line, print_json, write_stdout};

/// The file is valid.
pub const LINT_VALID: u8 = 0;
/// The file was read and has errors (warnings alone do not count).
pub const LINT_INVALID: u8 = 1;
/// The file cannot be read: missing, a directory without zeroCI.yaml, no permission.
pub const LINT_UNREADABLE: u8 = 2;

pub fn lint(args: LintArgs) -> anyhow::Result<ExitCode> {
    let (file, shown) = target(&args.path);
    let text = match read_bounded(&file) {
        Ok(text) => text,
        Err(e) => {
            eprint_line(&format!("zeroci: cannot read {}: {e}", file.display()));
            return Ok(ExitCode::from(LINT_UNREADABLE));
        }
    };
    let report = pipeline::lint(&text);
    if args.json {
        print_json(&report.to_json())?;
    } else {
        write_stdout(human(&report, &shown).as_bytes())?;
    }
    Ok(ExitCode::from(if report.is_valid() {
        LINT_VALID
    } else {
        LINT_INVALID
    }))
}

/// The file to read, and the name diagnostics use: `zeroCI.yaml` for the current directory (so the
/// lines read exactly as the controller's), otherwise the path as given, which terminals and editors
/// can open at the line.
fn target(path: &Path) -> (PathBuf, String) {
    if path.is_dir() {
        let file = path.join(pipeline::FILE_NAME);
        let shown = if path == Path::new(".") {
            pipeline::FILE_NAME.to_string()
        } else {
            file.display().to_string()
        };
        (file, shown)
    } else {
        (path.to_path_buf(), path.display().to_string())
    }
}

/// Reads at most one byte more than the parser accepts: enough to know the file is too large without
/// holding a huge one (or an endless device) in memory.
fn read_bounded(file: &Path) -> std::io::Result<Vec<u8>> {
    let limit = u64::try_from(pipeline::MAX_FILE_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut text = Vec::new();
    std::fs::File::open(file)?
        .take(limit)
        .read_to_end(&mut text)?;
    Ok(text)
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Diagnostics first (errors, then warnings), a summary line, then the plan when there is one.
fn human(report: &LintReport, file: &str) -> String {
    let mut out = report.render_diagnostics(file);
    if !out.is_empty() {
        out.push('\n');
    }
    let warnings = report.warnings.len();
    match &report.pipeline {
        Some(pipeline) if report.is_valid() => {
            let mut summary = format!("{file} is valid: {}", plural(pipeline.jobs.len(), "job"));
            if warnings > 0 {
                summary.push_str(&format!(", {}", plural(warnings, "warning")));
            }
            out.push_str(&summary);
            out.push('\n');
            plan(&mut out, pipeline);
        }
        _ => {
            let errors = plural(report.errors.len(), "error");
            let tail = if warnings > 0 {
                format!(", {}", plural(warnings, "warning"))
            } else {
                String::new()
            };
            out.push_str(&format!("{file} is invalid: {errors}{tail}\n"));
        }
    }
    out
}

fn plan(out: &mut String, pipeline: &Pipeline) {
    for (i, job) in pipeline.jobs.iter().enumerate() {
        out.push_str(&format!("\njob {}: {}\n", i + 1, job.name));
        job_plan(out, job);
    }
    out.push_str("\ntriggers:");
    match pipeline.run_on.as_ref().and_then(|r| r.as_object()) {
        None => out.push_str(" none in the file (no `run_on`)\n"),
        Some(run_on) => {
            out.push('\n');
            for trigger in ["push", "pull_request", "manual"] {
                if let Some(branches) = run_on.get(trigger).and_then(|t| t["branches"].as_array()) {
                    let names: Vec<&str> = branches.iter().filter_map(|b| b.as_str()).collect();
                    out.push_str(&format!("  {trigger:<13} branches {}\n", names.join(", ")));
                }
            }
            if let Some(schedule) = run_on.get("schedule") {
                let branch = schedule["branch"].as_str().unwrap_or("");
                let cron = schedule["cron"].as_str().unwrap_or("");
                out.push_str(&format!(
                    "  {:<13} branch {branch}, cron \"{cron}\"\n",
                    "schedule"
                ));
            }
        }
    }
}

fn job_plan(out: &mut String, job: &PipelineJob) {
    let or_default =
        |value: &Option<String>| value.clone().unwrap_or_else(|| "(default)".to_string());
    out.push_str(&format!("  image:    {}\n", or_default(&job.image_name)));
    out.push_str(&format!("  shell:    {}\n", or_default(&job.shell_bin)));
    let timeout = job.timeout_secs.map_or_else(
        || "(the controller's default)".to_string(),
        |s| format!("{s} s per step"),
    );
    out.push_str(&format!("  timeout:  {timeout}\n"));
    if let Some(bin_path) = &job.bin_path {
        out.push_str(&format!("  bin_path: {bin_path}\n"));
    }
    if !job.labels.is_empty() {
        out.push_str(&format!(
            "  labels:   {} (a pool host must offer all)\n",
            job.labels.join(", ")
        ));
    }
    if job.install.is_empty() {
        out.push_str("  install:  (none)\n");
    } else {
        out.push_str("  install:\n");
        for command in &job.install {
            indented(out, command, "    ");
        }
    }
    out.push_str("  steps:\n");
    for (i, step) in job.steps.iter().enumerate() {
        // List-form steps are named after their command; say it once.
        if step.name == step.cmd && !step.cmd.trim_end().contains('\n') {
            out.push_str(&format!("    {}. {}\n", i + 1, step.cmd.trim_end()));
        } else {
            out.push_str(&format!("    {}. {}\n", i + 1, step.name));
            indented(out, &step.cmd, "       $ ");
        }
    }
}

/// Each line of a (possibly multi-line) script, after `prefix` on the first and as many spaces on the
/// others.
fn indented(out: &mut String, script: &str, prefix: &str) {
    let blank = " ".repeat(prefix.chars().count());
    for (i, line) in script.trim_end().lines().enumerate() {
        out.push_str(if i == 0 { prefix } else { &blank });
        out.push_str(line);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_shows_jobs_steps_and_triggers() {
        let text = b"jobs:\n  - name: tests\n    prerequisites: {image_name: ubuntu:22.04}\n    install: |\n      apt-get update\n      apt-get install -y make\n    script:\n      - name: unit\n        cmd: make test\n      - make lint\n    timeout: 60\nrun_on:\n  push: {branches: [main, dev]}\n  schedule: {branch: main, cron: \"0 2 * * *\"}\n";
        let out = human(&pipeline::lint(text), "zeroCI.yaml");
        let expected = "zeroCI.yaml is valid: 1 job

job 1: tests
  image:    ubuntu:22.04
  shell:    (default)
  timeout:  60 s per step
  install:
    apt-get update
    apt-get install -y make
  steps:
    1. unit
       $ make test
    2. make lint

triggers:
  push          branches main, dev
  schedule      branch main, cron \"0 2 * * *\"
";
        assert_eq!(out, expected);
    }

    #[test]
    fn plan_shows_the_labels_a_job_asks_for() {
        let text = b"prerequisites: {labels: [linux, gpu]}\nscript: [true]\n";
        let out = human(&pipeline::lint(text), "zeroCI.yaml");
        assert!(
            out.contains("  labels:   linux, gpu (a pool host must offer all)\n"),
            "{out}"
        );
    }

    #[test]
    fn invalid_file_shows_every_error_and_a_summary() {
        let out = human(&pipeline::lint(b"scrpt: [a]\ntimeout: 0\n"), "ci.yaml");
        assert_eq!(
            out,
            "ci.yaml:1:1: script: is required: a list of commands to run\n\
             ci.yaml:2:10: timeout: must be a positive number of seconds, found 0\n\
             ci.yaml:1:1: warning: scrpt: unknown key, ignored; did you mean `script`?\n\
             ci.yaml is invalid: 2 errors, 1 warning\n"
        );
    }
}

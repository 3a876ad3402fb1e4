//! Printing a job's log as it streams: output bytes, step headers, a spinner, the final summary line.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use zeroci::pb::{self, log_event};

use crate::render::{elapsed_ms, format_duration};

/// Writes all of `bytes` to stdout and flushes, so output appears as soon as the command wrote it.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// A line on stderr. Failing to write a diagnostic is not worth failing the command for.
pub fn eprint_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Prints a JSON document (pretty, newline-terminated) on stdout.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(write_stdout(text.as_bytes())?)
}

/// Whether `err` comes from writing to a closed pipe (`zeroci logs 1 | head`): the reader has what it
/// wanted, so the command ends quietly.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Receives what the log stream carries (everything but `JobDone`, which ends the stream).
pub trait EventSink {
    fn event(&mut self, kind: &log_event::Kind) -> anyhow::Result<()>;
    /// Something about the connection worth telling the user (lost, reconnected).
    fn notice(&mut self, message: &str);
}

/// Ignores everything: `run --json` waits silently for the end.
pub struct Silent;

impl EventSink for Silent {
    fn event(&mut self, _kind: &log_event::Kind) -> anyhow::Result<()> {
        Ok(())
    }
    fn notice(&mut self, _message: &str) {}
}

/// Where step headers go: stderr for `run` (stdout carries the commands' output), stdout for `logs`
/// (the log is the product).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headers {
    None,
    Stdout,
    Stderr,
}

/// Prints a job's log for people (or raw).
pub struct LogPrinter {
    headers: Headers,
    /// Unicode symbols instead of plain ASCII markers (the header stream is a terminal).
    fancy: bool,
    color: bool,
    spinner: Option<Spinner>,
    stdout_tty: bool,
    /// `run` keeps following after stdout closes, so the exit status still reports the job.
    tolerate_closed_stdout: bool,
    stdout_closed: bool,
    /// The last output byte written was not a newline.
    mid_line: bool,
}

impl LogPrinter {
    /// `logs --raw`: output bytes only, exactly.
    pub fn raw() -> LogPrinter {
        LogPrinter::new(Headers::None, false, false)
    }

    /// `logs`: headers and output on stdout.
    pub fn logs() -> LogPrinter {
        let tty = std::io::stdout().is_terminal();
        LogPrinter::new(Headers::Stdout, tty, false)
    }

    /// `run`: output on stdout, headers, spinner and summary on stderr.
    pub fn run() -> LogPrinter {
        let tty = std::io::stderr().is_terminal();
        let mut printer = LogPrinter::new(Headers::Stderr, tty, true);
        if tty {
            printer.spinner = Some(Spinner::new());
            printer.refresh_spinner();
        }
        printer
    }

    fn new(headers: Headers, fancy: bool, tolerate_closed_stdout: bool) -> LogPrinter {
        LogPrinter {
            headers,
            fancy,
            color: fancy && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            spinner: None,
            stdout_tty: std::io::stdout().is_terminal(),
            tolerate_closed_stdout,
            stdout_closed: false,
            mid_line: false,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn started_line(&self, step: &pb::StepInfo) -> String {
        if self.fancy {
            format!("{} {}", self.paint("36", "▶"), self.paint("1", &step.name))
        } else {
            format!("==> {}", step.name)
        }
    }

    fn finished_line(&self, step: &pb::StepInfo) -> String {
        let what = match step.exit_code {
            Some(code) => format!("exit {code}"),
            None => step.status().word(),
        };
        let took = (step.finished_at_unix_ms > 0)
            .then(|| elapsed_ms(step.started_at_unix_ms, step.finished_at_unix_ms, 0))
            .flatten()
            .map(format_duration);
        let message = match step.message.lines().next() {
            Some(m) if !m.is_empty() => format!(": {m}"),
            _ => String::new(),
        };
        if self.fancy {
            let mark = if step.status() == pb::StepStatus::Success {
                self.paint("32", "✔")
            } else {
                self.paint("31", "✘")
            };
            let detail = match took {
                Some(t) => format!("{what}, {t}"),
                None => what,
            };
            format!("{mark} {} ({detail}){message}", self.paint("1", &step.name))
        } else {
            let took = took.map(|t| format!(" ({t})")).unwrap_or_default();
            format!("<== {}: {what}{took}{message}", step.name)
        }
    }

    /// `job 7 success in 3.2s — <url>`, plus the reason when there is one.
    pub fn summary_lines(job: &pb::Job) -> Vec<String> {
        let ms = elapsed_ms(
            job.started_at_unix_ms,
            job.finished_at_unix_ms,
            zeroci::now_unix_ms(),
        )
        .or_else(|| {
            elapsed_ms(
                job.created_at_unix_ms,
                job.finished_at_unix_ms,
                zeroci::now_unix_ms(),
            )
        })
        .unwrap_or(0);
        let mut line = format!(
            "job {} {} in {}",
            job.id,
            job.status().word(),
            format_duration(ms)
        );
        if !job.url.is_empty() {
            line.push_str(" — ");
            line.push_str(&job.url);
        }
        let mut lines = vec![line];
        if !job.reason.is_empty() {
            lines.push(format!("reason: {}", job.reason));
        }
        lines
    }

    /// Prints the end-of-job summary and removes the spinner for good.
    pub fn summary(&mut self, job: &pb::Job) -> anyhow::Result<()> {
        self.finish();
        for line in Self::summary_lines(job) {
            self.header(&line)?;
        }
        Ok(())
    }

    /// Removes the spinner (end of the job, interrupt, error) and ends a partial output line on a
    /// terminal so what follows starts on a line of its own.
    pub fn finish(&mut self) {
        if let Some(mut spinner) = self.spinner.take() {
            spinner.hide();
        }
        if self.headers == Headers::Stderr
            && self.mid_line
            && self.stdout_tty
            && !self.stdout_closed
        {
            let _ = write_stdout(b"\n");
            self.mid_line = false;
        }
    }

    fn refresh_spinner(&mut self) {
        // A partial line on the terminal would be overwritten by the spinner's redraws.
        let hide = self.stdout_tty && self.mid_line;
        if let Some(spinner) = self.spinner.as_mut() {
            if hide { spinner.hide() } else { spinner.show() }
        }
    }

    fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match self.spinner.as_ref().and_then(|s| s.bar.as_ref()) {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Writes to stdout, treating a closed pipe as the end (an error main turns into a quiet exit) or, for
    /// `run`, as a reason to stop printing output while still following the job.
    fn stdout_bytes(&mut self, bytes: &[u8], around_spinner: bool) -> anyhow::Result<()> {
        if self.stdout_closed {
            return Ok(());
        }
        let result = if around_spinner {
            self.suspend(|| write_stdout(bytes))
        } else {
            write_stdout(bytes)
        };
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && self.tolerate_closed_stdout => {
                self.stdout_closed = true;
                Ok(())
            }
            other => Ok(other?),
        }
    }

    fn output(&mut self, data: &[u8]) -> anyhow::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let ends_line = data.ends_with(b"\n");
        if !ends_line && self.stdout_tty {
            // Hide before writing: the partial line must not be wiped by the next redraw.
            self.mid_line = true;
            self.refresh_spinner();
        }
        self.stdout_bytes(data, self.stdout_tty)?;
        self.mid_line = !ends_line;
        self.refresh_spinner();
        Ok(())
    }

    fn header(&mut self, line: &str) -> anyhow::Result<()> {
        match self.headers {
            Headers::None => {}
            Headers::Stdout => {
                let mut text = String::with_capacity(line.len() + 2);
                if self.mid_line {
                    text.push('\n');
                }
                text.push_str(line);
                text.push('\n');
                self.stdout_bytes(text.as_bytes(), true)?;
                self.mid_line = false;
            }
            Headers::Stderr => {
                if self.mid_line && self.stdout_tty && std::io::stderr().is_terminal() {
                    // Same screen: start the header on a line of its own.
                    self.stdout_bytes(b"\n", true)?;
                    self.mid_line = false;
                }
                self.suspend(|| eprint_line(line));
            }
        }
        self.refresh_spinner();
        Ok(())
    }
}

impl EventSink for LogPrinter {
    fn event(&mut self, kind: &log_event::Kind) -> anyhow::Result<()> {
        match kind {
            log_event::Kind::Output(out) => self.output(&out.data),
            log_event::Kind::StepStarted(step) => {
                if let Some(spinner) = self.spinner.as_mut() {
                    spinner.set_message(&step.name);
                }
                let line = self.started_line(step);
                self.header(&line)
            }
            log_event::Kind::StepFinished(step) => {
                if let Some(spinner) = self.spinner.as_mut() {
                    spinner.set_message("…");
                }
                let line = self.finished_line(step);
                self.header(&line)
            }
            log_event::Kind::JobDone(_) => Ok(()),
        }
    }

    fn notice(&mut self, message: &str) {
        if self.headers == Headers::None {
            // Raw output stays exactly the command's bytes; the notice goes to stderr only.
            eprint_line(&format!("zeroci: {message}"));
            return;
        }
        self.suspend(|| eprint_line(&format!("zeroci: {message}")));
    }
}

/// The spinner line on stderr: current step and elapsed time. The bar is dropped while hidden and
/// re-created with the elapsed time carried over.
struct Spinner {
    bar: Option<ProgressBar>,
    started: Instant,
    message: String,
}

impl Spinner {
    fn new() -> Spinner {
        Spinner {
            bar: None,
            started: Instant::now(),
            message: "waiting for a machine".to_string(),
        }
    }

    fn show(&mut self) {
        if self.bar.is_some() {
            return;
        }
        let style = ProgressStyle::with_template("{spinner:.cyan} [{elapsed_precise}] {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = ProgressBar::new_spinner()
            .with_style(style)
            .with_elapsed(self.started.elapsed())
            .with_message(self.message.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    fn hide(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn set_message(&mut self, message: &str) {
        self.message = message.to_string();
        if let Some(bar) = &self.bar {
            bar.set_message(self.message.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(status: &str, exit: Option<i32>, message: &str) -> pb::StepInfo {
        pb::StepInfo {
            index: 1,
            name: "unit".into(),
            kind: pb::StepKind::Script as i32,
            status: pb::StepStatus::from_word(status).expect("a step status") as i32,
            exit_code: exit,
            started_at_unix_ms: 10_000,
            finished_at_unix_ms: 11_200,
            script: String::new(),
            message: message.into(),
            ..Default::default()
        }
    }

    fn plain() -> LogPrinter {
        LogPrinter {
            fancy: false,
            color: false,
            ..LogPrinter::new(Headers::Stdout, false, false)
        }
    }

    fn fancy() -> LogPrinter {
        LogPrinter {
            fancy: true,
            color: false,
            ..LogPrinter::new(Headers::Stdout, false, false)
        }
    }

    #[test]
    fn plain_headers() {
        let p = plain();
        assert_eq!(p.started_line(&step("running", None, "")), "==> unit");
        assert_eq!(
            p.finished_line(&step("success", Some(0), "")),
            "<== unit: exit 0 (1.2s)"
        );
        assert_eq!(
            p.finished_line(&step("error", Some(124), "timed out after 1s")),
            "<== unit: exit 124 (1.2s): timed out after 1s"
        );
        let mut skipped = step("skipped", None, "");
        skipped.started_at_unix_ms = 0;
        skipped.finished_at_unix_ms = 0;
        assert_eq!(p.finished_line(&skipped), "<== unit: skipped");
    }

    #[test]
    fn fancy_headers() {
        let p = fancy();
        assert_eq!(p.started_line(&step("running", None, "")), "▶ unit");
        assert_eq!(
            p.finished_line(&step("success", Some(0), "")),
            "✔ unit (exit 0, 1.2s)"
        );
        assert_eq!(
            p.finished_line(&step("failure", Some(1), "")),
            "✘ unit (exit 1, 1.2s)"
        );
    }

    #[test]
    fn summary() {
        let job = pb::Job {
            id: 7,
            status: pb::JobStatus::Success as i32,
            url: "http://ci/jobs/7".into(),
            created_at_unix_ms: 1_000,
            started_at_unix_ms: 2_000,
            finished_at_unix_ms: 5_200,
            ..Default::default()
        };
        assert_eq!(
            LogPrinter::summary_lines(&job),
            vec!["job 7 success in 3.2s — http://ci/jobs/7"]
        );
        let job = pb::Job {
            status: pb::JobStatus::Error as i32,
            reason: "install failed".into(),
            url: String::new(),
            ..job
        };
        assert_eq!(
            LogPrinter::summary_lines(&job),
            vec!["job 7 error in 3.2s", "reason: install failed"]
        );
    }

    #[test]
    fn broken_pipe_detection() {
        let e = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&e.context("writing")));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}

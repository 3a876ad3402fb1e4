//! The `zeroCI.yaml` pipeline file.
//!
//! Accepted now (see design.md): form 1 (`prerequisites`/legacy `prequisties`, `install` list or string,
//! `script` list) and form 2 (`jobs` with `name`, `prerequisites: {image_name, shell_bin}`, `install`
//! string, `script` items `{name, cmd}`, `timeout`). Both may carry `run_on`, which is kept for the trigger
//! issues. The parser is shared by the controller and the CLI so both report the same errors.

use serde::Deserialize;

/// The file's name at the repository root.
pub const FILE_NAME: &str = "zeroCI.yaml";
/// Files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// The original ZeroCI ran at most three jobs per commit.
pub const MAX_JOBS: usize = 3;

/// A parsed, validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Jobs in the order they run.
    pub jobs: Vec<PipelineJob>,
    /// The `run_on` section as written, when present.
    pub run_on: Option<serde_json::Value>,
}

/// One job: an install script, then script steps, in one machine.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineJob {
    pub name: String,
    pub image_name: Option<String>,
    pub shell_bin: Option<String>,
    /// Install commands in order; run as one step that stops at the first failure.
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

/// Why a pipeline file was refused: where, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", location(*.line, *.column, key))]
pub struct PipelineError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted key path, e.g. `jobs[0].script[1].cmd`; empty when the whole file is at fault.
    pub key: String,
    pub message: String,
}

fn location(line: Option<usize>, column: Option<usize>, key: &str) -> String {
    let mut out = String::from("zeroCI.yaml");
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
        if let Some(column) = column {
            out.push_str(&format!(":{column}"));
        }
    }
    if !key.is_empty() {
        out.push_str(&format!(": {key}"));
    }
    out.push_str(": ");
    out
}

impl PipelineError {
    fn whole(message: impl Into<String>) -> PipelineError {
        PipelineError { line: None, column: None, key: String::new(), message: message.into() }
    }

    fn key(key: impl Into<String>, message: impl Into<String>) -> PipelineError {
        PipelineError { line: None, column: None, key: key.into(), message: message.into() }
    }

    fn from_yaml(err: serde_yaml_ng::Error) -> PipelineError {
        let location = err.location();
        let mut message = err.to_string();
        // serde_yaml appends " at line L column C"; we report the location in its own fields.
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        PipelineError {
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            key: String::new(),
            message,
        }
    }
}

/// A command written as any YAML scalar: `- false` or `- 3` are commands too, not booleans or numbers.
struct CommandText(String);

impl<'de> Deserialize<'de> for CommandText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde_yaml_ng::Value;
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(CommandText(s)),
            Value::Bool(b) => Ok(CommandText(b.to_string())),
            Value::Number(n) => Ok(CommandText(n.to_string())),
            _ => Err(serde::de::Error::custom("expected a command (a string)")),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(CommandText),
    Many(Vec<CommandText>),
}

impl StringOrList {
    fn into_commands(self) -> Vec<String> {
        match self {
            StringOrList::One(s) if s.0.trim().is_empty() => Vec::new(),
            StringOrList::One(s) => vec![s.0],
            StringOrList::Many(v) => v.into_iter().map(|c| c.0).collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScriptItem {
    Command(CommandText),
    Named(NamedCommand),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedCommand {
    name: Option<String>,
    cmd: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Prerequisites {
    image_name: Option<String>,
    #[serde(rename = "imageName")]
    image_name_early: Option<String>,
    shell_bin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListForm {
    prerequisites: Option<Prerequisites>,
    prequisties: Option<Vec<String>>,
    install: Option<StringOrList>,
    script: Option<Vec<ScriptItem>>,
    timeout: Option<u64>,
    bin_path: Option<String>,
    run_on: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsForm {
    jobs: Vec<JobEntry>,
    run_on: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    name: Option<String>,
    prerequisites: Option<Prerequisites>,
    install: Option<StringOrList>,
    script: Option<Vec<ScriptItem>>,
    timeout: Option<u64>,
    bin_path: Option<String>,
}

/// Parses and validates a pipeline file.
pub fn parse(text: &[u8]) -> Result<Pipeline, PipelineError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(PipelineError::whole(format!(
            "file is {} bytes; the limit is {MAX_FILE_BYTES}",
            text.len()
        )));
    }
    let text = std::str::from_utf8(text)
        .map_err(|e| PipelineError::whole(format!("file is not UTF-8 text: {e}")))?;
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(PipelineError::from_yaml)?;
    let mapping = match &value {
        serde_yaml_ng::Value::Mapping(m) => m,
        serde_yaml_ng::Value::Null => return Err(PipelineError::whole("file is empty")),
        _ => return Err(PipelineError::whole("expected a mapping with `script` or `jobs` at the top level")),
    };
    let (jobs, run_on) = if mapping.contains_key("jobs") {
        let form: JobsForm = serde_yaml_ng::from_str(text).map_err(PipelineError::from_yaml)?;
        if form.jobs.is_empty() {
            return Err(PipelineError::key("jobs", "at least one job is required"));
        }
        if form.jobs.len() > MAX_JOBS {
            return Err(PipelineError::key("jobs", format!("at most {MAX_JOBS} jobs are allowed, found {}", form.jobs.len())));
        }
        let jobs = form
            .jobs
            .into_iter()
            .enumerate()
            .map(|(i, job)| {
                let prefix = format!("jobs[{i}]");
                let prereq = job.prerequisites.unwrap_or_default();
                Ok(PipelineJob {
                    name: job.name.unwrap_or_else(|| format!("job {}", i + 1)),
                    image_name: prereq.image_name.or(prereq.image_name_early),
                    shell_bin: prereq.shell_bin,
                    install: job.install.map(StringOrList::into_commands).unwrap_or_default(),
                    steps: script_steps(&prefix, job.script)?,
                    timeout_secs: positive_timeout(&prefix, job.timeout)?,
                    bin_path: job.bin_path,
                })
            })
            .collect::<Result<Vec<_>, PipelineError>>()?;
        (jobs, form.run_on)
    } else {
        let form: ListForm = serde_yaml_ng::from_str(text).map_err(PipelineError::from_yaml)?;
        let prereq = form.prerequisites.unwrap_or_default();
        // The legacy `prequisties: [jsx]` list selected a base image by name.
        let legacy_image = form.prequisties.and_then(|list| list.into_iter().next());
        let job = PipelineJob {
            name: "default".to_string(),
            image_name: prereq.image_name.or(prereq.image_name_early).or(legacy_image),
            shell_bin: prereq.shell_bin,
            install: form.install.map(StringOrList::into_commands).unwrap_or_default(),
            steps: script_steps("", form.script)?,
            timeout_secs: positive_timeout("", form.timeout)?,
            bin_path: form.bin_path,
        };
        (vec![job], form.run_on)
    };
    let run_on = run_on
        .map(|v| serde_json::to_value(v).map_err(|e| PipelineError::key("run_on", e.to_string())))
        .transpose()?;
    Ok(Pipeline { jobs, run_on })
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

fn positive_timeout(prefix: &str, timeout: Option<u64>) -> Result<Option<u64>, PipelineError> {
    match timeout {
        Some(0) => Err(PipelineError::key(join_key(prefix, "timeout"), "must be a positive number of seconds")),
        other => Ok(other),
    }
}

fn script_steps(prefix: &str, script: Option<Vec<ScriptItem>>) -> Result<Vec<ScriptStep>, PipelineError> {
    let key = join_key(prefix, "script");
    let script = script.ok_or_else(|| PipelineError::key(&key, "is required: a list of commands to run"))?;
    if script.is_empty() {
        return Err(PipelineError::key(&key, "must list at least one command"));
    }
    script
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            ScriptItem::Command(CommandText(cmd)) if cmd.trim().is_empty() => {
                Err(PipelineError::key(format!("{key}[{i}]"), "command is empty"))
            }
            ScriptItem::Command(CommandText(cmd)) => Ok(ScriptStep { name: cmd.clone(), cmd }),
            ScriptItem::Named(named) => {
                if let Some(kind) = named.kind.filter(|k| k != "cmd" && k != "command") {
                    return Err(PipelineError::key(
                        format!("{key}[{i}].type"),
                        format!("step type `{kind}` is not supported by ZeroCI; only shell commands (`cmd`) run"),
                    ));
                }
                let cmd = named
                    .cmd
                    .filter(|c| !c.trim().is_empty())
                    .ok_or_else(|| PipelineError::key(format!("{key}[{i}].cmd"), "is required: the command to run"))?;
                Ok(ScriptStep { name: named.name.unwrap_or_else(|| cmd.clone()), cmd })
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_form_with_legacy_prerequisites() {
        let p = parse(b"prequisties:\n  - jsx\ninstall:\n  - echo a\n  - echo b\n  - false\nscript:\n  - make test\n  - true\n").unwrap();
        assert_eq!(p.jobs.len(), 1);
        let job = &p.jobs[0];
        assert_eq!(job.image_name.as_deref(), Some("jsx"));
        assert_eq!(job.install, vec!["echo a", "echo b", "false"]);
        assert_eq!(job.steps[0], ScriptStep { name: "make test".into(), cmd: "make test".into() });
        assert_eq!(job.steps[1].cmd, "true");
    }

    #[test]
    fn jobs_form_with_named_steps_and_timeout() {
        let text = b"jobs:\n  - name: tests\n    prerequisites: {image_name: ubuntu:22.04, shell_bin: /bin/bash}\n    install: |\n      echo hi\n    script:\n      - name: unit\n        cmd: pytest\n    timeout: 60\nrun_on:\n  push: {branches: [main]}\n";
        let p = parse(text).unwrap();
        let job = &p.jobs[0];
        assert_eq!(job.name, "tests");
        assert_eq!(job.shell_bin.as_deref(), Some("/bin/bash"));
        assert_eq!(job.timeout_secs, Some(60));
        assert_eq!(job.steps[0].name, "unit");
        assert!(p.run_on.is_some());
    }

    #[test]
    fn errors_carry_line_and_key() {
        let err = parse(b"install:\n  - a\nscrpt:\n  - b\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.message.contains("scrpt"), "{err}");
        let err = parse(b"script:\n  - name: x\n    type: neph\n").unwrap_err();
        assert_eq!(err.key, "script[0].type");
        assert!(err.message.contains("neph"));
        assert!(parse(b"").is_err());
        assert!(parse(b"script: [\n").unwrap_err().line.is_some());
        assert!(parse(b"- just\n- a list\n").is_err());
        assert!(parse(b"script:\n  - x\ntimeout: 0\n").is_err());
    }
}

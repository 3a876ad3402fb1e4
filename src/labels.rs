//! Labels: what a pool host offers (`zeroci-agent join --labels`) and what a pipeline job asks for
//! (`prerequisites.labels`). One rule for both, so a label a job can ask for is one a host can offer.

/// Longest label.
pub const MAX_LEN: usize = 64;

/// Why `label` is not a label: 1 to 64 letters, digits, `.`, `_`, `-`, `:` or `/`.
pub fn validate(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > MAX_LEN {
        return Err(format!(
            "a label must have 1 to {MAX_LEN} characters, got {label:?}"
        ));
    }
    match label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        Some(bad) => Err(format!(
            "label {label:?}: only letters, digits and `._-:/` are allowed, not {bad:?}"
        )),
        None => Ok(()),
    }
}

/// Labels from a comma-separated list (`linux,gpu`); empty items are skipped, duplicates dropped.
pub fn parse_list(text: &str) -> Result<Vec<String>, String> {
    let mut labels: Vec<String> = Vec::new();
    for label in text.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        validate(label)?;
        if !labels.iter().any(|l| l == label) {
            labels.push(label.to_string());
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_bad_labels() {
        assert_eq!(parse_list(" linux, gpu,,linux").unwrap(), ["linux", "gpu"]);
        assert!(parse_list("").unwrap().is_empty());
        assert!(parse_list("a b").is_err());
        assert!(validate(&"x".repeat(MAX_LEN + 1)).is_err());
        assert!(validate("arch:x86_64").is_ok());
    }
}

//! Forms of a secret worth masking besides the value itself.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The base64 text that appears whenever `secret` is encoded, whatever bytes precede it: for each of
/// the three alignments, the characters that depend on the secret's bytes alone. Padding and the
/// characters shared with neighbouring bytes are left out, so the forms match inside longer encodings.
pub fn base64_forms(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    let mut forms = Vec::new();
    for offset in 0..3usize {
        let mut padded = vec![0u8; offset];
        padded.extend_from_slice(bytes);
        let encoded = STANDARD.encode(&padded);
        // Characters covering only the leading filler bytes (and the one they share) are dropped.
        let skip = if offset == 0 {
            0
        } else {
            (offset * 8).div_ceil(6)
        };
        // The last group may mix in padding bits or '=': keep only whole 3-byte groups of the secret.
        let total = padded.len();
        let keep_until = (total / 3) * 4;
        if keep_until > skip {
            let form = encoded[skip..keep_until].to_string();
            if form.len() >= 4 {
                forms.push(form);
            }
        }
    }
    forms.sort();
    forms.dedup();
    forms
}

/// The forms a secret takes when a tool escapes it: inside a JSON string, percent-encoded in a URL
/// (as `curl` or a log of request URLs shows it) and inside XML text or attributes (a JUnit report).
/// Only forms that differ from the secret itself.
pub fn escaped_forms(secret: &str) -> Vec<String> {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or_default()
        .to_string();
    // Unreserved characters (RFC 3986) stay as they are; everything else is encoded.
    const URL: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let url = utf8_percent_encode(secret, URL).to_string();
    let xml = secret
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;");
    let mut forms: Vec<String> = [json, url, xml]
        .into_iter()
        .filter(|form| !form.is_empty() && form != secret)
        .collect();
    forms.sort();
    forms.dedup();
    forms
}

/// `text` with every one of `secrets` replaced by `***`, longer ones first (so a secret that begins
/// another cannot uncover the other's tail). For what the controller itself writes or shows of a job
/// (reasons, messages); the job's output is masked on its machine.
pub fn mask_text(text: &str, secrets: &[String]) -> String {
    let mut ordered: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for secret in ordered {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_lose_every_secret_longest_first() {
        let secrets = ["TOKEN_ABC".to_string(), "TOKEN_ABC_EXTRA".to_string()];
        assert_eq!(
            mask_text("x TOKEN_ABC_EXTRA y TOKEN_ABC z", &secrets),
            "x *** y *** z"
        );
        assert_eq!(mask_text("nothing here", &[String::new()]), "nothing here");
    }

    #[test]
    fn escaped_forms_cover_json_urls_and_xml() {
        let forms = escaped_forms("p@ss \"w<rd>&/x");
        for expected in [
            "p@ss \\\"w<rd>&/x",
            "p%40ss%20%22w%3Crd%3E%26%2Fx",
            "p@ss &quot;w&lt;rd&gt;&amp;/x",
        ] {
            assert!(
                forms.iter().any(|f| f == expected),
                "{expected} not in {forms:?}"
            );
        }
        // A secret nothing escapes has no other form.
        assert!(escaped_forms("plain-secret_value.1~").is_empty());
    }

    #[test]
    fn every_alignment_of_the_secret_is_found_in_encodings_of_surrounding_text() {
        let secret = "hunter2-very-secret";
        let forms = base64_forms(secret);
        assert!(!forms.is_empty());
        for prefix in ["", "a", "ab", "abc", "user:"] {
            let encoded = STANDARD.encode(format!("{prefix}{secret}!"));
            assert!(
                forms.iter().any(|f| encoded.contains(f.as_str())),
                "{prefix:?}: {encoded} vs {forms:?}"
            );
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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

//! Masking of secret values in step output before it leaves the machine (`Assignment.secrets`).
//!
//! A command's output arrives in arbitrary chunks, so a secret can be split across two reads. A
//! [`Masker`] (one per output stream, not shared) therefore holds back a chunk's tail when that tail is
//! the beginning of a secret, and decides once the next chunk (or the end of the stream) arrives. With no
//! secrets configured it passes chunks through untouched, without copying.

use std::sync::Arc;

use bytes::Bytes;

/// What a secret is replaced with.
pub const MASK: &[u8] = b"***";

/// The secret values of a job, longest first (so the longer of two overlapping secrets wins).
#[derive(Debug, Clone, Default)]
pub struct Secrets(Arc<[Vec<u8>]>);

impl Secrets {
    /// Builds the set; empty values are ignored (they would match everywhere).
    pub fn new<I, S>(values: I) -> Secrets
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut v: Vec<Vec<u8>> = values
            .into_iter()
            .map(|s| s.as_ref().as_bytes().to_vec())
            .filter(|s| !s.is_empty())
            .collect();
        v.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        v.dedup();
        Secrets(v.into())
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every secret masked (a message, a file name).
    pub fn mask_text(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        // Secrets are whole strings and the mask is ASCII: valid UTF-8 stays valid.
        String::from_utf8_lossy(&self.mask(Bytes::copy_from_slice(text.as_bytes()))).into_owned()
    }

    /// Whether some secret appears in `text`.
    pub fn appear_in(&self, text: &str) -> bool {
        self.0
            .iter()
            .any(|s| text.as_bytes().windows(s.len()).any(|w| w == s.as_slice()))
    }

    /// `data` with every secret masked, all at once (a test report, a name: not a stream).
    pub fn mask(&self, data: Bytes) -> Bytes {
        if self.is_empty() {
            return data;
        }
        let mut masker = Masker::new(self.clone());
        let mut out = Vec::with_capacity(data.len());
        out.extend_from_slice(&masker.feed(data).unwrap_or_default());
        out.extend_from_slice(&masker.finish().unwrap_or_default());
        Bytes::from(out)
    }
}

/// Masks one output stream; see the module docs.
#[derive(Debug)]
pub struct Masker {
    secrets: Secrets,
    /// Bytes held back because they may be the start of a secret.
    carry: Vec<u8>,
}

impl Masker {
    pub fn new(secrets: Secrets) -> Masker {
        Masker {
            secrets,
            carry: Vec::new(),
        }
    }

    /// Feeds one chunk; returns what can be emitted now (`None` when everything is held back).
    pub fn feed(&mut self, data: Bytes) -> Option<Bytes> {
        if self.secrets.is_empty() {
            return (!data.is_empty()).then_some(data);
        }
        let mut input = std::mem::take(&mut self.carry);
        input.extend_from_slice(&data);
        self.scan(&input, false)
    }

    /// The end of the stream: masks and releases whatever was held back.
    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = std::mem::take(&mut self.carry);
        if rest.is_empty() {
            return None;
        }
        self.scan(&rest, true)
    }

    /// Masks `input`; unless `at_end`, a tail that may still become a secret is held back instead.
    fn scan(&mut self, input: &[u8], at_end: bool) -> Option<Bytes> {
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        'scan: while i < input.len() {
            let rest = &input[i..];
            let mut maybe_partial = false;
            // Longest first: a shorter secret that matches here only counts once no longer one can.
            for secret in self.secrets.0.iter() {
                if rest.starts_with(secret) {
                    if maybe_partial {
                        break;
                    }
                    out.extend_from_slice(MASK);
                    i += secret.len();
                    continue 'scan;
                }
                if !at_end && rest.len() < secret.len() && secret.starts_with(rest) {
                    maybe_partial = true;
                }
            }
            if maybe_partial {
                // Everything from here to the end may begin a secret: decide with the next chunk.
                self.carry = rest.to_vec();
                break;
            }
            out.push(input[i]);
            i += 1;
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(secrets: &[&str], chunks: &[&[u8]]) -> Vec<u8> {
        let mut m = Masker::new(Secrets::new(secrets));
        let mut out = Vec::new();
        for c in chunks {
            if let Some(b) = m.feed(Bytes::copy_from_slice(c)) {
                out.extend_from_slice(&b);
            }
        }
        if let Some(b) = m.finish() {
            out.extend_from_slice(&b);
        }
        out
    }

    #[test]
    fn whole_buffers_are_masked_to_their_last_byte() {
        let secrets = Secrets::new(["TOKEN_ABC", "TOKEN_ABC_EXTRA_SECRET"]);
        let xml =
            Bytes::from_static(b"<failure message=\"TOKEN_ABC_EXTRA_SECRET\">TOKEN_ABC</failure>");
        assert_eq!(
            &secrets.mask(xml)[..],
            b"<failure message=\"***\">***</failure>"
        );
        assert_eq!(
            &secrets.mask(Bytes::from_static(b"ends TOKEN_ABC"))[..],
            b"ends ***"
        );
    }

    #[test]
    fn texts_are_masked_and_searched_whole() {
        let secrets = Secrets::new(["s3cr3t", "ünïcode-sécret"]);
        assert_eq!(
            secrets.mask_text("a/s3cr3t/b ünïcode-sécret é"),
            "a/***/b *** é"
        );
        assert!(secrets.appear_in("dist/s3cr3t.tar"));
        assert!(!secrets.appear_in("dist/s3cr3.tar"));
        assert_eq!(Secrets::default().mask_text("s3cr3t"), "s3cr3t");
    }

    #[test]
    fn passes_through_without_secrets() {
        assert_eq!(run(&[], &[b"a\x00b", b"c"]), b"a\x00bc");
        assert_eq!(run(&[""], &[b"abc"]), b"abc");
    }

    #[test]
    fn masks_whole_and_split_secrets() {
        assert_eq!(run(&["hunter2"], &[b"pw=hunter2\n"]), b"pw=***\n");
        assert_eq!(run(&["hunter2"], &[b"pw=hun", b"ter2 ok"]), b"pw=*** ok");
        assert_eq!(run(&["hunter2"], &[b"pw=h", b"u", b"nter2"]), b"pw=***");
        // A held-back prefix that turns out not to be a secret is released intact.
        assert_eq!(run(&["hunter2"], &[b"pw=hun", b"gry"]), b"pw=hungry");
        assert_eq!(run(&["hunter2"], &[b"ends with hunt"]), b"ends with hunt");
        // Longest secret wins when two overlap.
        assert_eq!(run(&["abc", "abcdef"], &[b"xabcdefy abc"]), b"x***y ***");
    }

    #[test]
    fn a_shorter_secret_that_begins_a_longer_one_cannot_uncover_its_tail() {
        let secrets = ["TOKEN_ABC", "TOKEN_ABC_EXTRA_SECRET"];
        assert_eq!(
            run(&secrets, &[b"x TOKEN_ABC_EXTR", b"A_SECRET y"]),
            b"x *** y"
        );
        // The short one alone, split the same way, and at the very end of the stream.
        assert_eq!(
            run(&secrets, &[b"x TOKEN_ABC_EX", b"IT y"]),
            b"x ***_EXIT y"
        );
        assert_eq!(run(&secrets, &[b"x TOKEN_ABC_EX"]), b"x ***_EX");
        assert_eq!(run(&secrets, &[b"x TOKEN_A"]), b"x TOKEN_A");
    }
}

//! Terminal output as HTML: the SGR colour codes test tools print (`ESC[1;31m`) become `<span>`s with
//! classes the page styles (`b` bold, `f1`..`f7` and `f9`..`f15` colours), every other escape sequence
//! is dropped, and all text is HTML-escaped here: the result is inserted into the page as is.

use std::fmt::Write;

/// The colour and weight in force.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    /// 0..=15 (8..=15 the bright ones), `None` for the default colour.
    colour: Option<u8>,
}

impl Style {
    fn classes(self) -> String {
        let mut classes = Vec::new();
        if self.bold {
            classes.push("b".to_string());
        }
        if let Some(colour) = self.colour {
            classes.push(format!("f{colour}"));
        }
        classes.join(" ")
    }

    /// Applies one SGR parameter list (`1;31`).
    fn apply(&mut self, params: &str) {
        if params.is_empty() {
            *self = Style::default();
            return;
        }
        let mut numbers = params.split(';').map(|p| p.parse::<u16>().unwrap_or(0));
        while let Some(n) = numbers.next() {
            match n {
                0 => *self = Style::default(),
                1 => self.bold = true,
                22 => self.bold = false,
                30..=37 => self.colour = Some((n - 30) as u8),
                90..=97 => self.colour = Some((n - 90 + 8) as u8),
                39 => self.colour = None,
                // 256-colour and true-colour foregrounds: skip their arguments, keep the default.
                38 => {
                    match numbers.next() {
                        Some(5) => {
                            numbers.next();
                        }
                        Some(2) => {
                            numbers.nth(2);
                        }
                        _ => {}
                    }
                    self.colour = None;
                }
                _ => {}
            }
        }
    }
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        c => out.push(c),
    }
}

/// `text` as escaped HTML with its colours as spans; with `first_line`, each line starts with a
/// linkable number (`<a class="ln" id="L12" href="#L12" data-n="12"></a>`), counting from it.
pub fn to_html(text: &str, first_line: Option<u64>) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut style = Style::default();
    let mut open = false;
    let mut line = first_line;
    let mut at_line_start = true;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            if let (Some(n), true) = (line, at_line_start) {
                let _ = write!(
                    out,
                    "<a class=\"ln\" id=\"L{n}\" href=\"#L{n}\" data-n=\"{n}\"></a>"
                );
                line = Some(n + 1);
            }
            at_line_start = c == '\n';
            escape_into(&mut out, c);
            continue;
        }
        if chars.peek() != Some(&'[') {
            continue; // a lone escape: dropped
        }
        chars.next();
        let mut params = String::new();
        let mut last = None;
        for c in chars.by_ref() {
            if ('@'..='~').contains(&c) {
                last = Some(c);
                break;
            }
            params.push(c);
        }
        if last != Some('m') {
            continue; // cursor moves and the like: nothing a page can show
        }
        let before = style;
        style.apply(&params);
        if style != before {
            if open {
                out.push_str("</span>");
                open = false;
            }
            if style != Style::default() {
                let _ = write!(out, "<span class=\"{}\">", style.classes());
                open = true;
            }
        }
    }
    if open {
        out.push_str("</span>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_become_spans_and_everything_else_is_escaped_or_dropped() {
        let html = |text: &str| to_html(text, None);
        assert_eq!(
            html("\u{1b}[1;31mFAIL\u{1b}[0m <b>x</b> & \u{1b}[2K\u{1b}[32mok"),
            "<span class=\"b f1\">FAIL</span> &lt;b&gt;x&lt;/b&gt; &amp; <span class=\"f2\">ok</span>"
        );
        assert_eq!(
            html("\u{1b}[92mbright\u{1b}[39m plain"),
            "<span class=\"f10\">bright</span> plain"
        );
        assert_eq!(html("\u{1b}[38;5;208morange\u{1b}[m"), "orange");
        assert_eq!(
            html("lone \u{1b} escape \"q\" 'a'"),
            "lone  escape &quot;q&quot; &#39;a&#39;"
        );
        // A sequence cut at the end of the text does not leak.
        assert_eq!(html("tail \u{1b}[31"), "tail ");
    }

    #[test]
    fn lines_get_linkable_numbers() {
        let anchor =
            |n: u64| format!("<a class=\"ln\" id=\"L{n}\" href=\"#L{n}\" data-n=\"{n}\"></a>");
        assert_eq!(
            to_html("a\n\u{1b}[31mb\n", Some(7)),
            format!("{}a\n<span class=\"f1\">{}b\n</span>", anchor(7), anchor(8))
        );
    }
}

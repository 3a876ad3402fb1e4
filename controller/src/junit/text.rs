//! Lenient decoding helpers: encodings, entity references, numbers, caps and positions.
//!
//! Every function here accepts any input and falls back to "keep what was written" or zero rather
//! than failing, because a report with one odd attribute is still worth showing.

use std::borrow::Cow;

/// Brings the document to UTF-8 so quick-xml (built without its `encoding` feature) can read it.
///
/// - a UTF-8 BOM is dropped (so a BOM-only file counts as empty);
/// - UTF-16 (with a BOM, or recognisable from a leading `<` followed/preceded by a NUL) is
///   transcoded; the XML declaration still says UTF-16, which quick-xml ignores;
/// - invalid UTF-8 in a document declaring a Latin-1 family encoding is transcoded byte for byte
///   (windows-1252's 0x80–0x9F punctuation comes out as C1 controls: rare, and harmless);
/// - anything else is passed through, and invalid bytes are replaced field by field later.
pub(super) fn to_utf8(input: &[u8]) -> Cow<'_, [u8]> {
    if let Some(rest) = input.strip_prefix(b"\xEF\xBB\xBF") {
        return Cow::Borrowed(rest);
    }
    if let Some(rest) = input.strip_prefix(b"\xFF\xFE") {
        return Cow::Owned(utf16(rest, u16::from_le_bytes).into_bytes());
    }
    if let Some(rest) = input.strip_prefix(b"\xFE\xFF") {
        return Cow::Owned(utf16(rest, u16::from_be_bytes).into_bytes());
    }
    if input.starts_with(b"<\0") {
        return Cow::Owned(utf16(input, u16::from_le_bytes).into_bytes());
    }
    if input.starts_with(b"\0<") {
        return Cow::Owned(utf16(input, u16::from_be_bytes).into_bytes());
    }
    if std::str::from_utf8(input).is_err() && declares_latin1(input) {
        return Cow::Owned(
            input
                .iter()
                .map(|&b| char::from(b))
                .collect::<String>()
                .into_bytes(),
        );
    }
    Cow::Borrowed(input)
}

fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> String {
    let units = bytes.chunks_exact(2).map(|pair| unit([pair[0], pair[1]]));
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// Whether the XML declaration (if any, within the first bytes) names a Latin-1 family encoding.
fn declares_latin1(input: &[u8]) -> bool {
    let head = &input[..input.len().min(256)];
    if !head.starts_with(b"<?xml") {
        return false;
    }
    let Some(end) = head.windows(2).position(|w| w == b"?>") else {
        return false;
    };
    let decl = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    let Some(at) = decl.find("encoding") else {
        return false;
    };
    let value = decl[at + "encoding".len()..]
        .trim_start_matches([' ', '=', '"', '\''])
        .split(['"', '\''])
        .next()
        .unwrap_or("");
    matches!(
        value.trim(),
        "iso-8859-1"
            | "iso_8859-1"
            | "iso8859-1"
            | "latin1"
            | "latin-1"
            | "l1"
            | "windows-1252"
            | "cp1252"
            | "us-ascii"
            | "ascii"
    )
}

/// Resolves the name inside `&…;`: the five predefined entities and character references.
/// Anything else (custom entities from a DTD, invalid code points) is `None`: the caller keeps the
/// reference as written, which is what keeps entity bombs inert.
pub(super) fn resolve_reference(name: &str) -> Option<char> {
    match name {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => {
            let digits = name.strip_prefix('#')?;
            let code = match digits.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => digits.parse::<u32>().ok()?,
            };
            // NUL is not allowed in XML and would only cause trouble downstream.
            char::from_u32(code).filter(|&c| c != '\0')
        }
    }
}

/// Decodes entity and character references in an attribute value, keeping unknown or unterminated
/// ones literally.
pub(super) fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('&') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        // A reference name is short; bounding the search keeps a long run of `&` linear.
        let semi = after
            .char_indices()
            .take(32)
            .find(|&(_, c)| c == ';' || c == '&' || c.is_whitespace())
            .filter(|&(_, c)| c == ';')
            .map(|(i, _)| i);
        match semi.and_then(|i| resolve_reference(&after[..i]).map(|c| (i, c))) {
            Some((i, c)) => {
                out.push(c);
                rest = &after[i + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Parses a duration in seconds leniently: missing, empty, negative or garbage is 0; `1,234.5`
/// (thousands separators, as older Surefire wrote) is 1234.5; a lone decimal comma (`0,25`) is a
/// decimal point; a trailing `s` unit is ignored.
pub(super) fn parse_time(raw: &str) -> f64 {
    let s: String = raw
        .trim()
        .trim_end_matches(['s', 'S'])
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '_' && *c != '\'')
        .collect();
    let normalized = match (s.contains('.'), s.matches(',').count()) {
        (_, 0) => s,
        (true, _) => s.replace(',', ""),
        (false, 1) => match s.split_once(',') {
            // `1,234` reads as a thousands separator, `0,25` as a decimal comma.
            Some((int, frac)) if frac.len() == 3 && !int.is_empty() && int != "0" => {
                format!("{int}{frac}")
            }
            Some((int, frac)) => format!("{int}.{frac}"),
            None => s,
        },
        (false, _) => s.replace(',', ""),
    };
    match normalized.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => v,
        _ => 0.0,
    }
}

/// Parses a count attribute (`tests="12"`, `"1,024"`, `"3.0"`); `None` if absent or unreadable.
pub(super) fn parse_count(raw: &str) -> Option<u32> {
    let s: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ',' | '_' | ' '))
        .collect();
    if let Ok(n) = s.parse::<u64>() {
        return Some(u32::try_from(n).unwrap_or(u32::MAX));
    }
    match s.parse::<f64>() {
        // `as` saturates, which is what a count from an absurd attribute should do.
        Ok(v) if v.is_finite() && v >= 0.0 => Some(v as u32),
        _ => None,
    }
}

/// Parses a line number; `None` unless it is a plain non-negative integer.
pub(super) fn parse_line(raw: &str) -> Option<u32> {
    raw.trim().parse::<u32>().ok()
}

const ELLIPSIS: &str = "…";

/// Cuts `s` to at most `max` bytes on a char boundary, ending it with `…` when something was cut,
/// so a reader can tell the field is incomplete.
pub(super) fn cap(s: &mut String, max: usize) {
    if s.len() > max {
        cut(s, max, ELLIPSIS);
    }
}

/// Shortens `s` so that it plus `marker` fit in `max` bytes, then appends `marker`.
pub(super) fn cut(s: &mut String, max: usize, marker: &str) {
    let mut end = max.saturating_sub(marker.len()).min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(marker);
}

/// Appends `add` to `buf` without letting `buf` exceed `max` bytes; returns false if some of `add`
/// did not fit.
pub(super) fn push_within(buf: &mut String, add: &str, max: usize) -> bool {
    let room = max.saturating_sub(buf.len());
    if add.len() <= room {
        buf.push_str(add);
        return true;
    }
    let mut end = room;
    while !add.is_char_boundary(end) {
        end -= 1;
    }
    buf.push_str(&add[..end]);
    false
}

/// The first non-empty line of `text`, trimmed.
pub(super) fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// 1-based line and column (in characters) of byte `offset` in `doc`.
pub(super) fn line_column(doc: &[u8], offset: usize) -> (u64, u64) {
    let before = &doc[..offset.min(doc.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    // Count UTF-8 lead bytes so a non-ASCII name before the error does not skew the column.
    let column = before[line_start..]
        .iter()
        .filter(|&&b| (b & 0xC0) != 0x80)
        .count() as u64
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_lenient() {
        assert_eq!(parse_time(""), 0.0);
        assert_eq!(parse_time("  "), 0.0);
        assert_eq!(parse_time("0.25"), 0.25);
        assert_eq!(parse_time("1,234.5"), 1234.5);
        assert_eq!(parse_time("1,234,567.5"), 1_234_567.5);
        assert_eq!(parse_time("1,234"), 1234.0);
        assert_eq!(parse_time("0,25"), 0.25);
        assert_eq!(parse_time("12,5"), 12.5);
        assert_eq!(parse_time("1.5s"), 1.5);
        assert_eq!(parse_time("-3"), 0.0);
        assert_eq!(parse_time("NaN"), 0.0);
        assert_eq!(parse_time("inf"), 0.0);
        assert_eq!(parse_time("abc"), 0.0);
        assert_eq!(parse_time("1e-3"), 0.001);
    }

    #[test]
    fn counts_are_lenient() {
        assert_eq!(parse_count("12"), Some(12));
        assert_eq!(parse_count(" 1,024 "), Some(1024));
        assert_eq!(parse_count("3.0"), Some(3));
        assert_eq!(parse_count("99999999999"), Some(u32::MAX));
        assert_eq!(parse_count(""), None);
        assert_eq!(parse_count("many"), None);
        assert_eq!(parse_count("-1"), None);
    }

    #[test]
    fn references_decode_or_stay_literal() {
        assert_eq!(
            unescape("a &lt;b&gt; &amp; &quot;c&quot; &apos;"),
            "a <b> & \"c\" '"
        );
        assert_eq!(unescape("&#10;&#x41;&#X42;"), "\nAB");
        assert_eq!(unescape("&lol9; & &amp"), "&lol9; & &amp");
        assert_eq!(
            unescape("&#0; &#xD800; &#99999999999;"),
            "&#0; &#xD800; &#99999999999;"
        );
        assert_eq!(unescape("&&&&lt;"), "&&&<");
        assert_eq!(unescape("café &eacute;"), "café &eacute;");
    }

    #[test]
    fn caps_respect_char_boundaries() {
        let mut s = "é".repeat(100);
        cap(&mut s, 11);
        assert!(s.len() <= 11, "{}", s.len());
        assert!(s.ends_with(ELLIPSIS));
        let mut buf = String::from("ab");
        assert!(!push_within(&mut buf, "ééé", 5));
        assert_eq!(buf, "abé");
    }

    #[test]
    fn positions_count_lines_and_chars() {
        let doc = "ab\nçd\nxyz".as_bytes();
        assert_eq!(line_column(doc, 0), (1, 1));
        assert_eq!(line_column(doc, 3), (2, 1));
        assert_eq!(line_column(doc, 5), (2, 2));
        assert_eq!(line_column(doc, 9), (3, 3));
        assert_eq!(line_column(doc, 1000), (3, 4));
    }

    #[test]
    fn encodings_are_transcoded() {
        let latin1 = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>caf\xe9</a>";
        assert_eq!(
            to_utf8(latin1).as_ref(),
            "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>café</a>".as_bytes()
        );
        let utf16le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("<a>é</a>".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(to_utf8(&utf16le).as_ref(), "<a>é</a>".as_bytes());
        let utf16be: Vec<u8> = "<a/>".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(to_utf8(&utf16be).as_ref(), b"<a/>");
        assert_eq!(to_utf8(b"\xEF\xBB\xBF<a/>").as_ref(), b"<a/>");
        // Undeclared invalid UTF-8 is left for per-field lossy decoding.
        assert_eq!(to_utf8(b"<a>\xff</a>").as_ref(), b"<a>\xff</a>");
    }
}

//! JSON text handled as text: events travel as the exact JSON 1Password
//! sent, so what the collector changes in them it changes without parsing.

/// Valid JSON text without the whitespace between tokens (strings
/// untouched): JSON strings cannot contain raw whitespace other than spaces,
/// so this changes nothing but the layout.
pub(crate) fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// What one pass over an event's JSON text finds: the values of the
/// top-level keys the collector reads, and whether the text needs
/// [`compact`] to fit on one line. Walking the bytes once costs a fraction of
/// parsing the event again, and it runs on every event of every page.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Fields<'a, const N: usize> {
    /// The text between the quotes of each key's string value.
    pub values: [Option<&'a str>; N],
    /// Not an object, a key or a wanted value with escapes, a wanted key
    /// twice, or a wanted value that is not a string: what a JSON parser
    /// reads may differ from the raw text, so the caller parses instead.
    pub irregular: bool,
    /// A line break between tokens (inside strings JSON allows none).
    pub multiline: bool,
}

/// Scans `text`, which must be valid JSON (a `RawValue`'s text), for the
/// string values of `keys` at the top level of an object.
pub(crate) fn top_level_strings<'a, const N: usize>(text: &'a str, keys: [&str; N]) -> Fields<'a, N> {
    let b = text.as_bytes();
    // Inside strings JSON allows no raw line break, so any is between tokens.
    let mut found = Fields { values: [None; N], irregular: false, multiline: has_line_break(b) };
    // Nesting depth; at depth 1 of an object, strings alternate key, value.
    let mut depth = 0usize;
    let mut expect_key = false;
    // The wanted key whose value comes next.
    let mut pending: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                let mut escaped = false;
                i = start;
                loop {
                    i = quote_or_backslash(b, i);
                    match b.get(i) {
                        Some(b'\\') => {
                            escaped = true;
                            i += 2;
                        }
                        Some(_) => break,
                        // Not valid JSON: no closing quote.
                        None => {
                            found.irregular = true;
                            return found;
                        }
                    }
                }
                let content = &text[start..i];
                if depth == 0 {
                    found.irregular = true;
                } else if depth == 1 && expect_key {
                    expect_key = false;
                    // `"u\u0069d"` is `uuid` to a parser: an escaped key is
                    // decoded (rare, so the cost does not matter).
                    let decoded =
                        escaped.then(|| serde_json::from_str::<String>(&text[start - 1..=i]).unwrap_or_default());
                    let key = decoded.as_deref().unwrap_or(content);
                    if let Some(k) = keys.iter().position(|k| *k == key) {
                        found.irregular |= found.values[k].is_some();
                        pending = Some(k);
                    }
                } else if let Some(k) = pending.take() {
                    found.irregular |= escaped;
                    found.values[k] = Some(content);
                }
            }
            b'{' => {
                depth += 1;
                found.irregular |= pending.take().is_some();
                expect_key = depth == 1;
                if depth == 1 && i > 0 && !b[..i].iter().all(u8::is_ascii_whitespace) {
                    found.irregular = true;
                }
            }
            b'[' => {
                depth += 1;
                // A wanted key with an array value, or a top-level array.
                found.irregular |= pending.take().is_some() || depth == 1;
            }
            b'}' | b']' => depth -= 1,
            b',' => expect_key = depth == 1,
            b' ' | b'\t' | b'\n' | b'\r' | b':' => {}
            // A number, true, false or null: a wanted key's value that is
            // not a string, or a top-level scalar.
            _ => found.irregular |= pending.take().is_some() || depth == 0,
        }
        i += 1;
    }
    found
}

// Most of an event's bytes are inside strings, so the scans look at eight
// bytes at a time (SWAR: a byte equal to the one sought is a zero byte after
// an XOR, found with the carry trick; the lowest flag is exact).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Flags (high bit) on the bytes of `word` equal to `byte`, exact up to the
/// first one.
fn equal_bytes(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS
}

fn words(b: &[u8]) -> impl Iterator<Item = (usize, u64)> + '_ {
    b.chunks_exact(8).enumerate().map(|(n, c)| (n * 8, u64::from_le_bytes(c.try_into().expect("eight bytes"))))
}

/// The index of the first `"` or `\` at or after `from`, else `b.len()`.
fn quote_or_backslash(b: &[u8], from: usize) -> usize {
    let rest = &b[from.min(b.len())..];
    let whole = rest.len() / 8 * 8;
    for (at, word) in words(rest) {
        let hits = equal_bytes(word, b'"') | equal_bytes(word, b'\\');
        if hits != 0 {
            return from + at + (hits.trailing_zeros() / 8) as usize;
        }
    }
    from + whole + rest[whole..].iter().position(|&c| c == b'"' || c == b'\\').unwrap_or(rest.len() - whole)
}

/// Whether `b` holds a `\n` or `\r`.
pub(crate) fn has_line_break(b: &[u8]) -> bool {
    let whole = b.len() / 8 * 8;
    words(b).any(|(_, w)| equal_bytes(w, b'\n') | equal_bytes(w, b'\r') != 0)
        || b[whole..].iter().any(|&c| c == b'\n' || c == b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_strings_only() {
        let f = top_level_strings(
            r#"{"a":{"uuid":"inner"},"uuid":"U1","list":["timestamp","x"],"timestamp":"2026-01-01T00:00:00Z"}"#,
            ["uuid", "timestamp"],
        );
        assert_eq!(f.values, [Some("U1"), Some("2026-01-01T00:00:00Z")]);
        assert!(!f.irregular && !f.multiline);
        // A value that is a key elsewhere is not taken for a key.
        let f = top_level_strings(r#"{"x":"uuid","y":"z"}"#, ["uuid"]);
        assert_eq!(f.values, [None]);
        assert!(!f.irregular);
    }

    #[test]
    fn anything_a_parser_reads_differently_is_irregular() {
        for text in [
            r#"{"uuid":"a\"b"}"#,
            r#"{"uuid":"a","uuid":"b"}"#,
            r#"{"uuid":7}"#,
            r#"{"uuid":null}"#,
            r#"{"uuid":["a"]}"#,
            r#"{"uuid":{"a":1}}"#,
            r#"["uuid","a"]"#,
            r#""uuid""#,
            "17",
        ] {
            assert!(top_level_strings(text, ["uuid"]).irregular, "{text}");
        }
        // Escapes elsewhere change nothing; an escaped key is decoded.
        assert!(!top_level_strings(r#"{"a\n":"\"","uuid":"b"}"#, ["uuid"]).irregular);
        assert_eq!(top_level_strings(r#"{"u\u0075id":"a"}"#, ["uuid"]).values, [Some("a")]);
    }

    #[test]
    fn the_word_scans_find_the_first_byte_wherever_it_is() {
        for len in 0..40 {
            for at in 0..=len {
                let mut text = vec![b'a'; len];
                if at < len {
                    text[at] = b'"';
                }
                for from in 0..=len {
                    let want = if at < len && at >= from { at } else { len };
                    assert_eq!(quote_or_backslash(&text, from), want, "len {len} at {at} from {from}");
                }
                // A byte just below the sought one (the carry trick's trap).
                let mut text = vec![b'!'; len];
                if at < len {
                    text[at] = b'\\';
                }
                assert_eq!(quote_or_backslash(&text, 0), if at < len { at } else { len });
                let mut text = vec![0x0bu8; len];
                if at < len {
                    text[at] = b'\r';
                }
                assert_eq!(has_line_break(&text), at < len, "len {len} at {at}");
            }
        }
    }

    #[test]
    fn line_breaks_between_tokens_are_noticed() {
        assert!(top_level_strings("{\n\"uuid\": \"a\"\r\n}", ["uuid"]).multiline);
        assert!(!top_level_strings(r#"{"uuid":"a\nb"}"#, ["uuid"]).multiline);
    }
}

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
    let mut found = Fields { values: [None; N], irregular: false, multiline: false };
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
                while b[i] != b'"' {
                    if b[i] == b'\\' {
                        escaped = true;
                        i += 1;
                    }
                    i += 1;
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
            b'\n' | b'\r' => found.multiline = true,
            b' ' | b'\t' | b':' => {}
            // A number, true, false or null: a wanted key's value that is
            // not a string, or a top-level scalar.
            _ => found.irregular |= pending.take().is_some() || depth == 0,
        }
        i += 1;
    }
    found
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
    fn line_breaks_between_tokens_are_noticed() {
        assert!(top_level_strings("{\n\"uuid\": \"a\"\r\n}", ["uuid"]).multiline);
        assert!(!top_level_strings(r#"{"uuid":"a\nb"}"#, ["uuid"]).multiline);
    }
}

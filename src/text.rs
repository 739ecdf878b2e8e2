//! Outside text made safe to show: an upstream body, a setting's value, a
//! host's complaint or a report from an untrusted component can hold
//! terminal escape sequences, bidi overrides, a megabyte line, or a URL with
//! a password or a token in its query. [`clean`] makes such text one bounded
//! line that is displayed as it reads; [`redact_url`] drops the parts of a URL
//! that may carry a secret. The host uses the same functions for what a
//! component reports, so core and host agree on what "clean" means.

use std::fmt::Write;

/// The most characters an error message keeps: room for a 200-character
/// body excerpt and the advice around it, never a megabyte in a log line.
pub const MAX_MESSAGE_CHARS: usize = 800;

/// `text` as one line of at most `max_chars` characters (an ellipsis
/// replaces the rest): line breaks and tabs become spaces, and characters
/// that steer a terminal or reorder what is displayed — C0 and C1 controls
/// (ESC included), DEL, bidi embeddings, overrides, isolates and marks, line
/// and paragraph separators — are escaped as `\u{..}`, visible but inert.
/// Walks no further into `text` than it keeps.
pub fn clean(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars.saturating_mul(4)));
    let mut shown = 0;
    let mut escaped = String::new();
    for c in text.chars() {
        escaped.clear();
        match c {
            '\n' | '\r' | '\t' => escaped.push(' '),
            c if is_unsafe(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(c));
            }
            c => escaped.push(c),
        }
        let len = escaped.chars().count();
        if shown + len > max_chars {
            out.push('…');
            break;
        }
        out.push_str(&escaped);
        shown += len;
    }
    out
}

/// True for what [`clean`] escapes.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// A URL as a message may show it: scheme, host and path only. Userinfo
/// (`user:password@`), query and fragment are dropped, and a Devo token in
/// the path (`token!…`) is replaced. Text that is not a URL is treated the
/// same way, so no input slips a secret through.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    // Everything up to the last `@` may be userinfo, even a malformed one
    // holding a `/`: dropping too much is safe, keeping a password is not.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("{scheme}{authority}{}", redact_path(path))
}

/// `text` with the value of every Devo token it shows replaced: whatever
/// follows `token!` (the form of Devo's URL path, matched in any case) up to
/// the next `/`, whitespace, quote, `?`, `#`, `&`, `\` or control character
/// becomes `<redacted>`. For free text, which may quote a URL anywhere: the
/// marker is looked for everywhere, not only at the start of a path segment
/// as [`redact_url`] does, since redacting too much is safe.
pub fn redact_tokens(text: &str) -> String {
    const MARK: &[u8] = b"token!";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut kept, mut i) = (0, 0);
    while i + MARK.len() <= bytes.len() {
        if !bytes[i..i + MARK.len()].eq_ignore_ascii_case(MARK) {
            i += 1;
            continue;
        }
        // The mark is ASCII: right after it is a character boundary.
        let start = i + MARK.len();
        let ends = |c: char| {
            c == '/' || c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '`' | '?' | '#' | '&' | '\\')
        };
        let end = text[start..].find(ends).map_or(text.len(), |n| start + n);
        if end > start {
            out.push_str(&text[kept..start]);
            out.push_str("<redacted>");
            kept = end;
        }
        i = start.max(end);
    }
    out.push_str(&text[kept..]);
    out
}

/// Replaces the value of a `token!...` path segment (Devo's URL form).
pub fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with("token!") { "token!<redacted>" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_and_bidi_overrides_are_made_inert() {
        let hostile = "denied\x1b[2J\x1b]0;pwned\x07 \u{9b}31m \u{202e}txt.exe\u{2066}\nnext\u{7f}";
        let shown = clean(hostile, 200);
        assert_eq!(shown, "denied\\u{1b}[2J\\u{1b}]0;pwned\\u{7} \\u{9b}31m \\u{202e}txt.exe\\u{2066} next\\u{7f}");
        assert!(!shown.chars().any(is_unsafe), "{shown}");
        // Ordinary text, accents and emoji included, is left alone.
        assert_eq!(clean("Jack O'Neill — café ✓", 100), "Jack O'Neill — café ✓");
    }

    #[test]
    fn a_megabyte_line_is_cut_to_the_bound() {
        let line = "x".repeat(1 << 20);
        let shown = clean(&line, 50);
        assert_eq!(shown.chars().count(), 51, "50 characters and the ellipsis");
        assert!(shown.ends_with('…'));
        // An escape is never cut in half: it counts whole or not at all.
        let shown = clean(&"\x1b".repeat(100), 20);
        assert_eq!(shown, format!("{}…", "\\u{1b}".repeat(3)));
        assert_eq!(clean("exactly", 7), "exactly");
    }

    #[test]
    fn urls_lose_userinfo_query_fragment_and_devo_tokens() {
        assert_eq!(redact_url("https://user:pw@h/p?token=x"), "https://h/p");
        assert_eq!(redact_url("https://h:8443/relay#frag"), "https://h:8443/relay");
        assert_eq!(redact_url("https://us/er:pw@h/p"), "https://h/p");
        assert_eq!(redact_url("https://h/stream/d/token!SECRET/x"), "https://h/stream/d/token!<redacted>/x");
        assert_eq!(redact_url("pw@host?q=1"), "host");
        assert_eq!(redact_url("https://events.1password.com"), "https://events.1password.com");
    }

    #[test]
    fn devo_tokens_in_free_text_are_redacted() {
        assert_eq!(
            redact_tokens("https://h/stream/acme/token!SECRET/x accepted domain acme"),
            "https://h/stream/acme/token!<redacted>/x accepted domain acme"
        );
        assert_eq!(redact_tokens("at h/Token!S3cr3t: refused"), "at h/Token!<redacted> refused");
        assert_eq!(
            redact_tokens("\"https://h/token!a?b\", token!c\nnext"),
            "\"https://h/token!<redacted>?b\", token!<redacted>\nnext"
        );
        assert_eq!(redact_tokens("token!"), "token!");
        assert_eq!(redact_tokens("token!/x token!"), "token!/x token!");
        assert_eq!(redact_tokens("ünïcode token!sécret€ ok"), "ünïcode token!<redacted> ok");
        // Already redacted text stays as it is.
        let once = redact_tokens("/token!SECRET/");
        assert_eq!(redact_tokens(&once), once);
        assert_eq!(redact_tokens(&redact_url("https://h/token!SECRET")), "https://h/token!<redacted>");
    }
}

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

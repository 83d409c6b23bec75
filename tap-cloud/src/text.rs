//! Text that came off the wire (account names, titles built from them, what a sensor says
//! of itself), shown to a person. A terminal obeys control characters (an OSC sequence
//! sets its title, CSI moves the cursor, a carriage return lets the rest of a line
//! overwrite what came before) and bidirectional overrides reorder what follows, so such
//! text is shown with them made visible, as `ls` shows a file name: `\x1b`, `\r`,
//! `\u{202e}`. A SIEM's viewer is shown the same forms (see `detect::export`).

use std::borrow::Cow;

/// Whether `c` acts on how the text around it is shown rather than being shown: the C0
/// controls, DEL, the C1 controls (U+0080..U+009F: 8-bit CSI and OSC for some terminals),
/// and the bidirectional embeddings, overrides and isolates.
pub fn is_hidden(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Appends the visible form of a hidden character: `\t`, `\n`, `\r`, `\xNN` for the other
/// controls (`\x1b` is ESC, `\x9b` the C1 CSI), `\u{NNNN}` for the bidirectional ones.
/// Any other character is appended as it is.
pub fn push_visible(out: &mut String, c: char) {
    use std::fmt::Write as _;
    match c {
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        c if !is_hidden(c) => out.push(c),
        c if (c as u32) < 0x100 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
    }
}

/// `s` safe to print on a terminal: every hidden character in its visible form (borrowed
/// when there is none). Every table and message of the command line that holds wire text
/// prints it through this.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_visible(&mut out, c);
    }
    Cow::Owned(out)
}

/// At most the first `max` bytes of `s` (cut at a character boundary, then "…" and how
/// long it was), in its visible form: a bounded, printable form of text that may be huge.
pub fn shortened(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return visible(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", visible(&s[..end]), s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        assert_eq!(shortened("alice", 5), "alice");
        assert_eq!(shortened("\x1balice", 64), "\\x1balice");
        assert_eq!(shortened(&"é".repeat(1000), 5), "éé… (2000 bytes)");
        assert_eq!(shortened(&"x\n".repeat(1_000_000), 4), "x\\nx\\n… (2000000 bytes)");
    }

    #[test]
    fn controls_and_bidi_overrides_are_shown_not_obeyed() {
        assert!(matches!(visible("LAB\\alice@lab.example ünïcode"), Cow::Borrowed(_)));
        assert_eq!(visible("\x1b]0;owned\x07x"), "\\x1b]0;owned\\x07x");
        assert_eq!(visible("a\rb\nc\td\0e\x7f"), "a\\rb\\nc\\td\\x00e\\x7f");
        assert_eq!(visible("\u{9b}2J \u{85}"), "\\x9b2J \\x85");
        assert_eq!(visible("\u{202e}gpj.exe\u{2066}\u{2069}"), "\\u{202e}gpj.exe\\u{2066}\\u{2069}");
        // Neighbours of the ranges are ordinary text.
        assert_eq!(visible("\u{a0}\u{2029}\u{206a}"), "\u{a0}\u{2029}\u{206a}");
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let shown = visible(c.encode_utf8(&mut [0; 4])).into_owned();
            assert!(!shown.chars().any(is_hidden), "{:x}", c as u32);
        }
    }
}

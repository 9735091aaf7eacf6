//! What reaches an operator's terminal. Job and worker names, failure reasons and log lines
//! come from users and their jobs, and a terminal obeys the escape sequences in what it
//! prints: a job named with `ESC ]` could retitle the window, rewrite earlier lines or hide
//! its own output. Everything the cluster commands print as text goes through
//! [`escape_controls`]; JSON output escapes control characters by itself.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as itself: control characters (C0, DEL, C1) other
/// than newline and tab, and the invisible bidirectional overrides that make text read
/// otherwise than it is stored.
fn unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character written as a Rust escape (`\u{1b}`), so that it shows
/// what was sent instead of acting on the terminal.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `println!` for the cluster commands: the line, escaped (see the module doc).
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", $crate::display::escape_controls(&format!($($arg)*)))
    };
}

/// `eprintln!` for the cluster commands, escaped the same way.
macro_rules! say_err {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::display::escape_controls(&format!($($arg)*)))
    };
}

pub(crate) use {say, say_err};

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn escape_sequences_and_bidi_overrides_are_shown_not_obeyed() {
        assert_eq!(escape_controls("plain name-1"), "plain name-1");
        assert_eq!(escape_controls("a\tb\nc"), "a\tb\nc");
        assert_eq!(
            escape_controls("\u{1b}]0;owned\u{7}job"),
            "\\u{1b}]0;owned\\u{7}job"
        );
        assert_eq!(
            escape_controls("x\r\u{7f}\u{9b}y"),
            "x\\u{d}\\u{7f}\\u{9b}y"
        );
        assert_eq!(escape_controls("abc\u{202e}fed"), "abc\\u{202e}fed");
    }
}

//! Text cut to a size: a model's or a program's output repeated in an
//! error message, a log line or a prompt. Sizes are in bytes (what a column
//! or a log line holds), and a cut never splits a character.

/// At most the first `max` bytes of `text`.
pub fn head(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

/// At most the last `max` bytes of `text`.
pub fn tail(text: &str, max: usize) -> &str {
    &text[text.ceil_char_boundary(text.len().saturating_sub(max))..]
}

/// At most the first `max` bytes of `text`, then `…` when it was cut.
pub fn clip(text: &str, max: usize) -> String {
    let kept = head(text, max);
    if kept.len() == text.len() {
        text.to_owned()
    } else {
        format!("{kept}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_falls_on_a_character_boundary() {
        // 'é' is two bytes, at 1..3.
        assert_eq!(head("héllo", 2), "h");
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(clip("héllo", 2), "h…");
    }

    #[test]
    fn text_within_the_size_is_kept_whole_and_unmarked() {
        assert_eq!(head("abc", 3), "abc");
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "abc…");
    }
}

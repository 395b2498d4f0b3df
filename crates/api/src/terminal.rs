//! Worker output made safe for an operator's terminal: escape sequences and
//! control characters removed, so an agent cannot move the cursor, rewrite
//! earlier lines, set the window title, or paste through OSC 52 into the
//! terminal of whoever runs `berth logs`. Streaming: a sequence split across
//! chunks is still removed.

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// Inside `ESC [ ...` up to its final byte.
    Csi,
    /// Inside `ESC ] ...`, `ESC P ...` and the like, up to BEL or `ESC \`.
    String,
    /// Inside a string, just after ESC.
    StringEscape,
    /// After 0xC2, the lead byte of U+0080..U+00BF.
    C2,
}

/// Removes terminal control from a byte stream.
#[derive(Debug, Default)]
pub struct TerminalFilter {
    state: State,
}

impl TerminalFilter {
    /// The next chunk with every escape sequence and control character
    /// removed, except newline and tab (and `\r` before `\n`, as `\n`).
    pub fn filter(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        for &byte in chunk {
            self.state = match (self.state, byte) {
                (State::Text, ESC) => State::Escape,
                (State::Text, b'\n' | b'\t') => {
                    out.push(byte);
                    State::Text
                }
                // Other C0 controls and DEL: dropped (a lone `\r` could rewrite the line).
                (State::Text, 0x00..=0x1f | 0x7f) => State::Text,
                (State::Text, 0xc2) => State::C2,
                (State::Text, _) => {
                    out.push(byte);
                    State::Text
                }
                (State::C2, 0x80..=0x9f) => State::Text,
                (State::C2, next) => {
                    out.push(0xc2);
                    return_to_text(&mut out, next)
                }
                (State::Escape, b'[') => State::Csi,
                (State::Escape, b']' | b'P' | b'X' | b'^' | b'_') => State::String,
                // Two-byte sequences (`ESC 7`, `ESC c`, ...): both dropped.
                (State::Escape, _) => State::Text,
                (State::Csi, 0x40..=0x7e) => State::Text,
                (State::Csi, _) => State::Csi,
                (State::String, BEL) => State::Text,
                (State::String, ESC) => State::StringEscape,
                (State::String, _) => State::String,
                (State::StringEscape, b'\\') => State::Text,
                (State::StringEscape, _) => State::String,
            };
        }
        out
    }
}

fn return_to_text(out: &mut Vec<u8>, byte: u8) -> State {
    match byte {
        ESC => State::Escape,
        b'\n' | b'\t' => {
            out.push(byte);
            State::Text
        }
        0x00..=0x1f | 0x7f => State::Text,
        0xc2 => State::C2,
        _ => {
            out.push(byte);
            State::Text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TerminalFilter;

    fn clean(input: &[u8]) -> String {
        String::from_utf8(TerminalFilter::default().filter(input)).unwrap()
    }

    #[test]
    fn escape_sequences_and_controls_are_removed_text_is_kept() {
        assert_eq!(clean(b"plain text\twith tab\n"), "plain text\twith tab\n");
        assert_eq!(clean(b"\x1b[31mred\x1b[0m and \x1b[2J\x1b[Hcleared"), "red and cleared");
        assert_eq!(clean(b"\x1b]0;evil title\x07after"), "after", "OSC title ended by BEL");
        assert_eq!(clean(b"\x1b]52;c;cGFzdGU=\x1b\\after"), "after", "OSC 52 clipboard ended by ST");
        assert_eq!(clean(b"line\rover\n"), "lineover\n", "a carriage return cannot rewrite the line");
        assert_eq!(clean(b"crlf\r\n"), "crlf\n");
        assert_eq!(clean(b"bell\x07 nul\x00 del\x7f"), "bell nul del");
        assert_eq!(clean("c1 \u{9b}31m csi".as_bytes()), "c1 31m csi", "8-bit CSI dropped");
        assert_eq!(clean("accents: é ü ñ and ½".as_bytes()), "accents: é ü ñ and ½");
        assert_eq!(clean(b"\x1bcreset \x1b7saved"), "reset saved");
    }

    #[test]
    fn a_sequence_split_across_chunks_is_still_removed() {
        let input = b"a\x1b]0;title\x07b\x1b[1;31mc\xc2\x9bd\n";
        let mut filter = TerminalFilter::default();
        let out: Vec<u8> = input.iter().flat_map(|byte| filter.filter(&[*byte])).collect();
        assert_eq!(String::from_utf8(out).unwrap(), "abcd\n");
    }
}

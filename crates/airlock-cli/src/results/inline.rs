//! Images shown in the terminal itself, on terminals that have an inline
//! image protocol: kitty's graphics protocol (kitty, and terminals that
//! set `TERM=xterm-kitty`) and iTerm2's inline images (iTerm2, WezTerm).
//! The image is still saved in the output dir; this only shows it too.
//!
//! Chosen from the environment ([`protocol_of`]) when stdout is a
//! terminal; `AIRLOCK_INLINE_IMAGES=0` turns it off, `=kitty` or
//! `=iterm2` forces one (a terminal that advertises neither).

use base64::Engine as _;

/// The variable that turns inline images off (`0`) or picks a protocol.
pub const INLINE_IMAGES_VAR: &str = "AIRLOCK_INLINE_IMAGES";

/// Base64 characters per kitty escape (the protocol's limit).
const KITTY_CHUNK: usize = 4096;

/// An inline image protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// kitty's graphics protocol (PNG, `f=100`).
    Kitty,
    /// iTerm2's `File=inline=1` (PNG, JPEG, GIF).
    Iterm2,
}

impl Protocol {
    /// Whether this protocol shows images of `mime`.
    pub fn shows(self, mime: &str) -> bool {
        match self {
            Protocol::Kitty => mime == "image/png",
            Protocol::Iterm2 => matches!(mime, "image/png" | "image/jpeg" | "image/gif"),
        }
    }

    /// The escape sequence that shows `image`, ending with a newline
    /// (pure).
    pub fn escape(self, image: &[u8]) -> String {
        let data = base64::engine::general_purpose::STANDARD.encode(image);
        match self {
            Protocol::Kitty => {
                let chunks: Vec<&str> = data
                    .as_bytes()
                    .chunks(KITTY_CHUNK)
                    // Base64 is ASCII: every chunk is valid UTF-8.
                    .map(|c| std::str::from_utf8(c).unwrap_or_default())
                    .collect();
                let mut out = String::with_capacity(data.len() + chunks.len() * 16);
                for (i, chunk) in chunks.iter().enumerate() {
                    let more = u8::from(i + 1 < chunks.len());
                    if i == 0 {
                        // q=2: the terminal answers nothing (an answer
                        // would land in the session's input).
                        out.push_str(&format!("\x1b_Ga=T,f=100,q=2,m={more};{chunk}\x1b\\"));
                    } else {
                        out.push_str(&format!("\x1b_Gm={more};{chunk}\x1b\\"));
                    }
                }
                out.push('\n');
                out
            }
            Protocol::Iterm2 => format!(
                "\x1b]1337;File=inline=1;size={};preserveAspectRatio=1:{data}\x07\n",
                image.len()
            ),
        }
    }
}

/// The protocol a terminal with this environment shows images with
/// (pure; `var` reads a variable): `AIRLOCK_INLINE_IMAGES` first (`0`,
/// `off`: none; `kitty`, `iterm2`: that one), then `TERM=xterm-kitty` or
/// `KITTY_WINDOW_ID` (kitty), `TERM_PROGRAM` `iTerm.app` or `WezTerm`
/// (iTerm2's). `None` when stdout is not a terminal.
pub fn protocol_of(
    var: impl Fn(&str) -> Option<String>,
    stdout_is_terminal: bool,
) -> Option<Protocol> {
    if !stdout_is_terminal {
        return None;
    }
    match var(INLINE_IMAGES_VAR).as_deref() {
        Some("0" | "off" | "no" | "false") => return None,
        Some("kitty") => return Some(Protocol::Kitty),
        Some("iterm2") => return Some(Protocol::Iterm2),
        _ => {}
    }
    if var("TERM").as_deref() == Some("xterm-kitty") || var("KITTY_WINDOW_ID").is_some() {
        return Some(Protocol::Kitty);
    }
    match var("TERM_PROGRAM").as_deref() {
        Some("iTerm.app" | "WezTerm") => Some(Protocol::Iterm2),
        _ => None,
    }
}

/// [`protocol_of`] for this process.
pub fn detect() -> Option<Protocol> {
    use std::io::IsTerminal;
    protocol_of(
        |name| std::env::var(name).ok(),
        std::io::stdout().is_terminal(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_terminal_is_known_by_its_variables_and_only_on_a_terminal() {
        let kitty = env(&[("TERM", "xterm-kitty")]);
        assert_eq!(protocol_of(&kitty, true), Some(Protocol::Kitty));
        assert_eq!(protocol_of(&kitty, false), None, "not a terminal");
        assert_eq!(
            protocol_of(env(&[("KITTY_WINDOW_ID", "1"), ("TERM", "xterm")]), true),
            Some(Protocol::Kitty)
        );
        for program in ["iTerm.app", "WezTerm"] {
            assert_eq!(
                protocol_of(env(&[("TERM_PROGRAM", program)]), true),
                Some(Protocol::Iterm2)
            );
        }
        assert_eq!(protocol_of(env(&[("TERM", "xterm-256color")]), true), None);
        assert_eq!(protocol_of(env(&[]), true), None);
    }

    #[test]
    fn the_variable_turns_it_off_or_forces_a_protocol() {
        let off = env(&[("TERM", "xterm-kitty"), (INLINE_IMAGES_VAR, "0")]);
        assert_eq!(protocol_of(off, true), None);
        let forced = env(&[("TERM", "xterm"), (INLINE_IMAGES_VAR, "iterm2")]);
        assert_eq!(protocol_of(forced, true), Some(Protocol::Iterm2));
        let forced = env(&[(INLINE_IMAGES_VAR, "kitty")]);
        assert_eq!(protocol_of(&forced, true), Some(Protocol::Kitty));
        assert_eq!(protocol_of(forced, false), None, "never into a pipe");
    }

    #[test]
    fn a_kitty_image_goes_in_chunks_of_4096_with_more_flags() {
        let image = vec![7u8; 7000]; // 9336 base64 characters: 3 chunks
        let escape = Protocol::Kitty.escape(&image);
        let parts: Vec<&str> = escape
            .trim_end_matches('\n')
            .split("\x1b\\")
            .filter(|p| !p.is_empty())
            .collect();
        assert_eq!(parts.len(), 3);
        assert!(
            parts[0].starts_with("\x1b_Ga=T,f=100,q=2,m=1;"),
            "{:?}",
            &parts[0][..20]
        );
        assert!(parts[1].starts_with("\x1b_Gm=1;"));
        assert!(parts[2].starts_with("\x1b_Gm=0;"));
        let data: String = parts.iter().map(|p| p.split_once(';').unwrap().1).collect();
        assert!(parts[..2]
            .iter()
            .all(|p| p.split_once(';').unwrap().1.len() == 4096));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        assert_eq!(decoded, image);
        assert!(escape.ends_with('\n'));
    }

    #[test]
    fn a_small_kitty_image_is_one_escape_without_more() {
        let escape = Protocol::Kitty.escape(b"png");
        assert_eq!(escape, "\x1b_Ga=T,f=100,q=2,m=0;cG5n\x1b\\\n");
    }

    #[test]
    fn an_iterm2_image_is_one_escape_with_its_size() {
        let escape = Protocol::Iterm2.escape(b"png");
        assert_eq!(
            escape,
            "\x1b]1337;File=inline=1;size=3;preserveAspectRatio=1:cG5n\x07\n"
        );
    }

    #[test]
    fn each_protocol_shows_the_formats_it_knows() {
        assert!(Protocol::Kitty.shows("image/png"));
        assert!(!Protocol::Kitty.shows("image/jpeg"));
        assert!(Protocol::Iterm2.shows("image/jpeg"));
        assert!(!Protocol::Iterm2.shows("image/svg+xml"));
        assert!(!Protocol::Iterm2.shows("application/pdf"));
    }
}

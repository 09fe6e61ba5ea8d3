//! Operator output: aligned plain-text tables, relative times, and colour that is only
//! switched on when standard output is a terminal (and `NO_COLOR` is unset), so piped
//! output and scripts never see escape codes.

use std::io::IsTerminal;

/// How a column's cells sit in their width: text left, counts right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Renders rows under headers, columns padded to their widest cell and aligned as `align`
/// says (columns it has no entry for are left-aligned).
/// Widths are display widths: colour codes take no room and CJK characters take two
/// columns, so a platform's Chinese hint does not push the next column out of line.
pub fn render_aligned(headers: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(width(c));
            }
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(width(c));
            let last = i + 1 == cells.len();
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Right => {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                }
                Align::Left => {
                    s.push_str(c);
                    if !last {
                        s.push_str(&" ".repeat(pad));
                    }
                }
            }
            if !last {
                s.push_str("  ");
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers);
    out.push('\n');
    for r in rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        out.push_str(&line(&cells));
        out.push('\n');
    }
    out
}

/// Display width of `s` on a terminal: ANSI escape sequences count 0, wide (CJK, full-width)
/// characters 2, everything else 1.
pub fn width(s: &str) -> usize {
    let mut n = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte (a letter).
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        n += if is_wide(c) { 2 } else { 1 };
    }
    n
}

fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x20000..=0x3FFFD)
}

/// Cuts `s` to at most `max` display columns, marking the cut with `…`.
pub fn clip(s: &str, max: usize) -> String {
    if width(s) <= max {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = if is_wide(c) { 2 } else { 1 };
        if used + w + 1 > max {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// An age in milliseconds, short: "<1s", "42s", "3m 5s", "3m", "2h 5m", "3d 4h".
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s == 0 => "<1s".into(),
        _ if s < 60 => format!("{s}s"),
        _ if m < 10 && s % 60 != 0 => format!("{m}m {}s", s % 60),
        _ if h == 0 => format!("{m}m"),
        _ if d == 0 && m % 60 != 0 => format!("{h}h {}m", m % 60),
        _ if d == 0 => format!("{h}h"),
        _ if h % 24 != 0 => format!("{d}d {}h", h % 24),
        _ => format!("{d}d"),
    }
}

/// A point in time (epoch ms) relative to `now`: "3m ago", "just now", "in 5s".
pub fn relative(t: i64, now: i64) -> String {
    let delta = now - t;
    if delta.abs() < 1000 {
        "just now".into()
    } else if delta > 0 {
        format!("{} ago", age(delta))
    } else {
        format!("in {}", age(-delta))
    }
}

/// Colour for standard output, on only when it is a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Colour when stdout is a terminal and `NO_COLOR` is not set (<https://no-color.org>).
    pub fn stdout() -> Paint {
        Paint {
            on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    #[cfg(test)]
    pub fn with(on: bool) -> Paint {
        Paint { on }
    }

    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    pub fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    pub fn red(&self, s: &str) -> String {
        self.wrap("31", s)
    }
    pub fn green(&self, s: &str) -> String {
        self.wrap("32", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }

    /// A count, red when above zero (dead rows, errors).
    pub fn bad_count(&self, n: i64) -> String {
        if n > 0 {
            self.red(&n.to_string())
        } else {
            n.to_string()
        }
    }

    /// A count, yellow when above zero (retries, hints: worth a look, not alarming).
    pub fn warn_count(&self, n: i64) -> String {
        if n > 0 {
            self.yellow(&n.to_string())
        } else {
            n.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns() {
        let t = render_aligned(&["a", "bb"], &[], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\nxyz  1\n");
    }

    #[test]
    fn right_aligns_counts_and_ignores_colour_codes() {
        let p = Paint::with(true);
        let t = render_aligned(
            &["SINK", "DEAD", "NOTE"],
            &[Align::Left, Align::Right, Align::Left],
            &[
                vec!["pyun".into(), p.red("12"), "x".into()],
                vec!["epeis".into(), "0".into(), "y".into()],
            ],
        );
        let plain: Vec<String> = t
            .lines()
            .map(|l| l.replace("\x1b[31m", "").replace("\x1b[0m", ""))
            .collect();
        assert_eq!(
            plain,
            ["SINK   DEAD  NOTE", "pyun     12  x", "epeis     0  y"]
        );
    }

    #[test]
    fn wide_characters_take_two_columns() {
        assert_eq!(width("签名验证不通过"), 14);
        let t = render_aligned(
            &["HINT", "N"],
            &[],
            &[
                vec!["签名".into(), "1".into()],
                vec!["ab".into(), "2".into()],
            ],
        );
        assert_eq!(t, "HINT  N\n签名  1\nab    2\n");
        assert_eq!(clip("签名验证不通过", 6), "签名…");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }

    #[test]
    fn ages_are_short_and_relative() {
        assert_eq!(age(300), "<1s");
        assert_eq!(age(42_000), "42s");
        assert_eq!(age(185_000), "3m 5s");
        assert_eq!(age(180_000), "3m");
        assert_eq!(age(25 * 60_000 + 5_000), "25m");
        assert_eq!(age(2 * 3_600_000 + 5 * 60_000), "2h 5m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
        assert_eq!(age(30 * 86_400_000), "30d");
        let now = 1_000_000_000;
        assert_eq!(relative(now - 180_000, now), "3m ago");
        assert_eq!(relative(now + 5_000, now), "in 5s");
        assert_eq!(relative(now - 10, now), "just now");
    }

    #[test]
    fn no_colour_means_no_escape_codes() {
        let p = Paint::with(false);
        assert_eq!(p.red("x"), "x");
        assert_eq!(p.bad_count(3), "3");
    }
}

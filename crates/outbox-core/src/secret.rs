//! Secrets (app_secret, DYNAMIC_KEY, token) are held in [`Secret`], whose `Debug` and
//! `Display` never show the value, so a secret cannot reach a log line, an error text or the
//! database by accident: the only way out is [`Secret::expose`], which is greppable.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for building a request. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Removes every occurrence of the secret from `text` (for error texts that quote a
    /// request or a reply, which could echo it back).
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_string();
        }
        text.replace(&self.0, "[redacted]")
    }

    /// [`Secret::scrub`] for a text that was cut short (a reply read up to a cap): a secret
    /// cut at the end no longer matches whole, so a tail that begins the secret (4 bytes or
    /// more) is redacted too.
    pub fn scrub_cut(&self, text: &str) -> String {
        let mut s = self.scrub(text);
        let min = 4.min(self.0.len());
        if min == 0 {
            return s;
        }
        let longest = (min..self.0.len())
            .rev()
            .find(|&n| self.0.is_char_boundary(n) && s.ends_with(&self.0[..n]));
        if let Some(n) = longest {
            s.truncate(s.len() - n);
            s.push_str("[redacted]");
        }
        s
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_its_value() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
        assert_eq!(
            s.scrub("bad key hunter2-very-secret!"),
            "bad key [redacted]!"
        );
    }

    #[test]
    fn a_secret_cut_at_the_end_is_scrubbed_too() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(s.scrub_cut("echo: hunter2-ve"), "echo: [redacted]");
        assert_eq!(
            s.scrub_cut("hunter2-very-secret and hunt"),
            "[redacted] and [redacted]"
        );
        assert_eq!(s.scrub_cut("ends with hu"), "ends with hu");
        assert_eq!(s.scrub_cut("nothing here"), "nothing here");
    }
}

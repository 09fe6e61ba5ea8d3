//! Logs through tracing, on stderr: readable text on a terminal, one JSON object per line
//! otherwise (JSON keeps fields searchable), unless `--log-format` says which. `RUST_LOG` wins
//! over the config's `log_level`; the level can change on reload.
//!
//! Under systemd, stderr is a stream to the journal, which reads a `<N>` syslog priority at
//! the start of each line (sd-daemon(3)); without it every line is stored at the unit's
//! default priority and `journalctl -p warning` shows nothing. So when stderr is that stream
//! (`JOURNAL_STREAM` names its device and inode, systemd.exec(5)), each line gets its prefix.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The `--log-format` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, `key=value` fields.
    Text,
    /// One JSON object per event, fields as JSON values.
    Json,
}

/// Changes the log filter of the running process.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

impl LogLevel {
    /// Applies a new `log_level` from a reloaded config, unless `RUST_LOG` pins it.
    pub fn set(&self, level: Option<&str>) {
        if self.from_env {
            return;
        }
        match EnvFilter::try_new(level.unwrap_or("info")) {
            Ok(f) => {
                let _ = self.handle.reload(f);
            }
            Err(e) => {
                tracing::error!(error = %e, "invalid log_level in the reloaded config; keeping the old one")
            }
        }
    }
}

/// Installs the global subscriber. `format`: `None` picks text on a terminal, JSON otherwise.
pub fn init(level: Option<&str>, format: Option<LogFormat>) -> LogLevel {
    let env = EnvFilter::try_from_default_env().ok();
    let from_env = env.is_some();
    let filter = env
        .or_else(|| EnvFilter::try_new(level.unwrap_or("info")).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let terminal = std::io::stderr().is_terminal();
    let writer = Stderr {
        journal: stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let registry = tracing_subscriber::registry().with(filter);
    let format = format.unwrap_or(if terminal {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    match format {
        LogFormat::Text => registry
            .with(fmt.with_target(false).with_ansi(terminal))
            .init(),
        LogFormat::Json => registry
            .with(fmt.json().with_current_span(false).flatten_event(true))
            .init(),
    }
    LogLevel { handle, from_env }
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM` is
/// `DEVICE:INODE` of that stream, and only counts while stderr is still the same file (a
/// child whose stderr was redirected inherits the variable, not the stream).
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.trim().parse::<u64>(), ino.trim().parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3)).
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Makes the writer of each event: stderr, with the priority prefix when it is the journal.
struct Stderr {
    journal: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            prefix: None,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> EventWriter {
        EventWriter {
            prefix: self.journal.then(|| priority(meta.level())),
            buf: Vec::new(),
        }
    }
}

/// Collects one formatted event and writes it to stderr in one go when dropped, with the
/// prefix at the start of every line (a message may span lines; each is a journal entry).
struct EventWriter {
    prefix: Option<u8>,
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let out = match self.prefix {
            None => std::mem::take(&mut self.buf),
            Some(p) => prefix_lines(&self.buf, p),
        };
        let _ = std::io::stderr().lock().write_all(&out);
    }
}

fn prefix_lines(text: &[u8], priority: u8) -> Vec<u8> {
    let prefix = format!("<{priority}>");
    let mut out = Vec::with_capacity(text.len() + prefix.len());
    for line in text.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_prefix() {
        assert_eq!(prefix_lines(b"one\ntwo\n", 4), b"<4>one\n<4>two\n");
        assert_eq!(prefix_lines(b"no newline", 3), b"<3>no newline");
        assert_eq!(prefix_lines(b"", 6), b"");
    }

    #[test]
    fn syslog_priorities_of_the_levels() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:")));
        let fd = std::io::stderr().as_fd().try_clone_to_owned().unwrap();
        let m = std::fs::File::from(fd).metadata().unwrap();
        assert!(stderr_is_journal(Some(&format!("{}:{}", m.dev(), m.ino()))));
        assert!(!stderr_is_journal(Some(&format!(
            "{}:{}",
            m.dev(),
            m.ino() + 1
        ))));
    }
}

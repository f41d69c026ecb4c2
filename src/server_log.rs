//! The server's own logs (spec §1.7): nowhere, stdout, or the systemd
//! journal via its native datagram protocol.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;

use crate::cli::{LogLevel, ServerLogDriver};

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Sends each formatted event as one journal entry (`PRIORITY=5`,
/// `MESSAGE=<line>`). If journald is absent the lines are dropped.
pub struct JournalWriter {
    socket: Option<UnixDatagram>,
}

impl JournalWriter {
    fn connect() -> Self {
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.connect(JOURNAL_SOCKET).map(|()| s))
            .ok();
        JournalWriter { socket }
    }
}

/// Encodes one native-protocol entry with `PRIORITY=5` and a binary-safe
/// `MESSAGE` field (length-prefixed, so newlines are allowed).
pub fn journal_entry(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 32);
    out.extend_from_slice(b"PRIORITY=5\nMESSAGE\n");
    out.extend_from_slice(&(message.len() as u64).to_le_bytes());
    out.extend_from_slice(message);
    out.push(b'\n');
    out
}

/// The `MakeWriter` handed to tracing-subscriber for the journal driver.
pub struct MakeJournalWriter(Mutex<JournalWriter>);

pub struct JournalLine<'a>(&'a Mutex<JournalWriter>);

impl Write for JournalLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(w) = self.0.lock() {
            if let Some(s) = &w.socket {
                let line = buf.strip_suffix(b"\n").unwrap_or(buf);
                let _ = s.send(&journal_entry(line));
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for MakeJournalWriter {
    type Writer = JournalLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        JournalLine(&self.0)
    }
}

/// Installs the global subscriber for the chosen driver and level.
pub fn init(driver: ServerLogDriver, level: LogLevel) {
    let filter = match level {
        LogLevel::Trace => tracing::level_filters::LevelFilter::TRACE,
        LogLevel::Debug => tracing::level_filters::LevelFilter::DEBUG,
        LogLevel::Info => tracing::level_filters::LevelFilter::INFO,
        LogLevel::Warn => tracing::level_filters::LevelFilter::WARN,
        LogLevel::Error => tracing::level_filters::LevelFilter::ERROR,
        LogLevel::Off => tracing::level_filters::LevelFilter::OFF,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_ansi(false)
        .with_line_number(true);
    let _ = match driver {
        ServerLogDriver::None => return,
        ServerLogDriver::Stdout => builder.with_writer(io::stdout).try_init(),
        ServerLogDriver::Systemd => builder
            .without_time()
            .with_writer(MakeJournalWriter(Mutex::new(JournalWriter::connect())))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_is_length_prefixed() {
        let e = super::journal_entry(b"a\nb");
        assert_eq!(&e[..19], b"PRIORITY=5\nMESSAGE\n");
        assert_eq!(&e[19..27], &3u64.to_le_bytes());
        assert_eq!(&e[27..], b"a\nb\n");
    }
}

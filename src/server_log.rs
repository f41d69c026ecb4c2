//! The server's own logs (spec §1.7): nowhere, stdout, or the systemd
//! journal via its native datagram protocol.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

use crate::cli::{LogLevel, ServerLogDriver};
use crate::log::journald::{JournalSink, JOURNAL_SOCKET};

/// After the journal could not be reached, lines are dropped (counted) for
/// this long before the next try: a journald that is down costs one failed
/// send per second, not one per line.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Sends each formatted event as one journal entry (`PRIORITY=5`,
/// `MESSAGE=<line>`) without ever blocking the thread that logs: a full
/// journal queue drops the line, an absent or restarted journald drops
/// lines until a retry (at most one per [`RECONNECT_INTERVAL`]) reaches it
/// again. What was lost is reported in the journal itself once it takes
/// entries again (not through `tracing`, which would re-enter this writer).
pub struct JournalWriter {
    /// `None` if no socket could be made at all (lines are dropped).
    sink: Option<JournalSink>,
    /// The journal was unreachable; the next try is due then.
    retry_at: Option<Instant>,
    /// Lines lost while the journal was unreachable, not yet reported.
    lost: u64,
}

impl JournalWriter {
    fn new(socket_path: &Path) -> Self {
        JournalWriter {
            sink: JournalSink::new(socket_path).ok(),
            retry_at: None,
            lost: 0,
        }
    }

    /// Sends one line, or drops it (counted).
    fn send_line(&mut self, line: &[u8]) {
        let Some(sink) = &mut self.sink else {
            return;
        };
        let now = Instant::now();
        if self.retry_at.is_some_and(|at| now < at) {
            self.lost += 1;
            return;
        }
        if sink.send_entry(line).is_err() {
            self.retry_at = Some(now + RECONNECT_INTERVAL);
            self.lost += 1;
            return;
        }
        self.retry_at = None;
        if self.lost > 0 {
            let notice = format!(
                "ringmon: {} log lines were lost while the journal was unreachable",
                self.lost
            );
            if sink.send_entry(notice.as_bytes()).is_ok() {
                self.lost = 0;
            }
        }
        if let Some(dropped) = sink.drops_to_report() {
            let notice = format!(
                "ringmon: {dropped} log lines were dropped: the journal did not keep up \
                 ({} in all)",
                sink.dropped()
            );
            let _ = sink.send_entry(notice.as_bytes());
        }
    }
}

/// Encodes one native-protocol entry with `PRIORITY=5` and a binary-safe
/// `MESSAGE` field (length-prefixed, so newlines are allowed).
pub fn journal_entry(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 32);
    crate::log::journald::encode_entry(&mut out, message);
    out
}

/// The `MakeWriter` handed to tracing-subscriber for the journal driver.
pub struct MakeJournalWriter(Mutex<JournalWriter>);

pub struct JournalLine<'a>(&'a Mutex<JournalWriter>);

impl Write for JournalLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut w) = self.0.lock() {
            w.send_line(buf.strip_suffix(b"\n").unwrap_or(buf));
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
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The HTTP/2 crate of the span exporter logs every frame at debug and
    // trace: at most its info lines go to the server's log.
    let targets = tracing_subscriber::filter::Targets::new()
        .with_default(filter)
        .with_target("h2", filter.min(tracing::level_filters::LevelFilter::INFO));
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_ansi(false)
        .with_line_number(true);
    let _ = match driver {
        ServerLogDriver::None => return,
        ServerLogDriver::Stdout => builder
            .with_writer(io::stdout)
            .finish()
            .with(targets)
            .try_init(),
        ServerLogDriver::Systemd => builder
            .without_time()
            .with_writer(MakeJournalWriter(Mutex::new(JournalWriter::new(
                Path::new(JOURNAL_SOCKET),
            ))))
            .finish()
            .with(targets)
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

    #[test]
    fn lines_lost_while_the_journal_is_away_are_reported_when_it_is_back() {
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("ringmon-srvlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let mut writer = super::JournalWriter::new(&path);
        writer.send_line(b"nobody listens");
        writer.send_line(b"still nobody");
        assert_eq!(writer.lost, 2);
        let journal = UnixDatagram::bind(&path).unwrap();
        journal.set_nonblocking(true).unwrap();
        writer.retry_at = Some(std::time::Instant::now());
        writer.send_line(b"back");
        let mut got = Vec::new();
        let mut buffer = [0u8; 512];
        while let Ok(len) = journal.recv(&mut buffer) {
            got.push(buffer[..len].to_vec());
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], super::journal_entry(b"back"));
        assert!(String::from_utf8_lossy(&got[1]).contains("2 log lines were lost"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

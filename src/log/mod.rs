//! Container log drivers: pure encoders (`cri`, `json`) and the file writers
//! that the engine workers feed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub mod cri;
pub mod journald;
pub mod json;
pub mod timestamp;

use journald::JournalSink;
pub use timestamp::TimestampCache;

/// Which container stream a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// The log formats of `LogDriver.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Cri,
    Json,
    Journald,
}

/// Whose conventions a log follows where conmon-rs and the C conmon differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogDialect {
    /// conmon-rs (the RPC server): files are truncated when opened,
    /// timestamps are RFC 3339 with trailing fraction zeros trimmed and `Z`,
    /// a line left open at EOF is closed with an `F` record, journald
    /// entries carry `PRIORITY=5` and the line with its newline.
    #[default]
    ConmonRs,
    /// The C conmon (conmon mode): files are appended to (a restarted
    /// container keeps its log), timestamps have nine fraction digits and a
    /// numeric offset, a `P` record at EOF stays as it is (CRI-O's exec sync
    /// reads the output back and would gain a newline), journald entries
    /// carry conmon's fields (`journal_fields`, priority 6 for stdout and 3
    /// for stderr, `CONTAINER_PARTIAL_MESSAGE=true` for a partial line) and
    /// the line without its newline.
    Conmon,
}

/// One requested log driver, already validated by the RPC layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSpec {
    pub format: LogFormat,
    /// Absolute path (CRI, JSON); empty for journald.
    pub path: PathBuf,
    /// Bytes; 0 = unlimited.
    pub max_size: u64,
    /// Bytes of records after which nothing more is written to this log,
    /// over its whole life (conmon's `--log-global-size-max`, which CRI-O
    /// sets for exec sync); 0 = unlimited. Checked before each record, so
    /// the file may end up to one record above it.
    pub global_max: u64,
    pub dialect: LogDialect,
    /// Extra fields of every journal entry (journald with the conmon
    /// dialect), in order.
    pub journal_fields: Vec<(String, String)>,
}

impl LogSpec {
    /// A conmon-rs log of `format` at `path` with a `max_size`.
    pub fn new(format: LogFormat, path: PathBuf, max_size: u64) -> LogSpec {
        LogSpec {
            format,
            path,
            max_size,
            global_max: 0,
            dialect: LogDialect::ConmonRs,
            journal_fields: Vec::new(),
        }
    }
}

/// Errors of the log layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// open log file path '{path}' (logPath): {source}
    #[error("open log file path '{path}' (logPath): {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// write log file '{path}': {source}
    #[error("write log file '{path}': {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The driver is not available in this build.
    #[error("log driver {0:?} is not supported yet")]
    Unsupported(LogFormat),
}

/// Once this many encoded bytes are pending, they are written out even in the
/// middle of a chunk: keeps the buffer bounded (a 64 KiB chunk of empty lines
/// encodes to ~3 MiB of CRI records) while still issuing large writes.
const WRITE_THRESHOLD: usize = 256 * 1024;

/// An open log destination. Owned by exactly one engine worker once the
/// container is registered; opened on the control thread so that an open
/// error reaches the RPC caller.
pub struct LogWriter {
    destination: Destination,
}

enum Destination {
    File(LogFile),
    Journal(JournalSink),
}

/// A CRI or JSON log file with its encoding buffer and `maxSize` accounting.
struct LogFile {
    format: LogFormat,
    path: PathBuf,
    file: File,
    /// 0 = unlimited.
    max_size: u64,
    /// Bytes counted against `max_size` since the last truncation (with the
    /// spec's quirks, see `write_cri` and `write_json`).
    written: u64,
    /// 0 = unlimited; see [`LogSpec::global_max`].
    global_max: u64,
    /// Bytes of records encoded over the writer's life (for `global_max`).
    total: u64,
    dialect: LogDialect,
    /// Encoded records not yet written to `file`; reused across chunks.
    pending: Vec<u8>,
    /// Per stream (stdout, stderr): the last CRI record was a `P`, so the
    /// line is still open (closed at EOF by `end_stream`).
    line_open: [bool; 2],
    /// A failed write left a record cut short at the end of the file.
    torn: bool,
    /// The file's identity and where it ends (what this writer put there),
    /// for the journal's ledger (issue 16).
    end: LogEnd,
}

/// Where a log file ends: its identity (to find it again after a worker
/// restart) and its size. Recorded in the output journal's ledger.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogEnd {
    pub dev: u64,
    pub ino: u64,
    pub end: u64,
}

impl LogEnd {
    /// `file`'s identity and current size (all zero if fstat fails: such
    /// an end matches no file on resume, which then cuts a torn record the
    /// old way).
    fn of(file: &File) -> LogEnd {
        use std::os::unix::fs::MetadataExt;
        file.metadata().map_or(LogEnd::default(), |m| LogEnd {
            dev: m.dev(),
            ino: m.ino(),
            end: m.len(),
        })
    }
}

impl LogWriter {
    /// Opens (create + truncate) the destination described by `spec`.
    pub fn open(spec: &LogSpec) -> Result<LogWriter, LogError> {
        if spec.format == LogFormat::Journald {
            let socket = Path::new(journald::JOURNAL_SOCKET);
            return match spec.dialect {
                LogDialect::ConmonRs => LogWriter::journal_at(socket),
                LogDialect::Conmon => {
                    let sink = JournalSink::with_conmon_fields(socket, &spec.journal_fields)
                        .map_err(|source| LogError::Open {
                            path: socket.to_path_buf(),
                            source,
                        })?;
                    Ok(LogWriter {
                        destination: Destination::Journal(sink),
                    })
                }
            };
        }
        let file = match spec.dialect {
            LogDialect::ConmonRs => open_truncated(&spec.path)?,
            LogDialect::Conmon => {
                crate::sys::fs::open_log_file_appending(&spec.path).map_err(|source| {
                    LogError::Open {
                        path: spec.path.clone(),
                        source,
                    }
                })?
            }
        };
        Ok(LogWriter::over_file(spec, file))
    }

    /// A file writer over `file`, already opened for `spec`. Tests use it
    /// for files that [`LogWriter::open`] refuses (a device that fails
    /// every write).
    pub(crate) fn over_file(spec: &LogSpec, file: File) -> LogWriter {
        // conmon's size cap is on the file: a log appended to (a restarted
        // container's) starts with what it holds.
        let written = match spec.dialect {
            LogDialect::ConmonRs => 0,
            LogDialect::Conmon => file.metadata().map(|m| m.len()).unwrap_or(0),
        };
        LogWriter {
            destination: Destination::File(LogFile {
                format: spec.format,
                path: spec.path.clone(),
                max_size: spec.max_size,
                written,
                global_max: spec.global_max,
                total: 0,
                dialect: spec.dialect,
                pending: Vec::with_capacity(WRITE_THRESHOLD),
                line_open: [false; 2],
                torn: false,
                end: LogEnd::of(&file),
                file,
            }),
        }
    }

    /// Opens the destination of `spec` again for a container resumed after
    /// a crash of the worker that logged it (issue 16): a file is appended
    /// to, not truncated, after its torn last record is cut (see
    /// [`torn_record_cut`]), and what it holds counts against `max_size`.
    /// Returns the writer and how many bytes were cut.
    pub fn open_resumed(spec: &LogSpec) -> Result<(LogWriter, u64), LogError> {
        LogWriter::open_resumed_at(spec, &[])
    }

    /// [`LogWriter::open_resumed`] for a container whose output journal's
    /// ledger recorded `ends`: a file listed there (same device and inode)
    /// is cut back to its recorded end, which drops whatever the dead
    /// worker wrote after its last commit (the journal replays those
    /// bytes). A file that is shorter than recorded was truncated since
    /// (`max_size`, or by hand) and is not listed: the torn last record is
    /// cut instead.
    pub fn open_resumed_at(spec: &LogSpec, ends: &[LogEnd]) -> Result<(LogWriter, u64), LogError> {
        if spec.format == LogFormat::Journald {
            return Ok((LogWriter::open(spec)?, 0));
        }
        let open_error = |source| LogError::Open {
            path: spec.path.clone(),
            source,
        };
        let file = crate::sys::fs::open_log_file_resumed(&spec.path).map_err(open_error)?;
        let now = LogEnd::of(&file);
        let recorded = ends
            .iter()
            .find(|e| e.dev == now.dev && e.ino == now.ino && e.end <= now.end && now.ino != 0);
        let mut cut = 0;
        if let Some(e) = recorded.filter(|e| e.end < now.end) {
            crate::sys::fs::truncate_file(&file, e.end, &spec.path).map_err(open_error)?;
            cut = now.end - e.end;
        }
        // Committed ends fall on record boundaries, except after a write
        // that failed part-way (ENOSPC) and was committed as handled: that
        // half record must go too, or the next record would be glued to it.
        cut += cut_torn_record(&file, &spec.path).map_err(open_error)?;
        let kept = file.metadata().map_err(open_error)?.len();
        let mut writer = LogWriter::over_file(spec, file);
        if let Destination::File(log) = &mut writer.destination {
            log.written = kept;
            log.end.end = kept;
        }
        Ok((writer, cut))
    }

    /// Gives back the pages of the encoding buffer that a burst made
    /// resident (the buffer is empty between chunks; its allocation stays,
    /// so the next burst does not reallocate).
    pub fn release_idle_memory(&mut self) {
        if let Destination::File(log) = &mut self.destination {
            crate::sys::process::discard_spare_capacity(&mut log.pending);
        }
    }

    /// A journald writer sending to the native-protocol socket at
    /// `socket_path` (tests point it at their own socket).
    pub fn journal_at(socket_path: &Path) -> Result<LogWriter, LogError> {
        let sink = JournalSink::new(socket_path).map_err(|source| LogError::Open {
            path: socket_path.to_path_buf(),
            source,
        })?;
        Ok(LogWriter {
            destination: Destination::Journal(sink),
        })
    }

    /// Encodes one chunk read from `stream` and writes it out. `ts` is the
    /// worker's timestamp cache, refreshed by the caller once per chunk.
    pub fn write_chunk(
        &mut self,
        stream: StreamKind,
        chunk: &[u8],
        ts: &TimestampCache,
    ) -> Result<(), LogError> {
        let log = match &mut self.destination {
            Destination::File(log) => log,
            Destination::Journal(sink) => {
                return sink
                    .send_chunk(stream, chunk)
                    .map_err(|source| LogError::Write {
                        path: sink.socket_path().to_path_buf(),
                        source,
                    })
            }
        };
        let result = match log.format {
            LogFormat::Cri => {
                let timestamp = match log.dialect {
                    LogDialect::ConmonRs => ts.as_bytes(),
                    LogDialect::Conmon => ts.conmon_bytes(),
                };
                log.write_cri(stream, chunk, timestamp)
            }
            LogFormat::Json => log.write_json(stream, chunk, ts.unix_secs()),
            LogFormat::Journald => Err(LogError::Unsupported(LogFormat::Journald)),
        };
        if result.is_err() {
            // Whatever was pending is lost with the failed write; never let
            // the buffer grow on a broken destination.
            log.pending.clear();
        }
        result
    }

    /// The stream reached EOF. CRI: if its output ended in the middle of a
    /// line, the line is closed with an `F` record holding just the line end
    /// (readers such as the kubelet only treat a line as complete at `F`;
    /// conmon leaves the `P` dangling). The log then shows a newline the
    /// container did not write: CRI has no record for "ended mid-line".
    /// Other formats: nothing to do.
    pub fn end_stream(&mut self, stream: StreamKind, ts: &TimestampCache) -> Result<(), LogError> {
        let Destination::File(log) = &mut self.destination else {
            return Ok(());
        };
        if log.format != LogFormat::Cri
            || log.dialect == LogDialect::Conmon
            || !log.line_open[stream_index(stream)]
        {
            return Ok(());
        }
        let result = log.write_cri(stream, b"\n", ts.as_bytes());
        if result.is_err() {
            log.pending.clear();
        }
        result
    }

    /// A second handle on the log file (journald destinations have none),
    /// so that the file can be synced after the writer is gone.
    pub fn duplicate_file(&self) -> Option<File> {
        match &self.destination {
            Destination::File(log) => log.file.try_clone().ok(),
            Destination::Journal(_) => None,
        }
    }

    /// Where the log file ends now (`None`: a journald destination). Call
    /// after [`LogWriter::flush`] for an end that holds every record.
    pub fn file_end(&self) -> Option<LogEnd> {
        match &self.destination {
            Destination::File(log) => Some(log.end),
            Destination::Journal(_) => None,
        }
    }

    /// Flushes buffered records to the file.
    pub fn flush(&mut self) -> Result<(), LogError> {
        match &mut self.destination {
            Destination::File(log) => log.write_pending(),
            // Every entry is sent as it is encoded.
            Destination::Journal(_) => Ok(()),
        }
    }

    /// Reopens the same path with truncation (kubelet rotation), resetting the
    /// size counter. No-op for journald.
    ///
    /// Pending records are written to the old file first: they were produced
    /// before the rotation and belong to the renamed file. No fsync: the old
    /// file stays intact on disk under its new name either way.
    pub fn reopen(&mut self) -> Result<(), LogError> {
        let Destination::File(log) = &mut self.destination else {
            return Ok(());
        };
        let flushed = log.write_pending();
        log.pending.clear();
        log.reopen_truncated()?;
        flushed
    }

    /// The file (or journal socket) this writer writes to.
    pub fn path(&self) -> &Path {
        match &self.destination {
            Destination::File(log) => &log.path,
            Destination::Journal(sink) => sink.socket_path(),
        }
    }

    /// The log format of this writer.
    pub fn format(&self) -> LogFormat {
        match &self.destination {
            Destination::File(log) => log.format,
            Destination::Journal(_) => LogFormat::Journald,
        }
    }
}

impl LogFile {
    /// Spec §4.2 size limit, per record: if the record does not fit, the file
    /// is truncated and the record is written **without being counted**
    /// (upstream quirk that the "reopen logs based on max size" test relies
    /// on). Counter overflow also truncates.
    fn write_cri(
        &mut self,
        stream: StreamKind,
        chunk: &[u8],
        timestamp: &[u8],
    ) -> Result<(), LogError> {
        for segment in cri::segments(chunk) {
            if self.global_max > 0 {
                if self.total >= self.global_max {
                    // Full for good: the rest is dropped, the stream is
                    // still drained.
                    return Ok(());
                }
                self.total += segment.record_len(timestamp.len()) as u64;
            }
            if self.max_size > 0 {
                let cost = segment.record_len(timestamp.len()) as u64;
                match self.written.checked_add(cost) {
                    Some(total) if total <= self.max_size => self.written = total,
                    _ => {
                        self.truncate_for_max_size()?;
                        // conmon counts the record that starts the fresh
                        // file; conmon-rs does not (a quirk its clients'
                        // tests rely on).
                        if self.dialect == LogDialect::Conmon {
                            self.written = cost;
                        }
                    }
                }
            }
            self.make_room(segment.record_len(timestamp.len()))?;
            self.line_open[stream_index(stream)] = segment.partial;
            cri::encode_segment(&mut self.pending, timestamp, stream, segment);
        }
        Ok(())
    }

    /// Spec §4.3 size limit, per entry: the entry is counted first; if the
    /// total then exceeds `max_size`, the file is truncated and the entry is
    /// written uncounted.
    fn write_json(
        &mut self,
        stream: StreamKind,
        chunk: &[u8],
        unix_secs: u64,
    ) -> Result<(), LogError> {
        for segment in cri::segments(chunk) {
            self.make_room(json::max_entry_len(segment.bytes.len()))?;
            let entry_start = self.pending.len();
            json::encode_segment(&mut self.pending, unix_secs, stream, segment.bytes);
            if self.max_size > 0 {
                let cost = (self.pending.len() - entry_start) as u64;
                match self.written.checked_add(cost) {
                    Some(total) if total <= self.max_size => self.written = total,
                    _ => {
                        // Entries before this one die with the truncation;
                        // this one is written to the fresh file.
                        self.pending.drain(..entry_start);
                        self.reopen_truncated()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the pending records out if `record_len` more bytes would push
    /// the buffer past `WRITE_THRESHOLD`, so that it never reallocates for
    /// records of normal size (bounded memory, large writes).
    fn make_room(&mut self, record_len: usize) -> Result<(), LogError> {
        if self.pending.len() + record_len > WRITE_THRESHOLD {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Truncating reopen forced by `max_size`. Records still pending would be
    /// lost by the truncation anyway, so they are dropped instead of written.
    /// Upstream fsyncs the file before truncating it; that is skipped because
    /// the content is discarded right after, so durability buys nothing.
    fn truncate_for_max_size(&mut self) -> Result<(), LogError> {
        self.pending.clear();
        self.reopen_truncated()
    }

    fn reopen_truncated(&mut self) -> Result<(), LogError> {
        self.file = open_truncated(&self.path)?;
        self.end = LogEnd::of(&self.file);
        self.written = 0;
        self.torn = false;
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.write_records();
        self.pending.clear();
        result.map_err(|source| LogError::Write {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes `pending` out. A write that fails part-way (ENOSPC) leaves a
    /// record cut short in the file; it is ended with a line end before the
    /// next records, so the file stays one record per line.
    fn write_records(&mut self) -> std::io::Result<()> {
        if self.torn {
            self.file.write_all(b"\n")?;
            self.end.end += 1;
            self.torn = false;
        }
        let mut written = 0;
        while written < self.pending.len() {
            match self.file.write(&self.pending[written..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    self.end.end += n as u64;
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.torn = written > 0 && self.pending[written - 1] != b'\n';
                    return Err(err);
                }
            }
        }
        Ok(())
    }
}

/// How much of a log's tail [`cut_torn_record`] reads at a time.
const TAIL_WINDOW: usize = 64 * 1024;

/// How far back [`cut_torn_record`] looks for a line end. Every record this
/// module writes is far shorter (one read chunk, escaped); a file with no
/// line end that far back is not one of ours and is left as it is.
const TAIL_SCAN_MAX: u64 = 8 * 1024 * 1024;

/// What to do with the tail of a line-based log file (CRI, JSON) so that
/// it ends with a whole record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailCut {
    /// It ends with a line end (or is empty): keep it all.
    Keep,
    /// Cut the file to this length: just after its last line end.
    At(u64),
    /// No line end in this window: look at the bytes before it.
    LookBefore,
}

/// Decides the cut for `window`, the file's bytes from offset
/// `window_start`; `at_end`: the window ends where the file does. A writer
/// killed in the middle of a write leaves a record without its line end;
/// readers would glue the next record to it, so it goes.
pub fn torn_record_cut(window: &[u8], window_start: u64, at_end: bool) -> TailCut {
    if at_end && matches!(window.last(), None | Some(b'\n')) {
        return TailCut::Keep;
    }
    match memchr::memrchr(b'\n', window) {
        Some(i) => TailCut::At(window_start + i as u64 + 1),
        None if window_start == 0 => TailCut::At(0),
        None => TailCut::LookBefore,
    }
}

/// Cuts a torn last record off `file` (see [`torn_record_cut`]); returns
/// the bytes cut.
fn cut_torn_record(file: &File, path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut window = Vec::new();
    while len - end < TAIL_SCAN_MAX {
        let start = end.saturating_sub(TAIL_WINDOW as u64);
        window.resize((end - start) as usize, 0);
        file.read_exact_at(&mut window, start)?;
        match torn_record_cut(&window, start, end == len) {
            TailCut::Keep => return Ok(0),
            TailCut::At(cut) => {
                crate::sys::fs::truncate_file(file, cut, path)?;
                return Ok(len - cut);
            }
            TailCut::LookBefore => end = start,
        }
    }
    Ok(0)
}

fn stream_index(stream: StreamKind) -> usize {
    match stream {
        StreamKind::Stdout => 0,
        StreamKind::Stderr => 1,
    }
}

/// Create + truncate + read/write, close-on-exec, mode 0600 for every
/// format. Never through a symlink at the final component nor through one
/// in the directory chain other than a system symlink (`sys::fs`), and
/// never anything but a regular file.
fn open_truncated(path: &Path) -> Result<File, LogError> {
    crate::sys::fs::open_log_file(path).map_err(|source| LogError::Open {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;

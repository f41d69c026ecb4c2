//! `ringmon ctl logs`: prints a container's log file (CRI or JSON) as the
//! text the container wrote, stdout's lines to stdout and stderr's to
//! stderr; `-f` goes on reading as the file grows (reopening it after a
//! rotation or truncation) until the container has exited and the file is
//! drained.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use super::log_lines::{parse_line, LogFileKind, Pipe, Record};
use super::{log_file, CtlError, Server};

/// How often `-f` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Most bytes read from the log at once: a log has no size limit unless
/// the container was given one, and ctl's memory must not follow it.
const READ_CHUNK: u64 = 1024 * 1024;
/// How often `-f` asks the server whether the container still runs.
const STATE_POLL: Duration = Duration::from_millis(500);

pub struct Options {
    pub follow: bool,
    /// Nanoseconds since the epoch: skip records older than this.
    pub since: Option<i64>,
    /// Print only the last N lines.
    pub tail: Option<usize>,
}

/// An open log file and how far it has been read.
struct Reader {
    path: String,
    file: File,
    inode: u64,
    offset: u64,
    /// The start of a line whose end was not written yet.
    pending: Vec<u8>,
    /// The last read reached the end of the file.
    caught_up: bool,
}

impl Reader {
    fn open(path: &str) -> Result<Reader, CtlError> {
        let file = File::open(path).map_err(|source| CtlError::File {
            what: "open log",
            path: path.to_string(),
            source,
        })?;
        let inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
        Ok(Reader {
            path: path.to_string(),
            file,
            inode,
            offset: 0,
            pending: Vec::new(),
            caught_up: false,
        })
    }

    /// The complete lines written since the last call. Starts over from the
    /// beginning of the file when it was replaced (rotation) or truncated.
    fn new_lines(&mut self) -> Result<Vec<Vec<u8>>, CtlError> {
        let io = |source| CtlError::File {
            what: "read log",
            path: self.path.clone(),
            source,
        };
        if let Ok(meta) = std::fs::metadata(&self.path) {
            if meta.ino() != self.inode {
                // Rotated: finish the old file, then go on with the new one.
                let mut lines = self.drain()?;
                if let Ok(fresh) = Reader::open(&self.path) {
                    *self = fresh;
                    lines.extend(self.drain()?);
                }
                return Ok(lines);
            }
        }
        let len = self.file.metadata().map_err(io)?.len();
        if len < self.offset {
            self.offset = 0;
            self.pending.clear();
            self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        }
        self.drain()
    }

    /// Hands every complete line up to the end of the file to `each`, a
    /// chunk at a time.
    fn read_to_end(&mut self, mut each: impl FnMut(&[Vec<u8>])) -> Result<(), CtlError> {
        loop {
            each(&self.new_lines()?);
            if self.caught_up {
                return Ok(());
            }
        }
    }

    fn drain(&mut self) -> Result<Vec<Vec<u8>>, CtlError> {
        let mut data = std::mem::take(&mut self.pending);
        let start = data.len();
        (&mut self.file)
            .take(READ_CHUNK)
            .read_to_end(&mut data)
            .map_err(|source| CtlError::File {
                what: "read log",
                path: self.path.clone(),
                source,
            })?;
        let read = (data.len() - start) as u64;
        self.offset += read;
        self.caught_up = read < READ_CHUNK;
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.pending = data.split_off(complete);
        Ok(data
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }
}

/// Where records go; a closed stdout (`| head`) ends the command quietly.
struct Printer {
    kind: LogFileKind,
    since: Option<i64>,
    closed: bool,
    /// Lines still to skip before printing (`--tail`).
    skip: usize,
}

impl Printer {
    fn record(&mut self, r: &Record<'_>) {
        if self.closed || self.since.is_some_and(|s| r.unix_nanos < s) {
            return;
        }
        let written = match r.pipe {
            Pipe::Stdout => write_record(&mut std::io::stdout().lock(), r),
            Pipe::Stderr => write_record(&mut std::io::stderr().lock(), r),
        };
        if written.is_err() {
            self.closed = true;
        }
    }

    fn lines(&mut self, lines: &[Vec<u8>]) {
        for line in lines {
            let parsed = parse_line(self.kind, line);
            if self.skip > 0 {
                if ends_line(&parsed) {
                    self.skip -= 1;
                }
                continue;
            }
            match parsed {
                Ok(r) => self.record(&r),
                Err(e) => eprintln!("ringmon ctl logs: skipped a line: {e}"),
            }
        }
    }
}

fn write_record(out: &mut impl Write, r: &Record<'_>) -> std::io::Result<()> {
    out.write_all(&r.message)?;
    if !r.partial {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Whether a record ends a log line (one that cannot be parsed counts as
/// a line of its own).
fn ends_line(parsed: &Result<Record<'_>, impl std::fmt::Display>) -> bool {
    parsed.as_ref().map_or(true, |r| !r.partial)
}

/// Log lines in the records `lines`, given that `open` says whether the
/// record before them left a line open; returns the count and whether the
/// last record leaves one open (an open last line counts as a line).
fn count_lines(kind: LogFileKind, lines: &[Vec<u8>], open: bool) -> (usize, bool) {
    lines.iter().fold((0, open), |(ends, _), line| {
        if ends_line(&parse_line(kind, line)) {
            (ends + 1, false)
        } else {
            (ends, true)
        }
    })
}

pub async fn run(server: &Server, id: &str, opts: Options) -> Result<i32, CtlError> {
    let container = server.find(id).await?;
    let (kind, path) =
        log_file(&container).ok_or_else(|| CtlError::NoLogFile(container.id.clone()))?;
    let mut printer = Printer {
        kind,
        since: opts.since,
        closed: false,
        skip: 0,
    };
    if let Some(n) = opts.tail {
        // Counted in a first pass, so that no more than a chunk of the log
        // is ever in memory.
        let (mut total, mut open) = (0, false);
        Reader::open(path)?.read_to_end(|lines| {
            let (ends, still_open) = count_lines(kind, lines, open);
            total += ends;
            open = still_open;
        })?;
        printer.skip = (total + usize::from(open)).saturating_sub(n);
    }
    let mut reader = Reader::open(path)?;
    reader.read_to_end(|lines| printer.lines(lines))?;
    if !opts.follow {
        return Ok(0);
    }
    let mut running = container.running;
    let mut last_state_check = tokio::time::Instant::now();
    while running && !printer.closed {
        tokio::time::sleep(FOLLOW_POLL).await;
        reader.read_to_end(|lines| printer.lines(lines))?;
        if last_state_check.elapsed() >= STATE_POLL {
            last_state_check = tokio::time::Instant::now();
            let list = server
                .call("listContainers", server.client.list_containers())
                .await?;
            running = list
                .containers
                .iter()
                .any(|c| c.id == container.id && c.running);
        }
    }
    // Exited: the server wrote everything before it reported the exit.
    reader.read_to_end(|lines| printer.lines(lines))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri(lines: &[&str]) -> Vec<Vec<u8>> {
        lines
            .iter()
            .map(|l| format!("2024-01-01T00:00:00Z {l}").into_bytes())
            .collect()
    }

    #[test]
    fn whole_lines_are_counted_across_chunks() {
        let lines = cri(&["stdout F a", "stdout P b", "stdout F c", "stdout F d"]);
        assert_eq!(count_lines(LogFileKind::Cri, &lines, false), (3, false));
        let open = cri(&["stdout F a", "stdout F b", "stdout P c"]);
        assert_eq!(count_lines(LogFileKind::Cri, &open, false), (2, true));
        // A line left open by the previous chunk ends in this one.
        let rest = cri(&["stdout F c2", "stdout F d"]);
        assert_eq!(count_lines(LogFileKind::Cri, &rest, true), (2, false));
        assert_eq!(count_lines(LogFileKind::Cri, &[], true), (0, true));
    }
}

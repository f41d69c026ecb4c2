//! The `ctl` fifo's messages (conmon-cli-podman.md §6, conmon-cli-crio.md
//! §6): `<type> <a> <b>\n`, three integers per line. Type 1 is a resize
//! (`1 <rows> <cols>`), type 2 a log reopen (`2 0 0`). Pure: the bytes read
//! from the fifo go in, messages come out.

/// Longest line kept; conmon reads into a buffer of this size. A longer
/// line is refused whole (up to its line end).
pub const MAX_LINE: usize = 200;

/// One message of the `ctl` fifo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlMessage {
    /// Set the terminal's size.
    Resize { rows: u16, cols: u16 },
    /// Reopen the log files (kubelet's rotation through CRI-O).
    ReopenLogs,
}

/// A line the parser refuses; the text names the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    #[error("ctl: line longer than {MAX_LINE} bytes ignored")]
    TooLong,
    #[error("ctl: '{0}' is not three integers")]
    Malformed(String),
    #[error("ctl: unknown message type {0} in '{1}'")]
    UnknownType(i64, String),
    #[error("ctl: window size out of range in '{0}'")]
    BadSize(String),
}

/// Splits the fifo's byte stream into lines and parses them.
#[derive(Debug, Default)]
pub struct CtlParser {
    line: Vec<u8>,
    /// The current line passed `MAX_LINE`: drop it up to its end.
    skipping: bool,
}

impl CtlParser {
    pub fn new() -> CtlParser {
        CtlParser::default()
    }

    /// Feeds bytes read from the fifo; returns what the lines they complete
    /// say, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<CtlMessage, CtlError>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if std::mem::take(&mut self.skipping) {
                    out.push(Err(CtlError::TooLong));
                } else {
                    out.push(parse_line(&self.line));
                }
                self.line.clear();
            } else if !self.skipping {
                if self.line.len() == MAX_LINE {
                    self.line.clear();
                    self.skipping = true;
                } else {
                    self.line.push(b);
                }
            }
        }
        out
    }
}

/// Parses one line (without its `\n`).
pub fn parse_line(line: &[u8]) -> Result<CtlMessage, CtlError> {
    let text = String::from_utf8_lossy(line);
    let numbers: Vec<i64> = text
        .split_ascii_whitespace()
        .map(|t| t.parse::<i64>())
        .collect::<Result<_, _>>()
        .map_err(|_| CtlError::Malformed(text.to_string()))?;
    let [kind, a, b] = numbers[..] else {
        return Err(CtlError::Malformed(text.to_string()));
    };
    match kind {
        1 => {
            let size = |v: i64| u16::try_from(v).ok().filter(|v| *v > 0);
            match (size(a), size(b)) {
                (Some(rows), Some(cols)) => Ok(CtlMessage::Resize { rows, cols }),
                _ => Err(CtlError::BadSize(text.to_string())),
            }
        }
        2 => Ok(CtlMessage::ReopenLogs),
        other => Err(CtlError::UnknownType(other, text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_and_reopen_across_reads() {
        let mut p = CtlParser::new();
        assert!(p.push(b"1 33 ").is_empty());
        assert_eq!(
            p.push(b"77\n2 0 0\n"),
            vec![
                Ok(CtlMessage::Resize { rows: 33, cols: 77 }),
                Ok(CtlMessage::ReopenLogs)
            ]
        );
    }

    #[test]
    fn bad_lines_are_errors_and_the_stream_goes_on() {
        let mut p = CtlParser::new();
        let long = vec![b'1'; MAX_LINE + 5];
        let mut input = long.clone();
        input.extend_from_slice(b"\n1 0 5\n9 1 1\nx y z\n1 2\n1 24 80\n");
        let out = p.push(&input);
        assert_eq!(out[0], Err(CtlError::TooLong));
        assert!(matches!(out[1], Err(CtlError::BadSize(_))));
        assert!(matches!(out[2], Err(CtlError::UnknownType(9, _))));
        assert!(matches!(out[3], Err(CtlError::Malformed(_))));
        assert!(matches!(out[4], Err(CtlError::Malformed(_))));
        assert_eq!(out[5], Ok(CtlMessage::Resize { rows: 24, cols: 80 }));
    }
}

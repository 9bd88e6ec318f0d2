//! Log lines that input cannot forge: every control character inside an event (a newline in a
//! field name a client sent, a carriage return, a terminal escape) is written escaped, so one
//! event is always one line.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Standard error, one escaped line per event. With `ansi`, the escape character is let
/// through (the formatter's own colours use it).
#[derive(Clone, Copy, Debug)]
pub struct EscapedStderr {
    ansi: bool,
}

impl EscapedStderr {
    pub fn new(ansi: bool) -> Self {
        EscapedStderr { ansi }
    }
}

impl<'a> MakeWriter<'a> for EscapedStderr {
    type Writer = Escaping<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Escaping {
            inner: io::stderr(),
            ansi: self.ansi,
        }
    }
}

/// Escapes control characters in what it is given, but the final newline of an event.
#[derive(Debug)]
pub struct Escaping<W> {
    inner: W,
    ansi: bool,
}

impl<W: Write> Escaping<W> {
    pub fn new(inner: W, ansi: bool) -> Self {
        Escaping { inner, ansi }
    }
}

/// `buf` with its control characters escaped (`\n`, `\r`, `\xNN`), a final newline kept.
fn escape(buf: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match buf.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (buf, &b""[..]),
    };
    let mut out = Vec::with_capacity(buf.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if ansi => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter writes each event whole, in one call.
        self.inner.write_all(&escape(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_event_stays_one_line() {
        let mut out = Vec::new();
        let mut w = Escaping::new(&mut out, false);
        w.write_all(b"WARN detail=unknown field \"a\nERROR forged\" \x1b[31m\r\n")
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "WARN detail=unknown field \"a\\nERROR forged\" \\x1b[31m\\r\n"
        );
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn colours_survive_when_asked() {
        assert_eq!(escape(b"\x1b[2mx\x1b[0m\n", true), b"\x1b[2mx\x1b[0m\n");
        assert_eq!(escape(b"tab\there", false), b"tab\there");
    }
}

//! Reads recorded history: files, directories (every `*.json` / `*.jsonl` below, in path order) or `-` for
//! standard input. A file holds a JSON array, one JSON object, or JSON Lines. Records are pushed to a sink
//! one at a time with their origin, so memory does not grow with the input.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::Value;

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// File path (`-` for standard input).
    pub file: String,
    /// 1-based line (for array elements: the line the element ends on).
    pub line: usize,
    /// 0-based position within a JSON array, when the file is one.
    pub element: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.element {
            Some(i) => write!(f, "{}:{} (element {i})", self.file, self.line),
            None => write!(f, "{}:{}", self.file, self.line),
        }
    }
}

/// Expands the command-line paths into input files, in a stable order.
pub fn expand(paths: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            out.push(path.clone());
        } else if path.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found)?;
            found.sort();
            out.extend(found);
        } else if path.exists() {
            out.push(path.clone());
        } else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file or directory", path.display()),
            ));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, found)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("json" | "jsonl")
        ) {
            found.push(path);
        }
    }
    Ok(())
}

/// Total size of the inputs in bytes (for progress), `None` when one is standard input.
pub fn total_bytes(files: &[PathBuf]) -> Option<u64> {
    files
        .iter()
        .map(|f| {
            if f.as_os_str() == "-" {
                None
            } else {
                f.metadata().ok().map(|m| m.len())
            }
        })
        .sum()
}

/// A record or why it could not be read, with its origin and the bytes consumed so far (for progress).
pub type Sink<'a> = dyn FnMut(Origin, Result<Value, String>, u64) + 'a;

/// Where a record is, borrowed: [`Position::origin`] makes the owned [`Origin`] only when one is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    /// File path (`-` for standard input).
    pub file: &'a str,
    /// 1-based line (for array elements: the line the element ends on).
    pub line: usize,
    /// 0-based position within a JSON array, when the file is one.
    pub element: Option<usize>,
}

impl Position<'_> {
    /// The owned origin.
    pub fn origin(&self) -> Origin {
        Origin {
            file: self.file.to_string(),
            line: self.line,
            element: self.element,
        }
    }
}

/// A record as read: a line of JSON Lines still as text (so the caller may read it without a `Value`), or a
/// value from a JSON array or a whole-file document.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw<'a> {
    /// One line of JSON Lines, unparsed.
    Line(&'a str),
    /// A parsed value.
    Value(Value),
}

impl Raw<'_> {
    /// The record as a `Value`; a line that is not JSON is an error worded as [`read_input`] words it.
    pub fn into_value(self) -> Result<Value, String> {
        match self {
            Raw::Line(line) => serde_json::from_str(line).map_err(|e| format!("not JSON: {e}")),
            Raw::Value(v) => Ok(v),
        }
    }
}

/// [`read_input_raw`]'s sink: a record as read or why it could not be, with its position and the bytes
/// consumed so far.
pub type RawSink<'a> = dyn FnMut(Position<'_>, Result<Raw<'_>, String>, u64) + 'a;

/// Reads one input and pushes its records to `sink`. Errors that stop the whole file (unreadable, broken
/// array) are pushed as a record error too, so the caller reports them the same way.
pub fn read_input(path: &Path, sink: &mut Sink<'_>) {
    read_input_raw(path, &mut |pos, record, consumed| {
        sink(pos.origin(), record.and_then(Raw::into_value), consumed)
    });
}

/// [`read_input`] without parsing JSON Lines: each line is handed over as text.
pub fn read_input_raw(path: &Path, sink: &mut RawSink<'_>) {
    let name = path.display().to_string();
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        match File::open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                sink(
                    Position {
                        file: &name,
                        line: 0,
                        element: None,
                    },
                    Err(format!("cannot open: {e}")),
                    0,
                );
                return;
            }
        }
    };
    if let Err(e) = read_stream(&name, reader, sink) {
        sink(
            Position {
                file: &name,
                line: 0,
                element: None,
            },
            Err(format!("cannot read: {e}")),
            0,
        );
    }
}

fn read_stream(name: &str, reader: Box<dyn Read>, sink: &mut RawSink<'_>) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let mut first = String::new();
    let mut skipped_lines = 0usize;
    let mut consumed = 0u64;
    // Find the first non-blank line to tell the layout.
    loop {
        first.clear();
        let n = reader.read_line(&mut first)?;
        consumed += n as u64;
        if n == 0 {
            return Ok(());
        }
        if !first.trim().is_empty() {
            break;
        }
        skipped_lines += 1;
    }
    let head = first.trim_start();
    if head.starts_with('[') {
        let rest = Cursor::new(first.clone().into_bytes()).chain(reader);
        return read_array(name, rest, skipped_lines, sink);
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(&first).is_ok() {
        // JSON Lines: each line stands alone, so a malformed line is reported and the rest still read.
        let line_no = skipped_lines + 1;
        sink(
            Position {
                file: name,
                line: line_no,
                element: None,
            },
            Ok(Raw::Line(&first)),
            consumed,
        );
        return read_lines(name, reader, line_no, consumed, sink);
    }
    // One (pretty-printed) JSON value spanning several lines.
    let start_line = skipped_lines + 1;
    let mut whole = first;
    reader.read_to_string(&mut whole)?;
    consumed += whole.len() as u64;
    let parsed = serde_json::from_str::<Value>(&whole)
        .map(Raw::Value)
        .map_err(|e| format!("not JSON: {e} (at line {})", e.line() + skipped_lines));
    sink(
        Position {
            file: name,
            line: start_line,
            element: None,
        },
        parsed,
        consumed,
    );
    Ok(())
}

/// The lines after the first of a JSON Lines stream, each handed to `sink` where it lies in the reader's
/// buffer; only a line that straddles two reads is copied. (`read_line` copied every line into a `String`.) A
/// line that is not UTF-8 is reported like any malformed line, and the lines after it are still read.
fn read_lines(
    name: &str,
    mut reader: BufReader<Box<dyn Read>>,
    mut line_no: usize,
    mut consumed: u64,
    sink: &mut RawSink<'_>,
) -> io::Result<()> {
    let mut straddling: Vec<u8> = Vec::new();
    let mut emit = |line: &[u8], line_no: usize, consumed: u64| {
        let position = Position {
            file: name,
            line: line_no,
            element: None,
        };
        match std::str::from_utf8(line) {
            Ok(text) if text.trim().is_empty() => {}
            Ok(text) => sink(position, Ok(Raw::Line(text)), consumed),
            Err(e) => sink(position, Err(format!("not UTF-8: {e}")), consumed),
        }
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if !straddling.is_empty() {
                emit(&straddling, line_no + 1, consumed);
            }
            return Ok(());
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', buf).map(|i| i + 1) {
            let line = &buf[start..end];
            consumed += line.len() as u64;
            line_no += 1;
            if straddling.is_empty() {
                emit(line, line_no, consumed);
            } else {
                straddling.extend_from_slice(line);
                emit(&straddling, line_no, consumed);
                straddling.clear();
            }
            start = end;
        }
        straddling.extend_from_slice(&buf[start..]);
        consumed += (buf.len() - start) as u64;
        let read = buf.len();
        reader.consume(read);
    }
}

/// Counts newlines and bytes handed to serde_json, which reads byte by byte from an `io::Read`.
struct Counting<R> {
    inner: R,
    newlines: usize,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.newlines += buf[..n].iter().filter(|b| **b == b'\n').count();
        self.bytes += n as u64;
        Ok(n)
    }
}

fn read_array(
    name: &str,
    reader: impl Read,
    skipped_lines: usize,
    sink: &mut RawSink<'_>,
) -> io::Result<()> {
    // serde_json's reader path pulls one byte at a time through `Read`, so a small buffer in front keeps the
    // newline count exact to within the current element.
    let counting = std::rc::Rc::new(std::cell::RefCell::new(Counting {
        inner: reader,
        newlines: skipped_lines,
        bytes: 0,
    }));
    let shared = SharedRead(counting.clone());
    let mut de = serde_json::Deserializer::from_reader(shared);
    let seed = ArraySeed {
        name,
        counting: &counting,
        sink,
    };
    if let Err(e) = seed.deserialize(&mut de) {
        let line = e.line() + skipped_lines;
        sink(
            Position {
                file: name,
                line,
                element: None,
            },
            Err(format!("not a JSON array of events: {e}")),
            0,
        );
    }
    Ok(())
}

struct SharedRead<R>(std::rc::Rc<std::cell::RefCell<Counting<R>>>);

impl<R: Read> Read for SharedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

struct ArraySeed<'a, 's, R> {
    name: &'a str,
    counting: &'a std::rc::Rc<std::cell::RefCell<Counting<R>>>,
    sink: &'a mut RawSink<'s>,
}

impl<'de, R> DeserializeSeed<'de> for ArraySeed<'_, '_, R> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de, R> Visitor<'de> for ArraySeed<'_, '_, R> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(value) = seq.next_element::<Value>()? {
            let (line, bytes) = {
                let c = self.counting.borrow();
                (c.newlines + 1, c.bytes)
            };
            (self.sink)(
                Position {
                    file: self.name,
                    line,
                    element: Some(index),
                },
                Ok(Raw::Value(value)),
                bytes,
            );
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(text: &str) -> Vec<(Origin, Result<Value, String>)> {
        let mut out = Vec::new();
        read_stream(
            "t",
            Box::new(Cursor::new(text.as_bytes().to_vec())),
            &mut |o, v, _| out.push((o.origin(), v.and_then(Raw::into_value))),
        )
        .unwrap();
        out
    }

    #[test]
    fn json_lines_report_each_line_and_survive_a_bad_one() {
        let got = collect("{\"a\":1}\n\nnot json\n{\"a\":2}\n");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.line, 1);
        assert!(got[1].1.is_err());
        assert_eq!(got[1].0.line, 3);
        assert_eq!(got[2].0.line, 4);
    }

    /// Every record of a JSON Lines stream as (line, text or error, bytes consumed).
    fn lines_of(bytes: Vec<u8>) -> Vec<(usize, Result<String, String>, u64)> {
        let mut out = Vec::new();
        read_stream(
            "t",
            Box::new(Cursor::new(bytes)),
            &mut |pos, raw, consumed| {
                let text = raw.map(|r| match r {
                    Raw::Line(line) => line.to_string(),
                    Raw::Value(v) => panic!("a JSON Lines record came as a value: {v}"),
                });
                out.push((pos.line, text, consumed));
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn lines_across_buffer_refills_arrive_whole_with_their_positions() {
        // Lines of uneven length past several fills of the 256 KiB buffer, the last without a newline.
        let lines: Vec<String> = (0..4000)
            .map(|i| format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 7 % 301)))
            .collect();
        let mut text = lines.join("\n");
        text.insert_str(lines[0].len() + 1, "\n  \n"); // blank lines count, and are skipped
        let got = lines_of(text.clone().into_bytes());
        assert_eq!(got.len(), lines.len());
        let mut end = 0u64;
        for (i, (line_no, record, consumed)) in got.iter().enumerate() {
            let expected = &lines[i];
            let text = record.as_ref().unwrap();
            assert_eq!(text.trim_end_matches('\n'), expected, "record {i}");
            assert_eq!(*line_no, if i == 0 { 1 } else { i + 3 }, "record {i}");
            let newline = u64::from(i + 1 < lines.len());
            end += expected.len() as u64 + newline + if i == 1 { 4 } else { 0 };
            assert_eq!(*consumed, end, "record {i}");
        }
        assert_eq!(got.last().unwrap().2, text.len() as u64);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_reported_and_the_rest_still_read() {
        let mut bytes = b"{\"a\":1}\n{\"a\":\"".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b"\"}\n{\"a\":3}\n");
        let got = lines_of(bytes);
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].0, 2);
        assert!(
            got[1].1.as_ref().unwrap_err().starts_with("not UTF-8"),
            "{:?}",
            got[1]
        );
        assert_eq!(got[2].0, 3);
        assert_eq!(got[2].1.as_deref(), Ok("{\"a\":3}\n"));
    }

    #[test]
    fn arrays_are_streamed_element_by_element() {
        let got = collect("[\n {\"a\":1},\n {\"a\":2}\n]\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0.element, Some(1));
        assert_eq!(got[1].1.as_ref().unwrap()["a"], 2);
    }

    #[test]
    fn a_pretty_printed_object_is_one_record() {
        let got = collect("\n{\n  \"a\": 1\n}\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.line, 2);
    }

    #[test]
    fn a_broken_array_names_its_line() {
        let got = collect("[\n {\"a\":1},\n {\"a\":\n");
        assert!(
            got.last()
                .unwrap()
                .1
                .as_ref()
                .unwrap_err()
                .contains("not a JSON array")
        );
    }
}

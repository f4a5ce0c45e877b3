//! Bytes from one of the container's pipes → CRI log records.
//!
//! The rules are containerd's (`redirectLogs` and `readLine` in
//! `internal/cri/io/logger.go`, `pkg/cri/io/logger.go` before 2.0):
//!
//! - A line ends at `\n`; a `\r` right before the `\n` is dropped too
//!   (`readLine`: "drop := 1; if line[len-2] == '\r' { drop = 2 }"). A `\r`
//!   anywhere else, or at EOF without a `\n` after it, is content.
//! - A line with more than `max_line_size` bytes of content is written as
//!   `P` records of exactly `max_line_size` bytes, then an `F` record with the
//!   rest (1 to `max_line_size` bytes). A line of exactly `max_line_size`
//!   bytes is a single `F`; the `F` is empty only for an empty line.
//! - At EOF, bytes after the last `\n` are written as `P` record(s), never
//!   `F`: containerd's comment is "readLine only returns error when the
//!   message doesn't end with a newline, in that case it should be treated
//!   as a partial line". Nothing is written if nothing is left.

use std::io::{self, Write};
use std::time::SystemTime;

use super::record::format_record;
use super::Stream;

/// Buffers above this size are released after use, so one huge line (with
/// no limit) or one huge read does not pin its memory for the life of the
/// container.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Turns the byte stream of one pipe into CRI records; one per stream.
///
/// Feed it whatever each `read()` returned; it writes whole records only,
/// all the records of one call with a single `write_all`, and keeps the
/// unfinished line for the next call. Call [`finish`](Self::finish) at EOF.
///
/// With a limit, the splitter holds at most `max_line_size + 1` bytes of
/// pending line (the extra byte is a `\r` that may turn out to be half of a
/// `\r\n`). Without one it holds the whole unfinished line, as containerd
/// does with `max_container_log_line_size = -1`.
///
/// ```
/// use std::time::SystemTime;
/// use berth_cri::logs::{parse_record, LineSplitter, Stream};
///
/// let mut log = Vec::new();
/// let mut s = LineSplitter::new(Stream::Stderr, Some(4));
/// s.feed(b"abcdefghij\r\nno newline", SystemTime::now(), &mut log)?;
/// s.finish(SystemTime::now(), &mut log)?;
/// let records: Vec<(bool, Vec<u8>)> = log
///     .split_inclusive(|&b| b == b'\n')
///     .map(|l| parse_record(l).map(|(_, _, p, c)| (p, c)).unwrap())
///     .collect();
/// let expect: [(bool, &[u8]); 6] = [
///     (true, b"abcd"), (true, b"efgh"), (false, b"ij"),
///     (true, b"no n"), (true, b"ewli"), (true, b"ne"),
/// ];
/// assert_eq!(records, expect.map(|(p, c)| (p, c.to_vec())));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    /// `None`: lines are never split.
    max_line_size: Option<usize>,
    /// The unfinished line: bytes after the last `\n`, minus what already
    /// went out in `P` records.
    pending: Vec<u8>,
    /// The records of the current call, written in one `write_all`.
    out: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for `stream`. `max_line_size` is the CRI
    /// `max_container_log_line_size`; `None` or `Some(0)` (containerd's `0`
    /// and negative values) means lines are never split.
    pub fn new(stream: Stream, max_line_size: Option<usize>) -> Self {
        LineSplitter {
            stream,
            max_line_size: max_line_size.filter(|&max| max > 0),
            pending: Vec::new(),
            out: Vec::new(),
        }
    }

    /// The stream this splitter writes records for.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Takes the next bytes read from the pipe; writes to `sink` every
    /// record they complete, timestamped `now`.
    ///
    /// The bytes are consumed even if writing fails: the records of this
    /// call are then lost and the error returned, and the splitter stays
    /// usable, so the caller can report the error and keep draining the pipe
    /// (containerd does the same: "Continue on write error to drain the
    /// container output", so a full disk never blocks the container).
    pub fn feed(&mut self, data: &[u8], now: SystemTime, sink: &mut impl Write) -> io::Result<()> {
        let mut rest = data;
        while let Some(eol) = rest.iter().position(|&b| b == b'\n') {
            self.push_content(&rest[..eol], now);
            self.end_line(now);
            rest = &rest[eol + 1..];
        }
        self.push_content(rest, now);
        self.write_out(sink)
    }

    /// At EOF on the pipe: writes what is left of an unfinished line as `P`
    /// record(s) (see the module doc for why not `F`). Writes nothing when
    /// the stream ended with `\n`. The splitter is empty afterwards.
    pub fn finish(&mut self, now: SystemTime, sink: &mut impl Write) -> io::Result<()> {
        // At EOF a trailing '\r' is content: no '\n' can follow it now.
        let mut rest: &[u8] = &self.pending;
        if let Some(max) = self.max_line_size {
            while rest.len() > max {
                format_record(&mut self.out, now, self.stream, true, &rest[..max]);
                rest = &rest[max..];
            }
        }
        if !rest.is_empty() {
            format_record(&mut self.out, now, self.stream, true, rest);
        }
        self.pending.clear();
        release_if_large(&mut self.pending);
        self.write_out(sink)
    }

    /// Adds bytes (no `\n`) to the unfinished line, formatting a `P` record
    /// each time more than `max_line_size` bytes are known to be content.
    fn push_content(&mut self, mut bytes: &[u8], now: SystemTime) {
        let Some(max) = self.max_line_size else {
            self.pending.extend_from_slice(bytes);
            return;
        };
        while !bytes.is_empty() {
            // Take only what can complete one record plus one byte, so
            // `pending` stays within max + 2 however big `bytes` is.
            let take = (max + 1)
                .saturating_sub(self.pending.len())
                .clamp(1, bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            // A trailing '\r' may be the start of "\r\n", which is not
            // content: hold it back until the next byte decides.
            while self.pending.len() - usize::from(self.pending.ends_with(b"\r")) > max {
                format_record(&mut self.out, now, self.stream, true, &self.pending[..max]);
                self.pending.drain(..max);
            }
        }
    }

    /// A `\n` arrived: the unfinished line (≤ `max_line_size` bytes after
    /// `push_content`, once its `\r` is dropped) becomes an `F` record.
    fn end_line(&mut self, now: SystemTime) {
        if self.pending.ends_with(b"\r") {
            self.pending.pop();
        }
        format_record(&mut self.out, now, self.stream, false, &self.pending);
        self.pending.clear();
        release_if_large(&mut self.pending);
    }

    /// Writes the formatted records with one `write_all`, so a record is
    /// never split between two writes of this splitter and the other
    /// stream's splitter sharing the same file.
    fn write_out(&mut self, sink: &mut impl Write) -> io::Result<()> {
        let result = if self.out.is_empty() {
            Ok(())
        } else {
            sink.write_all(&self.out)
        };
        self.out.clear();
        release_if_large(&mut self.out);
        result
    }
}

fn release_if_large(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_CAPACITY {
        buf.shrink_to(KEEP_CAPACITY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::parse_record;
    use std::time::{Duration, UNIX_EPOCH};

    const TS: &str = "2016-10-06T00:17:09.669794202Z";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202)
    }

    /// Feeds each chunk, then finishes; returns the records as
    /// ("P"/"F", content) pairs, checking each parses with our timestamp.
    fn run(max: Option<usize>, chunks: &[&[u8]], finish: bool) -> Vec<(&'static str, Vec<u8>)> {
        let mut log = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout, max);
        for chunk in chunks {
            s.feed(chunk, now(), &mut log).unwrap();
        }
        if finish {
            s.finish(now(), &mut log).unwrap();
        }
        records(&log)
    }

    fn records(log: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        assert!(log.is_empty() || log.ends_with(b"\n"), "whole records only");
        log.split_inclusive(|&b| b == b'\n')
            .map(|line| {
                let (ts, stream, partial, content) = parse_record(line).expect("valid record");
                assert_eq!((ts.as_str(), stream), (TS, Stream::Stdout));
                (if partial { "P" } else { "F" }, content)
            })
            .collect()
    }

    fn rec(tag: &'static str, content: &[u8]) -> (&'static str, Vec<u8>) {
        (tag, content.to_vec())
    }

    #[test]
    fn one_full_line() {
        let mut log = Vec::new();
        let mut s = LineSplitter::new(Stream::Stderr, Some(16 * 1024));
        s.feed(b"hello world\n", now(), &mut log).unwrap();
        assert_eq!(log, format!("{TS} stderr F hello world\n").as_bytes());
    }

    #[test]
    fn line_split_across_feeds_is_written_when_it_ends() {
        let mut log = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout, Some(16 * 1024));
        s.feed(b"hel", now(), &mut log).unwrap();
        s.feed(b"", now(), &mut log).unwrap();
        s.feed(b"lo wo", now(), &mut log).unwrap();
        assert!(log.is_empty(), "nothing until the newline");
        s.feed(b"rld\nnext", now(), &mut log).unwrap();
        assert_eq!(records(&log), [rec("F", b"hello world")]);
    }

    #[test]
    fn several_lines_in_one_feed_are_one_write() {
        struct CountingSink(Vec<u8>, usize);
        impl Write for CountingSink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.1 += 1;
                self.0.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut sink = CountingSink(Vec::new(), 0);
        let mut s = LineSplitter::new(Stream::Stdout, Some(16 * 1024));
        s.feed(b"a\nbb\nccc\n", now(), &mut sink).unwrap();
        assert_eq!(sink.1, 1);
        assert_eq!(
            records(&sink.0),
            [rec("F", b"a"), rec("F", b"bb"), rec("F", b"ccc")]
        );
        // Nothing to write: no write call at all.
        s.feed(b"partial", now(), &mut sink).unwrap();
        assert_eq!(sink.1, 1);
    }

    #[test]
    fn long_line_is_split_at_exactly_max() {
        assert_eq!(
            run(Some(4), &[b"abcdefghij\n"], false),
            [rec("P", b"abcd"), rec("P", b"efgh"), rec("F", b"ij")]
        );
        // A multiple of max: no empty F at the end.
        assert_eq!(
            run(Some(4), &[b"abcdefghijkl\n"], false),
            [rec("P", b"abcd"), rec("P", b"efgh"), rec("F", b"ijkl")]
        );
        // Exactly max: one F, as containerd only splits when length > max.
        assert_eq!(run(Some(4), &[b"abcd\n"], false), [rec("F", b"abcd")]);
        // Max + 1, arriving one byte at a time.
        assert_eq!(
            run(Some(4), &[b"a", b"b", b"c", b"d", b"e", b"\n"], false),
            [rec("P", b"abcd"), rec("F", b"e")]
        );
    }

    #[test]
    fn p_records_go_out_before_the_line_ends() {
        let mut log = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout, Some(4));
        s.feed(b"abcd", now(), &mut log).unwrap();
        assert!(log.is_empty(), "4 bytes may still be a whole line");
        s.feed(b"e", now(), &mut log).unwrap();
        assert_eq!(records(&log), [rec("P", b"abcd")]);
    }

    #[test]
    fn no_limit_never_splits() {
        let line = vec![b'x'; 100 * 1024];
        for max in [None, Some(0)] {
            let out = run(max, &[&line[..50_000], &line[50_000..], b"\n"], false);
            assert_eq!(out, [rec("F", &line)]);
        }
    }

    #[test]
    fn pending_stays_bounded_with_a_limit() {
        let mut log = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout, Some(16 * 1024));
        let chunk = vec![b'y'; 1 << 20];
        s.feed(&chunk, now(), &mut log).unwrap();
        assert!(s.pending.len() <= 16 * 1024);
        assert!(s.pending.capacity() <= KEEP_CAPACITY);
        assert!(s.out.capacity() <= KEEP_CAPACITY);
        assert_eq!(records(&log).len(), 63);
    }

    #[test]
    fn empty_line_is_an_empty_f() {
        let mut log = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout, Some(4));
        s.feed(b"\n", now(), &mut log).unwrap();
        assert_eq!(log, format!("{TS} stdout F \n").as_bytes());
        assert_eq!(
            run(Some(4), &[b"a\n\n\nb\n"], false),
            [rec("F", b"a"), rec("F", b""), rec("F", b""), rec("F", b"b")]
        );
    }

    #[test]
    fn eof_leftover_is_partial() {
        assert_eq!(run(Some(4), &[b"abc"], true), [rec("P", b"abc")]);
        assert_eq!(
            run(None, &[b"x\nabc"], true),
            [rec("F", b"x"), rec("P", b"abc")]
        );
        assert_eq!(
            run(Some(4), &[b"abcdefghij"], true),
            [rec("P", b"abcd"), rec("P", b"efgh"), rec("P", b"ij")]
        );
        // Exactly max left at EOF: one P.
        assert_eq!(run(Some(4), &[b"abcd"], true), [rec("P", b"abcd")]);
        // Nothing left: nothing written.
        assert_eq!(run(Some(4), &[b"abc\n"], true), [rec("F", b"abc")]);
        assert_eq!(run(Some(4), &[], true), []);
    }

    #[test]
    fn finish_empties_the_splitter() {
        let mut log = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout, Some(4));
        s.feed(b"abc", now(), &mut log).unwrap();
        s.finish(now(), &mut log).unwrap();
        s.finish(now(), &mut log).unwrap();
        s.feed(b"d\n", now(), &mut log).unwrap();
        assert_eq!(records(&log), [rec("P", b"abc"), rec("F", b"d")]);
    }

    #[test]
    fn crlf_drops_the_cr_like_containerd() {
        assert_eq!(run(None, &[b"a\r\n"], false), [rec("F", b"a")]);
        assert_eq!(run(None, &[b"\r\n"], false), [rec("F", b"")]);
        // Only one '\r' before the '\n' goes; a lone '\r' is content.
        assert_eq!(run(None, &[b"a\r\r\n"], false), [rec("F", b"a\r")]);
        assert_eq!(run(None, &[b"a\rb\n"], false), [rec("F", b"a\rb")]);
        // "\r\n" split across feeds.
        assert_eq!(run(Some(4), &[b"ab\r", b"\n"], false), [rec("F", b"ab")]);
        // The '\r' does not count towards max when a '\n' follows...
        assert_eq!(
            run(Some(4), &[b"abcd\r", b"\n"], false),
            [rec("F", b"abcd")]
        );
        // ...and does when something else follows.
        assert_eq!(
            run(Some(4), &[b"abcd\r", b"x\n"], false),
            [rec("P", b"abcd"), rec("F", b"\rx")]
        );
        // At EOF no '\n' can follow: the '\r' is content.
        assert_eq!(run(Some(8), &[b"abc\r"], true), [rec("P", b"abc\r")]);
        assert_eq!(
            run(Some(4), &[b"abcd\r"], true),
            [rec("P", b"abcd"), rec("P", b"\r")]
        );
    }

    #[test]
    fn chunking_does_not_change_the_records() {
        let input: &[u8] =
            b"one\r\ntwo two two two\n\n\r\nthree\rthree\r\r\nabcdefgh\nabcdefgh\r\nabcdefghi\rtail\r\rx\nab\r\rx\n\r\r\r\r\n\rend\r";
        for max in [
            None,
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(8),
            Some(9),
            Some(100),
        ] {
            let whole = run(max, &[input], true);
            let bytewise: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                run(max, &bytewise, true),
                whole,
                "max {max:?}, byte by byte"
            );
            for cut in 0..input.len() {
                let (a, b) = input.split_at(cut);
                assert_eq!(run(max, &[a, b], true), whole, "max {max:?}, cut at {cut}");
            }
            if let Some(max) = max {
                assert!(whole.iter().all(|(_, c)| c.len() <= max), "max {max}");
            }
            // Nothing lost: the records' content joined back is the input
            // with "\r\n" → "\n".
            let mut joined = Vec::new();
            for (tag, content) in &whole {
                joined.extend_from_slice(content);
                if *tag == "F" {
                    joined.push(b'\n');
                }
            }
            let expect = String::from_utf8_lossy(input).replace("\r\n", "\n");
            assert_eq!(String::from_utf8_lossy(&joined), expect, "max {max:?}");
        }
    }

    #[test]
    fn write_error_loses_the_records_but_not_the_splitter() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(28)) // ENOSPC
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut s = LineSplitter::new(Stream::Stdout, Some(4));
        let err = s.feed(b"lost\nkep", now(), &mut Broken).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        let mut log = Vec::new();
        s.feed(b"t\n", now(), &mut log).unwrap();
        assert_eq!(records(&log), [rec("F", b"kept")]);
    }
}

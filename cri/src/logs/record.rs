//! One CRI log record: `<timestamp> <stream> <tag> <content>\n`.

use std::time::SystemTime;

use super::timestamp::append_rfc3339_nano;
use super::Stream;

/// `runtimeapi.LogTagPartial`: the line goes on in the next record.
const TAG_PARTIAL: &[u8] = b"P";
/// `runtimeapi.LogTagFull`: this record ends the line.
const TAG_FULL: &[u8] = b"F";
/// `runtimeapi.LogTagDelimiter`: kubelet splits the tag field on it and
/// only looks at the first tag, so more may be added later.
const TAG_DELIMITER: u8 = b':';

/// Appends one record to `out` (which is not cleared), newline included.
///
/// `content` must not contain `\n` — [`LineSplitter`](super::LineSplitter)
/// never passes one. An empty `content` gives `<ts> stdout F ` followed by the
/// newline: the space after the tag stays, as containerd writes it and as
/// kubelet requires (it looks for a delimiter after the tag).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use berth_cri::logs::{format_record, Stream};
///
/// let mut out = Vec::new();
/// let ts = UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202);
/// format_record(&mut out, ts, Stream::Stderr, true, b"log content 1");
/// assert_eq!(out, b"2016-10-06T00:17:09.669794202Z stderr P log content 1\n");
/// ```
pub fn format_record(
    out: &mut Vec<u8>,
    ts: SystemTime,
    stream: Stream,
    partial: bool,
    content: &[u8],
) {
    debug_assert!(
        !content.contains(&b'\n'),
        "a record's content holds no newline"
    );
    out.reserve(30 + 1 + 6 + 1 + 1 + 1 + content.len() + 1);
    append_rfc3339_nano(out, ts);
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if partial { TAG_PARTIAL } else { TAG_FULL });
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Parses one record (with or without its trailing `\n`) into
/// `(timestamp, stream, partial, content)`; the content never includes the
/// newline.
///
/// Follows kubelet's `parseCRILog`: three space-separated fields, then the
/// content, which may itself contain spaces; the tag field may carry more
/// `:`-separated tags after the first. Stricter than kubelet in two ways,
/// since it is meant to check what berth wrote: the first tag must be `P` or
/// `F` (kubelet reads anything but `P` as full), and the timestamp must at
/// least look like `YYYY-MM-DDTHH:MM:SS…` (kubelet parses it with Go's
/// `time.Parse`). Returns `None` for anything else.
pub fn parse_record(line: &[u8]) -> Option<(String, Stream, bool, Vec<u8>)> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let (ts, rest) = split_field(line)?;
    let (stream, rest) = split_field(rest)?;
    let (tags, content) = split_field(rest)?;

    let ts = std::str::from_utf8(ts)
        .ok()
        .filter(|ts| looks_like_rfc3339(ts))?;
    let stream = Stream::from_bytes(stream)?;
    let partial = match tags.split(|&b| b == TAG_DELIMITER).next()? {
        TAG_PARTIAL => true,
        TAG_FULL => false,
        _ => return None,
    };
    Some((ts.to_owned(), stream, partial, content.to_vec()))
}

/// The bytes before the first space, and the bytes after it.
fn split_field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == b' ')?;
    Some((&s[..i], &s[i + 1..]))
}

/// A shape check, not a full parse: `YYYY-MM-DDTHH:MM:SS` then a fraction
/// and/or a zone (`Z` or `±HH:MM`).
fn looks_like_rfc3339(ts: &str) -> bool {
    let b = ts.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    b.len() > shape.len()
        && b.iter().zip(shape).all(|(&c, &want)| match want {
            b'd' => c.is_ascii_digit(),
            _ => c == want,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn ts() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202)
    }

    fn record(stream: Stream, partial: bool, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        format_record(&mut out, ts(), stream, partial, content);
        out
    }

    #[test]
    fn full_and_partial_records() {
        assert_eq!(
            record(Stream::Stdout, false, b"log content 2"),
            b"2016-10-06T00:17:09.669794202Z stdout F log content 2\n"
        );
        assert_eq!(
            record(Stream::Stderr, true, b"x"),
            b"2016-10-06T00:17:09.669794202Z stderr P x\n"
        );
    }

    #[test]
    fn empty_content_keeps_the_space_after_the_tag() {
        assert_eq!(
            record(Stream::Stdout, false, b""),
            b"2016-10-06T00:17:09.669794202Z stdout F \n"
        );
    }

    #[test]
    fn format_appends() {
        let mut out = b"before\n".to_vec();
        format_record(&mut out, UNIX_EPOCH, Stream::Stdout, false, b"a");
        assert_eq!(out, b"before\n1970-01-01T00:00:00Z stdout F a\n");
    }

    #[test]
    fn round_trip() {
        let cases: [(Stream, bool, &[u8]); 5] = [
            (Stream::Stdout, false, b"hello world"),
            (Stream::Stderr, true, b"  leading and trailing spaces  "),
            (Stream::Stdout, false, b""),
            (Stream::Stderr, false, b"F P stdout 2016-10-06T00:17:09Z"),
            (Stream::Stdout, true, b"\xff\xfe not utf-8 \r"),
        ];
        for (stream, partial, content) in cases {
            let line = record(stream, partial, content);
            let parsed = parse_record(&line).expect("parses");
            assert_eq!(
                parsed,
                (
                    "2016-10-06T00:17:09.669794202Z".to_owned(),
                    stream,
                    partial,
                    content.to_vec()
                )
            );
            // Without the newline too.
            assert_eq!(parse_record(&line[..line.len() - 1]), Some(parsed));
        }
    }

    #[test]
    fn parses_what_kubelet_parses() {
        assert_eq!(
            parse_record(b"2016-10-06T00:17:09.669794202Z stdout P log content 1\n"),
            Some((
                "2016-10-06T00:17:09.669794202Z".to_owned(),
                Stream::Stdout,
                true,
                b"log content 1".to_vec()
            ))
        );
        // A zone offset, as containerd writes on a node not in UTC, and
        // extra tags after the first.
        let (ts, stream, partial, content) =
            parse_record(b"2016-10-06T02:17:09.5+02:00 stderr F:x:y msg").unwrap();
        assert_eq!(ts, "2016-10-06T02:17:09.5+02:00");
        assert_eq!(
            (stream, partial, content),
            (Stream::Stderr, false, b"msg".to_vec())
        );
    }

    #[test]
    fn rejects_malformed_records() {
        let bad: [&[u8]; 9] = [
            b"",
            b"\n",
            b"2016-10-06T00:17:09Z stdout F", // no delimiter after the tag
            b"2016-10-06T00:17:09Z stdin F x", // unknown stream
            b"2016-10-06T00:17:09Z stdout X x", // unknown tag
            b"2016-10-06T00:17:09Z stdout  x", // empty tag
            b"2016-10-06 stdout F x",         // date only
            b"yesterday stdout F x",          // not a timestamp
            b"{\"log\":\"x\",\"stream\":\"stdout\"}", // docker json-file
        ];
        for line in bad {
            assert_eq!(
                parse_record(line),
                None,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}

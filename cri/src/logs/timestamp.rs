//! Go's `time.RFC3339Nano` layout (`2006-01-02T15:04:05.999999999Z07:00`)
//! for UTC times, without a date crate.
//!
//! The `.999999999` in Go's layout means "up to nine digits, trailing zeros
//! trimmed, no dot at all when the fraction is zero": `…:09.6697942Z`,
//! `…:09.5Z`, `…:09Z`. containerd writes log timestamps with this layout
//! (`timestampFormat = time.RFC3339Nano` in its CRI logger) and kubelet
//! parses them with `RFC3339NanoLenient`, so the widths vary from record to
//! record; that is expected.

use std::time::{SystemTime, UNIX_EPOCH};

const NANOS_PER_SEC: u32 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Formats `ts` in UTC exactly as Go's `t.UTC().Format(time.RFC3339Nano)`.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use berth_cri::logs::rfc3339_nano;
///
/// let t = UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_200);
/// assert_eq!(rfc3339_nano(t), "2016-10-06T00:17:09.6697942Z");
/// ```
pub fn rfc3339_nano(ts: SystemTime) -> String {
    let mut out = Vec::with_capacity(30);
    append_rfc3339_nano(&mut out, ts);
    // Only ASCII digits and punctuation were written.
    String::from_utf8(out).expect("timestamp is ASCII")
}

/// Appends [`rfc3339_nano`]`(ts)` to `out` without allocating a `String`:
/// the log writer formats one timestamp per record.
pub(crate) fn append_rfc3339_nano(out: &mut Vec<u8>, ts: SystemTime) {
    let (secs, nanos) = unix_parts(ts);
    let days = secs.div_euclid(SECS_PER_DAY);
    let secs_of_day = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);

    append_year(out, year);
    out.push(b'-');
    append_2(out, month);
    out.push(b'-');
    append_2(out, day);
    out.push(b'T');
    append_2(out, (secs_of_day / 3600) as u32);
    out.push(b':');
    append_2(out, (secs_of_day / 60 % 60) as u32);
    out.push(b':');
    append_2(out, (secs_of_day % 60) as u32);
    append_fraction(out, nanos);
    out.push(b'Z');
}

/// Seconds since the epoch (negative before 1970) and the nanoseconds
/// (always in `0..1e9`) after them, as Go's `Time` splits a time.
fn unix_parts(ts: SystemTime) -> (i64, u32) {
    match ts.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, NANOS_PER_SEC - n),
            }
        }
    }
}

/// Days since 1970-01-01 → proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days`
/// (<https://howardhinnant.github.io/date_algorithms.html#civil_from_days>),
/// which works in 400-year eras so leap years (…, 2000, 2024 but not 2100)
/// fall out of the arithmetic.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // shift the epoch to 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Go's `appendInt(b, year, 4)`: at least four digits, a `-` before
/// negative years, more digits past 9999.
fn append_year(out: &mut Vec<u8>, year: i64) {
    if year < 0 {
        out.push(b'-');
    }
    let digits = year.unsigned_abs().to_string();
    out.extend(std::iter::repeat_n(
        b'0',
        4usize.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits.as_bytes());
}

fn append_2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// Go's `.999999999`: nothing for a zero fraction, otherwise a dot and the
/// nine digits with trailing zeros trimmed.
fn append_fraction(out: &mut Vec<u8>, nanos: u32) {
    if nanos == 0 {
        return;
    }
    let mut digits = [0u8; 9];
    let mut n = nanos;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let len = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
    out.push(b'.');
    out.extend_from_slice(&digits[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn before_epoch(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH - Duration::new(secs, nanos)
    }

    #[test]
    fn epoch() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn kubelet_example() {
        // The example in kubelet's parseCRILog doc comment.
        assert_eq!(
            rfc3339_nano(at(1_475_713_029, 669_794_202)),
            "2016-10-06T00:17:09.669794202Z"
        );
    }

    #[test]
    fn fraction_trims_trailing_zeros_like_go() {
        assert_eq!(
            rfc3339_nano(at(1_475_713_029, 669_794_200)),
            "2016-10-06T00:17:09.6697942Z"
        );
        assert_eq!(rfc3339_nano(at(0, 500_000_000)), "1970-01-01T00:00:00.5Z");
        assert_eq!(rfc3339_nano(at(0, 1)), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(rfc3339_nano(at(0, 10)), "1970-01-01T00:00:00.00000001Z");
        assert_eq!(
            rfc3339_nano(at(0, 999_999_999)),
            "1970-01-01T00:00:00.999999999Z"
        );
        assert_eq!(rfc3339_nano(at(1_475_713_029, 0)), "2016-10-06T00:17:09Z");
    }

    #[test]
    fn leap_days() {
        // Epoch seconds from `date -u -d <date> +%s`.
        assert_eq!(rfc3339_nano(at(1_709_164_800, 0)), "2024-02-29T00:00:00Z");
        assert_eq!(
            rfc3339_nano(at(1_709_164_800 - 1, 0)),
            "2024-02-28T23:59:59Z"
        );
        assert_eq!(
            rfc3339_nano(at(1_709_164_800 + 86_400, 0)),
            "2024-03-01T00:00:00Z"
        );
        // 2000 is a leap year (divisible by 400).
        assert_eq!(rfc3339_nano(at(951_827_696, 0)), "2000-02-29T12:34:56Z");
    }

    #[test]
    fn far_future_2100_is_not_a_leap_year() {
        assert_eq!(rfc3339_nano(at(4_107_542_399, 0)), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339_nano(at(4_107_542_400, 0)), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_nano(at(253_402_300_799, 0)), "9999-12-31T23:59:59Z");
        // Go writes the fifth digit rather than failing (only MarshalJSON refuses).
        assert_eq!(
            rfc3339_nano(at(253_402_300_800, 0)),
            "10000-01-01T00:00:00Z"
        );
    }

    #[test]
    fn before_the_epoch() {
        assert_eq!(rfc3339_nano(before_epoch(1, 0)), "1969-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_nano(before_epoch(0, 500_000_000)),
            "1969-12-31T23:59:59.5Z"
        );
        assert_eq!(
            rfc3339_nano(before_epoch(2_208_988_800, 0)),
            "1900-01-01T00:00:00Z"
        );
    }

    #[test]
    fn end_of_day_and_month() {
        assert_eq!(rfc3339_nano(at(86_399, 0)), "1970-01-01T23:59:59Z");
        assert_eq!(rfc3339_nano(at(31 * 86_400, 0)), "1970-02-01T00:00:00Z");
        assert_eq!(rfc3339_nano(at(365 * 86_400, 0)), "1971-01-01T00:00:00Z");
    }

    #[test]
    fn every_day_matches_a_naive_calendar() {
        // Walk day by day from 1970 to 2400 with a calendar that knows the
        // month lengths, and compare: catches any off-by-one in the era math.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..(430 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}

//! `SOURCE_DATE_EPOCH` as calendar text, without a date crate: the date the
//! kernel puts in its version, a release's publication time, the SBOM's
//! creation time.

/// (year, month, day, hour, minute, second) in UTC.
fn civil(epoch: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = epoch.div_euclid(86_400);
    let seconds = epoch.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, seconds / 3600, seconds / 60 % 60, seconds % 60)
}

/// `2023-11-14 22:13:20 UTC`
pub fn utc_string(epoch: i64) -> String {
    let (year, month, day, hour, minute, second) = civil(epoch);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02} UTC")
}

/// `2023-11-14T22:13:20Z` (RFC 3339)
pub fn rfc3339(epoch: i64) -> String {
    let (year, month, day, hour, minute, second) = civil(epoch);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_text() {
        assert_eq!(utc_string(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_string(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_string(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}

/// Seconds since the epoch, now (0 if the clock is before 1970).
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The latest `SOURCE_DATE_EPOCH` every output can hold: cpio and squashfs
/// keep 32-bit unsigned times (2106-02-07).
pub const MAX_EPOCH: i64 = u32::MAX as i64;

/// A `SOURCE_DATE_EPOCH` that no output can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is outside the times every output can hold (0 to {MAX_EPOCH}, 1970-01-01 to 2106-02-07)")]
pub struct EpochOutOfRange(pub i64);

/// Check an epoch before anything is built with it.
pub fn check_epoch(epoch: i64) -> Result<i64, EpochOutOfRange> {
    if (0..=MAX_EPOCH).contains(&epoch) {
        Ok(epoch)
    } else {
        Err(EpochOutOfRange(epoch))
    }
}

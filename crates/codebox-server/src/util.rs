//! Small helpers every layer uses: random ids, RFC 3339 timestamps, locks that survive a
//! panic, and clipping client-sent names before they go into an error message.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Locks `mutex`, also after a thread panicked while holding it: the data behind the server's
/// locks (lists, a timestamp) is valid after any step, so a panic elsewhere must not make
/// every later request fail.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// At most `max` characters of `s`: hostile clients send long names, and an error message
/// quotes them.
pub(crate) fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A random id: `prefix` + 32 hex digits (128 bits from the OS).
pub(crate) fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-11-24T12:30:50.123456Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_091_450_123_456);
        assert_eq!(rfc3339(t), "2026-11-19T12:30:50.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn clips_by_characters() {
        assert_eq!(clip("héllo", 2), "hé");
        assert_eq!(clip("ab", 40), "ab");
    }

    #[test]
    fn ids_are_random_and_prefixed() {
        let (a, b) = (random_id("sbx_"), random_id("sbx_"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("sbx_"));
    }
}

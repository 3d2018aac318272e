//! Deployment ids (UTC time and random hex, so they sort by time) and the
//! clock the store records with.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in unix seconds.
pub fn now() -> i64 {
    // A clock before 1970 is broken; recording 0 beats failing a deploy.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A new deployment id such as `20261123T091502Z-3fa9c1`: the UTC time, so
/// ids sort by when they were made, and 24 random bits, so two made in the
/// same second differ.
pub fn new_id() -> String {
    format!("{}-{:06x}", utc_stamp(now()), random_24_bits())
}

/// What a deployment id may be, for error messages.
pub const ID_RULE: &str = "an id is letters, digits, `-`, `_` and `.`, starts with a letter \
     or digit, and is at most 64 characters long (berth makes ids like 20261123T091502Z-3fa9c1)";

/// A deployment or snapshot id as given on a command line, checked: it
/// names a directory (`snapshots/<id>/`), so it is one plain path
/// component.
pub fn parse_id(text: &str) -> Result<String, String> {
    let first_ok = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let all_ok = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if first_ok && all_ok && text.len() <= 64 {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{}` is not a deployment id: {ID_RULE}",
            crate::error::printable(text)
        ))
    }
}

/// 24 unpredictable bits without a crate: std seeds each `RandomState` from
/// the OS's randomness; the counter and the clock make calls in one thread
/// differ even if that seeding were weak.
fn random_24_bits() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(d) = SystemTime::now().duration_since(UNIX_EPOCH) {
        hasher.write_u128(d.as_nanos());
    }
    hasher.finish() & 0xff_ffff
}

/// `YYYYMMDDTHHMMSSZ` for unix seconds (at or after 1970).
fn utc_stamp(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix seconds as people read them: `2026-11-23 09:15:02Z`.
pub fn utc_time(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01, after
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // Count from 0000-03-01 so the leap day ends each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_outside_are_one_plain_path_component() {
        for good in [new_id().as_str(), "held-by-test", "a.b_c"] {
            assert_eq!(parse_id(good).unwrap(), good);
        }
        for bad in [
            "",
            "..",
            ".x",
            "-x",
            "a/b",
            "../../etc",
            "a b",
            "$(id)",
            "a\nb",
        ] {
            let err = parse_id(bad).unwrap_err();
            assert!(err.ends_with(ID_RULE), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(parse_id(&"a".repeat(65)).is_err());
    }

    proptest::proptest! {
        #![proptest_config(crate::testing::prop::config(256))]

        #[test]
        fn prop_accepted_ids_stay_in_their_directory(text in crate::testing::prop::text()) {
            if let Ok(id) = parse_id(&text) {
                let path = std::path::Path::new("/var/lib/notes/snapshots").join(&id);
                proptest::prop_assert_eq!(path.parent(), Some(std::path::Path::new("/var/lib/notes/snapshots")));
                proptest::prop_assert!(id != "." && id != "..");
            }
        }
    }

    #[test]
    fn times_for_people() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc_time(1_779_357_205), "2026-05-21 09:53:25Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn stamps_are_utc() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(1_795_424_102), "20261123T085502Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(4_107_542_399), "21000228T235959Z");
    }

    #[test]
    fn ids_have_their_shape_differ_and_sort_by_time() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        for id in &ids {
            let (stamp, random) = id.split_once('-').unwrap();
            assert_eq!(stamp.len(), 16, "{id}");
            assert!(stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T', "{id}");
            assert_eq!(random.len(), 6, "{id}");
            assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        // 24 random bits: a collision among 1000 is ~3%, among more is a bug.
        assert!(unique.len() >= 998, "only {} distinct ids", unique.len());
        assert!(*utc_stamp(now()) >= ids[0][..16]);
    }
}

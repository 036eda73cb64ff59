//! The parsers against naive references, on random input (issue 11, item 14).

use gnno_core::config::{Config, TimeFormat};
use gnno_core::progress::NoProgress;
use gnno_ingest::parse::{parse_iso, parse_time, read_all};
use proptest::prelude::*;
use std::path::Path;

/// Days since 1970-01-01, counted year by year and month by month.
fn naive_days(y: i64, m: i64, d: i64) -> i64 {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_len = |y: i64, m: i64| match m {
        2 if leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let mut days = 0;
    if y >= 1970 {
        for yy in 1970..y {
            days += if leap(yy) { 366 } else { 365 };
        }
    } else {
        for yy in y..1970 {
            days -= if leap(yy) { 366 } else { 365 };
        }
    }
    for mm in 1..m {
        days += month_len(y, mm);
    }
    days + d - 1
}

/// A field as an RFC 4180 writer would put it.
fn quote(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_owned()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn iso_dates_equal_the_day_count(
        y in 1000i64..3000, m in 1i64..=12, d in 1i64..=28,
        h in 0i64..24, mi in 0i64..60, s in 0i64..60, off in -12i64..=14,
    ) {
        let secs = naive_days(y, m, d) * 86_400 + h * 3600 + mi * 60 + s;
        prop_assert_eq!(parse_iso(&format!("{y:04}-{m:02}-{d:02}")), Some(naive_days(y, m, d) * 86_400));
        prop_assert_eq!(parse_iso(&format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")), Some(secs));
        let sign = if off < 0 { '-' } else { '+' };
        prop_assert_eq!(
            parse_iso(&format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}{sign}{:02}:00", off.abs())),
            Some(secs - off * 3600)
        );
        prop_assert_eq!(parse_time(&format!("{y:04}-{m:02}-{d:02}"), TimeFormat::Unix), None);
    }

    #[test]
    fn unix_times_round_trip_and_absurd_ones_are_refused(t in -(1i64 << 40)..(1i64 << 40), digits in 20usize..30) {
        prop_assert_eq!(parse_time(&t.to_string(), TimeFormat::Auto), Some(t));
        prop_assert_eq!(parse_time(&format!("{t}.75"), TimeFormat::Unix), Some(if t < 0 { t - 1 } else { t }));
        prop_assert_eq!(parse_time(&"9".repeat(digits), TimeFormat::Auto), None);
    }

    #[test]
    fn quoted_csv_fields_read_back_exactly(
        rows in prop::collection::vec(("[a-z ,\"\n]{1,8}", "[a-z0-9 ,\"\r\n]{1,8}", 0i64..1_000_000), 1..20)
    ) {
        // The reader trims fields; blank fields and null spellings are missing values.
        let rows: Vec<(String, String, i64)> = rows
            .into_iter()
            .map(|(u, i, t)| (u.trim().to_owned(), i.trim().to_owned(), t))
            .filter(|(u, i, _)| ![u, i].iter().any(|f| f.is_empty() || *f == "null"))
            .collect();
        prop_assume!(!rows.is_empty());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.csv");
        let mut text = String::from("\u{feff}user_id,item_id,timestamp\r\n");
        for (u, i, t) in &rows {
            text += &format!("{},{},{t}\r\n", quote(u), quote(i));
        }
        std::fs::write(&path, text).expect("write");
        let mut cfg = Config::defaults(Path::new("/")).ingest;
        cfg.inputs = vec![path.display().to_string()];
        let t = read_all(&cfg, &[path], &NoProgress).expect("reads");
        let got: Vec<(String, String, i64)> = (0..t.user.len())
            .map(|r| {
                (
                    t.users.names[t.user[r] as usize].to_string(),
                    t.items.names[t.item[r] as usize].to_string(),
                    t.ts[r],
                )
            })
            .collect();
        prop_assert_eq!(got, rows);
    }
}

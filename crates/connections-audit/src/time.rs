//! Parsing the times and cursors an auditor types, with messages that say
//! what was expected.

use chrono::{DateTime, Utc};
use connections_store::LogCursor;

/// An RFC 3339 instant, e.g. `2026-11-26T08:00:00Z`.
pub fn parse_time(flag: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim()).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        format!("{flag} {text:?} is not an RFC 3339 time ({e}); write e.g. 2026-11-26T08:00:00Z or 2026-11-26T09:00:00+01:00")
    })
}

/// A log cursor `TX:POSITION` as checkpoints and exports print it.
pub fn parse_cursor(flag: &str, text: &str) -> Result<LogCursor, String> {
    let bad = || {
        format!(
            "{flag} {text:?} is not a log cursor; give TRANSACTION:POSITION as printed in a checkpoint's \"cursor\", \
             e.g. 7421:1093"
        )
    };
    let (transaction, position) = text.trim().split_once(':').ok_or_else(bad)?;
    let transaction_id = transaction.parse::<u64>().map_err(|_| bad())?;
    let position = position.parse::<i64>().map_err(|_| bad())?;
    if position < 0 {
        return Err(bad());
    }
    Ok(LogCursor { transaction_id, position })
}

/// A window `[from, to]`; `from` after `to` is refused.
pub fn parse_window(from: Option<&str>, to: Option<&str>) -> Result<Window, String> {
    let from = from.map(|t| parse_time("--from", t)).transpose()?;
    let to = to.map(|t| parse_time("--to", t)).transpose()?;
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(format!("--from {} is after --to {}", from.to_rfc3339(), to.to_rfc3339()));
        }
    }
    Ok(Window { from, to })
}

/// A closed time window; an open end is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Start, inclusive.
    pub from: Option<DateTime<Utc>>,
    /// End, inclusive.
    pub to: Option<DateTime<Utc>>,
}

impl Window {
    /// Whether `t` is inside.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| t >= from) && self.to.is_none_or(|to| t <= to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_cursors_and_windows_are_validated_with_the_flag_in_the_message() {
        assert!(parse_time("--at", "2026-11-26T08:00:00Z").is_ok());
        assert!(parse_time("--at", "2026-11-26T09:00:00+01:00").is_ok());
        let error = parse_time("--at", "yesterday").expect_err("not a time");
        assert!(error.contains("--at") && error.contains("RFC 3339"), "{error}");
        assert!(parse_time("--at", "2026-11-26").is_err(), "a date alone is ambiguous");
        assert_eq!(parse_cursor("--from", "12:34"), Ok(LogCursor { transaction_id: 12, position: 34 }));
        for bad in ["12", "a:1", "1:-2", "1:2:3", ""] {
            assert!(parse_cursor("--from", bad).is_err(), "{bad}");
        }
        let error = parse_window(Some("2026-11-27T00:00:00Z"), Some("2026-11-26T00:00:00Z")).expect_err("reversed");
        assert!(error.contains("after"), "{error}");
    }
}

//! Cron schedules with a seconds field, the syntax of Spin's cron trigger
//! (`"0 */1 * * * *"` fires every minute at second 0).

use chrono::{DateTime, Utc};
use std::str::FromStr;

/// A cron expression of 6 or 7 fields, seconds first; fewer (a 5-field
/// Unix cron line) is an error rather than a schedule read one field off.
pub fn parse(expression: &str) -> anyhow::Result<cron::Schedule> {
    if expression.split_whitespace().count() < 6 {
        anyhow::bail!("a cron expression needs 6 fields, seconds first (e.g. \"0 * * * * *\")");
    }
    cron::Schedule::from_str(expression).map_err(|e| anyhow::anyhow!("not a valid cron expression: {e}"))
}

/// The next firing strictly after `after`.
pub fn next_after(schedule: &cron::Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.after(&after).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_field_schedules_fire_as_spin_documents() {
        let every_two = parse("1/2 * * * * *").unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(next_after(&every_two, t0).unwrap().to_rfc3339(), "2026-01-01T00:00:01+00:00");
        let minute = parse("0 */1 * * * *").unwrap();
        assert_eq!(next_after(&minute, t0).unwrap().to_rfc3339(), "2026-01-01T00:01:00+00:00");
        assert!(parse("* * * * *").is_err());
    }
}

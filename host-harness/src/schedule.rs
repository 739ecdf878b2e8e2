//! Cron schedules with a seconds field, the syntax of Spin's cron trigger
//! (`"0 */1 * * * *"` fires every minute at second 0), and how `run`
//! spreads tenants' firings over their schedule's period.
//!
//! # Spreading firings
//!
//! Every tenant on the default schedule would fire at second 0 of every
//! minute: 10,000 tenants, 10,000 instances at once. So a tenant's firings
//! are offset within the schedule's period by a stable hash of its name (as
//! Prometheus spreads scrapes by a hash of the target): the first 8 bytes of
//! the SHA-256 of the name, modulo the period in milliseconds. The same name
//! gets the same offset in every process, after every restart and in every
//! release (a test holds a golden value), so replicas and shards agree.
//!
//! The period is the smallest gap between a schedule's first
//! [`PERIOD_SAMPLES`] firings after a fixed instant ([`PERIOD_EPOCH`]):
//! a function of the expression alone, so the offset never moves while a
//! tenant runs. For a regular schedule it is its interval; for an irregular
//! one (`0 0 9-17 * * MON-FRI`) the shortest gap (1 h), so the offset is
//! under every gap and a tenant still fires once per firing of its
//! schedule, in order. Schedules with a period under
//! [`SPREAD_MIN_PERIOD_MS`] (a minute), or that fire at most once, fire on
//! the exact second as before; so does a tenant with `spread_firings =
//! false`.
//!
//! Everything here is a plain function of (schedule, name, setting, now):
//! [`spread`], [`next_planned`] and [`next_firing`] are tested without a clock.

use chrono::{DateTime, SecondsFormat, SubsecRound, TimeDelta, Utc};
use sha2::{Digest, Sha256};
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

/// Firings are spread when the schedule's period is at least this long
/// (a minute); shorter schedules fire on the exact second.
pub const SPREAD_MIN_PERIOD_MS: i64 = 60_000;

/// How many firings [`period`] looks at.
pub const PERIOD_SAMPLES: usize = 64;

/// Where [`period`] starts looking: 2001-01-01T00:00:00Z, a Monday.
pub const PERIOD_EPOCH: i64 = 978_307_200;

/// The schedule's period: the smallest gap between its first
/// [`PERIOD_SAMPLES`] firings after [`PERIOD_EPOCH`]. `None` when it fires
/// at most once from then on.
pub fn period(schedule: &cron::Schedule) -> Option<TimeDelta> {
    let epoch = DateTime::from_timestamp(PERIOD_EPOCH, 0).expect("a valid instant");
    let firings: Vec<DateTime<Utc>> = schedule.after(&epoch).take(PERIOD_SAMPLES).collect();
    firings.windows(2).map(|pair| pair[1] - pair[0]).min()
}

/// The stable hash of a tenant's name firings are spread by: the first 8
/// bytes of its SHA-256, big-endian. Never change it: every tenant's offset
/// would move (the test `the_hash_of_a_name_is_fixed` holds it).
pub fn name_hash(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Where within its schedule's period a tenant's firings fall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// `offset` (whole milliseconds, under `period`) after each of the
    /// schedule's firings.
    Offset {
        /// From the schedule's firing to the tenant's.
        offset: TimeDelta,
        /// The schedule's period ([`period`]).
        period: TimeDelta,
    },
    /// On the exact second: the tenant's `spread_firings = false`.
    Off,
    /// On the exact second: the schedule's period is under a minute
    /// (`None`: it fires at most once).
    Short {
        /// The schedule's period.
        period: Option<TimeDelta>,
    },
}

impl Spread {
    /// From the schedule's firing to the tenant's (zero on the exact second).
    pub fn offset(&self) -> TimeDelta {
        match self {
            Spread::Offset { offset, .. } => *offset,
            Spread::Off | Spread::Short { .. } => TimeDelta::zero(),
        }
    }

    /// The offset in milliseconds; `None` when the tenant fires on the
    /// exact second.
    pub fn offset_ms(&self) -> Option<i64> {
        match self {
            Spread::Offset { offset, .. } => Some(offset.num_milliseconds()),
            Spread::Off | Spread::Short { .. } => None,
        }
    }

    /// As `validate` and `status` say it, e.g. "23.456 s into each 1 min
    /// period" or "on the exact second (spread_firings = false)".
    pub fn describe(&self) -> String {
        match self {
            Spread::Offset { offset, period } => {
                format!("{} into each {} period", span(*offset), span(*period))
            }
            Spread::Off => "on the exact second (spread_firings = false)".into(),
            Spread::Short { period: Some(p) } => {
                format!("on the exact second (its period, {}, is under a minute)", span(*p))
            }
            Spread::Short { period: None } => "on the exact second (it fires at most once)".into(),
        }
    }
}

/// A span as "23.456 s", "2 min 3 s", "1 h", "7 d 2 h".
fn span(d: TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 60_000 {
        return if ms % 1000 == 0 { format!("{} s", ms / 1000) } else { format!("{}.{:03} s", ms / 1000, ms % 1000) };
    }
    let (days, hours, minutes) = (ms / 86_400_000, ms / 3_600_000 % 24, ms / 60_000 % 60);
    let seconds = ms % 60_000;
    let mut parts = Vec::new();
    for (value, unit) in [(days, "d"), (hours, "h"), (minutes, "min")] {
        if value > 0 {
            parts.push(format!("{value} {unit}"));
        }
    }
    if seconds > 0 {
        parts.push(span(TimeDelta::milliseconds(seconds)));
    }
    parts.join(" ")
}

/// How a tenant named `name` with `spread_firings` (the tenant setting,
/// true by default) fires on `schedule`.
pub fn spread(schedule: &cron::Schedule, name: &str, spread_firings: bool) -> Spread {
    if !spread_firings {
        return Spread::Off;
    }
    match period(schedule) {
        Some(period) if period.num_milliseconds() >= SPREAD_MIN_PERIOD_MS => {
            let offset = name_hash(name) % period.num_milliseconds() as u64;
            Spread::Offset { offset: TimeDelta::milliseconds(offset as i64), period }
        }
        period => Spread::Short { period },
    }
}

/// The next planned firing strictly after `now`: a firing of `schedule`
/// plus the spread's offset.
pub fn next_planned(schedule: &cron::Schedule, spread: &Spread, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let offset = spread.offset();
    // The schedule fires on whole seconds: any firing after `now - offset`
    // is after its whole second.
    let shifted = (now - offset).trunc_subsecs(0);
    next_after(schedule, shifted).map(|at| at + offset)
}

/// A tenant's next planned firing and where it falls in its period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Firing {
    /// When it is planned: the JSON line's `fired_at`.
    pub at: DateTime<Utc>,
    /// How the tenant's firings are spread.
    pub spread: Spread,
}

impl Firing {
    /// "2026-05-01T12:00:23.456Z, 23.456 s into each 1 min period".
    pub fn describe(&self) -> String {
        format!("{}, {}", shown(self.at), self.spread.describe())
    }

    /// `next_firing`, `firing_offset_ms` (null on the exact second) and
    /// `firing` (as [`Spread::describe`]), for a JSON line.
    pub fn json_fields(firing: Option<&Firing>) -> [(&'static str, serde_json::Value); 3] {
        [
            ("next_firing", firing.map(|f| shown(f.at)).into()),
            ("firing_offset_ms", firing.and_then(|f| f.spread.offset_ms()).into()),
            (
                "firing",
                firing.map_or_else(|| "never: the schedule fires no more".into(), |f| f.spread.describe()).into(),
            ),
        ]
    }
}

/// A planned time as the JSON lines show it: whole seconds as `…:00Z`,
/// an offset's milliseconds as `…:23.456Z`.
pub fn shown(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The next firing of a tenant named `name` on `schedule`, with
/// `spread_firings`, strictly after `now`; `None` when it fires no more.
pub fn next_firing(schedule: &cron::Schedule, name: &str, spread_firings: bool, now: DateTime<Utc>) -> Option<Firing> {
    let spread = spread(schedule, name, spread_firings);
    next_planned(schedule, &spread, now).map(|at| Firing { at, spread })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn seconds_field_schedules_fire_as_spin_documents() {
        let every_two = parse("1/2 * * * * *").unwrap();
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(next_after(&every_two, t0).unwrap().to_rfc3339(), "2026-01-01T00:00:01+00:00");
        let minute = parse("0 */1 * * * *").unwrap();
        assert_eq!(next_after(&minute, t0).unwrap().to_rfc3339(), "2026-01-01T00:01:00+00:00");
        assert!(parse("* * * * *").is_err());
    }

    #[test]
    fn the_hash_of_a_name_is_fixed() {
        // Golden values: a change of hash function (or of its use) moves
        // every tenant's firings, and fails here.
        assert_eq!(name_hash("acme"), 0x822b_33ad_87c1_48a0);
        let minute = parse("0 * * * * *").unwrap();
        let offset = |name: &str| spread(&minute, name, true).offset_ms().unwrap();
        assert_eq!(offset("acme"), (0x822b_33ad_87c1_48a0_u64 % 60_000) as i64);
        assert_eq!(offset("acme"), 19_872);
        // The same name, the same offset; another name, another.
        assert_eq!(offset("acme"), offset("acme"));
        assert_ne!(offset("acme"), offset("beta"));
    }

    #[test]
    fn the_period_is_the_smallest_gap_between_firings() {
        let of = |expression: &str| period(&parse(expression).unwrap()).map(|p| p.num_seconds());
        assert_eq!(of("0 * * * * *"), Some(60));
        assert_eq!(of("0 */5 * * * *"), Some(300));
        assert_eq!(of("*/10 * * * * *"), Some(10));
        assert_eq!(of("0 0 * * * *"), Some(3600));
        assert_eq!(of("0 0 9-17 * * MON-FRI"), Some(3600), "office hours: an hour, not the weekend");
        assert_eq!(of("0 0,1 * * * *"), Some(60), "minutes 0 and 1 of each hour: a minute");
        assert_eq!(of("0 0 0 1 * *"), Some(28 * 86_400), "monthly: the shortest month");
        assert_eq!(of("0 0 0 1 1 * 2030"), None, "once only");
    }

    #[test]
    fn offsets_fall_inside_the_period_and_next_firings_follow_them() {
        for expression in ["0 * * * * *", "0 */5 * * * *", "0 0 9-17 * * MON-FRI", "0 0,1 * * * *", "30 0 0 * * *"] {
            let schedule = parse(expression).unwrap();
            let period = period(&schedule).unwrap();
            for i in 0..200 {
                let name = format!("tenant-{i}");
                let s = spread(&schedule, &name, true);
                let Spread::Offset { offset, period: p } = s else { panic!("{expression}: {s:?}") };
                assert_eq!(p, period);
                assert!(offset >= TimeDelta::zero() && offset < period, "{expression} {name}: {offset}");
                // One planned firing per firing of the schedule, each its
                // offset after it, strictly after the time asked.
                let mut now = at("2026-03-06T16:59:59.250Z");
                let mut firings = schedule.after(&(now - offset).trunc_subsecs(0));
                for _ in 0..5 {
                    let next = next_planned(&schedule, &s, now).unwrap();
                    assert!(next > now, "{expression} {name}: {next} after {now}");
                    assert_eq!(next, firings.next().unwrap() + offset, "{expression} {name}");
                    now = next; // woken at the planned time: the next one
                }
            }
        }
    }

    #[test]
    fn the_next_firing_is_the_planned_time_not_the_exact_second() {
        let minute = parse("0 * * * * *").unwrap();
        let now = at("2026-05-01T12:00:40Z");
        // acme: 19.872 s into each minute; 40 s past, so the next minute's.
        let acme = next_firing(&minute, "acme", true, now).unwrap();
        assert_eq!(shown(acme.at), "2026-05-01T12:01:19.872Z");
        assert_eq!(acme.describe(), "2026-05-01T12:01:19.872Z, 19.872 s into each 1 min period");
        assert_eq!(
            next_firing(&minute, "acme", true, at("2026-05-01T12:00:19.871Z")).unwrap().at,
            at("2026-05-01T12:00:19.872Z")
        );
        assert_eq!(
            next_firing(&minute, "acme", true, at("2026-05-01T12:00:19.872Z")).unwrap().at,
            at("2026-05-01T12:01:19.872Z")
        );
        // Off: the exact second, as before.
        let off = next_firing(&minute, "acme", false, now).unwrap();
        assert_eq!(shown(off.at), "2026-05-01T12:01:00Z");
        assert_eq!(off.spread, Spread::Off);
        assert_eq!(off.spread.offset_ms(), None);
        assert_eq!(off.describe(), "2026-05-01T12:01:00Z, on the exact second (spread_firings = false)");
        // A long period says its offset in its units.
        let hourly = next_firing(&parse("0 0 * * * *").unwrap(), "acme", true, now).unwrap();
        assert!(hourly.spread.describe().ends_with("into each 1 h period"), "{}", hourly.spread.describe());
        let fields = Firing::json_fields(Some(&acme));
        assert_eq!(fields[0].1, "2026-05-01T12:01:19.872Z");
        assert_eq!(fields[1].1, 19_872);
        assert_eq!(Firing::json_fields(Some(&off))[1].1, serde_json::Value::Null);
    }

    #[test]
    fn sub_minute_schedules_fire_on_the_exact_second() {
        for expression in ["* * * * * *", "*/10 * * * * *", "1/2 * * * * *", "0,30 * * * * *"] {
            let schedule = parse(expression).unwrap();
            let s = spread(&schedule, "acme", true);
            assert!(matches!(s, Spread::Short { period: Some(_) }), "{expression}: {s:?}");
            let now = at("2026-05-01T12:00:00.400Z");
            assert_eq!(next_planned(&schedule, &s, now), next_after(&schedule, now), "{expression}");
            assert!(s.describe().starts_with("on the exact second (its period, "), "{}", s.describe());
        }
        let once = parse("0 0 0 1 1 * 2030").unwrap();
        assert_eq!(spread(&once, "acme", true), Spread::Short { period: None });
    }

    #[test]
    fn a_thousand_names_spread_over_the_minute() {
        let minute = parse("0 * * * * *").unwrap();
        let mut per_second = [0usize; 60];
        for i in 0..1000 {
            let offset = spread(&minute, &format!("tenant-{i:04}"), true).offset_ms().unwrap();
            per_second[(offset / 1000) as usize] += 1;
        }
        // The mean is 16.7 a second; a uniform hash keeps every second
        // under a small multiple of it, and leaves none empty.
        let (most, least) = (*per_second.iter().max().unwrap(), *per_second.iter().min().unwrap());
        assert!(most <= 40, "{most} in one second: {per_second:?}");
        assert!(least >= 3, "{least} in one second: {per_second:?}");
    }

    #[test]
    fn spreading_off_or_a_one_off_schedule_fires_on_the_exact_second() {
        let minute = parse("0 * * * * *").unwrap();
        assert_eq!(spread(&minute, "acme", false), Spread::Off);
        let now = at("2026-05-01T12:00:00.400Z");
        assert_eq!(next_firing(&minute, "acme", false, now).unwrap().at, at("2026-05-01T12:01:00Z"));
        let yearly = parse("0 0 0 1 1 *").unwrap();
        let s = spread(&yearly, "acme", true);
        assert!(s.offset() < TimeDelta::days(365), "{s:?}");
    }
}

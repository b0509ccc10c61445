//! Schedules: 6-field NCRONTAB as Azure Functions reads it (`second minute hour day month day-of-week`,
//! day-of-week 0–6 with 0 = Sunday, names allowed), evaluated in UTC or a named IANA time zone.
//!
//! Parsing is done by `croner` with seconds required and day-of-month AND day-of-week (NCrontab's semantics,
//! not Vixie cron's OR). croner's own extensions (`L`, `W`, `#`, `?`, `+`) are rejected because the Functions
//! host would not accept them in a timer trigger and a policy must mean the same thing everywhere.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use super::spec::{CatchUp, ScheduleSpec};

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written.
    pub spec: ScheduleSpec,
    cron: Cron,
    tz: Tz,
    catch_up_window: TimeDelta,
}

/// Parses a 6-field NCRONTAB expression.
pub fn parse_ncrontab(expr: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 6 {
        return Err(format!(
            "`{expr}` has {} fields; NCRONTAB needs 6: second minute hour day month day-of-week (e.g. `0 0 3 * * Sun`)",
            fields.len()
        ));
    }
    // croner reads the pattern in upper case, so `l` and `15w` are its `L` and `W` too.
    let upper = expr.to_ascii_uppercase();
    if let Some(c) = upper
        .chars()
        .find(|c| matches!(c, 'L' | 'W' | '#' | '?' | '+') && !is_in_name(&upper, *c))
    {
        return Err(format!(
            "`{expr}` uses `{c}`, which NCRONTAB (Azure Functions timers) does not support"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| format!("`{expr}` is not a valid NCRONTAB expression: {e}"))
}

/// `W` and `L` also occur in names such as `Wed`, `Jul`; only a bare letter is croner syntax. `expr` is in
/// upper case.
fn is_in_name(expr: &str, c: char) -> bool {
    if !matches!(c, 'L' | 'W') {
        return false;
    }
    expr.split(|ch: char| !ch.is_ascii_alphabetic())
        .all(|word| !word.contains(c) || word.len() == 3)
}

impl Schedule {
    /// Validates a schedule spec.
    pub fn new(
        spec: ScheduleSpec,
        catch_up_window: TimeDelta,
    ) -> Result<Schedule, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let cron = parse_ncrontab(&spec.cron)
            .map_err(|e| errors.push(("cron", e)))
            .ok();
        let tz = spec
            .time_zone
            .parse::<Tz>()
            .map_err(|_| {
                errors.push((
                    "time_zone",
                    format!(
                        "`{}` is not an IANA time zone (e.g. `Europe/Amsterdam`, `UTC`)",
                        spec.time_zone
                    ),
                ))
            })
            .ok();
        match (cron, tz) {
            (Some(cron), Some(tz)) if errors.is_empty() => Ok(Schedule {
                spec,
                cron,
                tz,
                catch_up_window,
            }),
            _ => Err(errors),
        }
    }

    /// The first due instant strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Every due instant in `(after, until]`, in order.
    pub fn due_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let mut cursor = after;
        std::iter::from_fn(move || {
            let next = self.next_after(cursor)?;
            if next > until {
                return None;
            }
            cursor = next;
            Some(next)
        })
    }

    /// The instants a timer tick at `now` should fire, given the last instant that fired (`None`: never),
    /// applying the catch-up policy. A tick late by less than `grace` is on time, not a catch-up.
    pub fn due_at_tick(
        &self,
        last_fired: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        grace: TimeDelta,
    ) -> Vec<DateTime<Utc>> {
        let on_time_from = now - grace;
        let after = match last_fired {
            Some(last) => last,
            None => on_time_from,
        };
        match self.spec.catch_up {
            CatchUp::Skip => self.due_between(after.max(on_time_from), now).collect(),
            CatchUp::Latest => self.due_between(after, now).last().into_iter().collect(),
            CatchUp::All => self
                .due_between(after.max(now - self.catch_up_window), now)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    fn spec(cron: &str, tz: &str, catch_up: CatchUp) -> ScheduleSpec {
        ScheduleSpec {
            name: "s".into(),
            cron: cron.into(),
            time_zone: tz.into(),
            model: "m".into(),
            action: Default::default(),
            catch_up,
            catch_up_window: None,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn day_of_week_zero_is_sunday() {
        let s = Schedule::new(
            spec("0 0 3 * * 0", "UTC", CatchUp::Latest),
            TimeDelta::days(1),
        )
        .unwrap();
        let next = s.next_after(utc(2026, 11, 23, 0, 0)).unwrap(); // a Monday
        assert_eq!(next.weekday(), Weekday::Sun);
        assert_eq!(next, utc(2026, 11, 29, 3, 0));
    }

    #[test]
    fn day_names_work_and_match_numbers() {
        let by_name = Schedule::new(
            spec("0 30 9 * * Mon-Fri", "UTC", CatchUp::Latest),
            TimeDelta::days(1),
        )
        .unwrap();
        let by_number = Schedule::new(
            spec("0 30 9 * * 1-5", "UTC", CatchUp::Latest),
            TimeDelta::days(1),
        )
        .unwrap();
        let from = utc(2026, 11, 21, 0, 0); // a Saturday
        assert_eq!(by_name.next_after(from), by_number.next_after(from));
        assert_eq!(by_name.next_after(from).unwrap(), utc(2026, 11, 23, 9, 30));
    }

    #[test]
    fn five_field_cron_is_rejected_with_the_expected_shape() {
        let err = parse_ncrontab("0 3 * * 0").unwrap_err();
        assert!(err.contains("6"), "{err}");
    }

    #[test]
    fn croner_extensions_are_rejected() {
        assert!(parse_ncrontab("0 0 0 L * *").is_err());
        assert!(parse_ncrontab("0 0 0 * * 5#2").is_err());
        assert!(parse_ncrontab("0 0 0 * * Wed").is_ok());
        assert!(parse_ncrontab("0 0 0 * Jul *").is_ok());
        // croner upper-cases the pattern: lower-case `l` and `w` are the same syntax.
        assert!(parse_ncrontab("0 0 0 l * *").is_err());
        assert!(parse_ncrontab("0 0 0 15w * *").is_err());
        assert!(parse_ncrontab("0 0 0 * * wed").is_ok());
        assert!(parse_ncrontab("0 0 0 * jul *").is_ok());
    }

    #[test]
    fn named_time_zone_is_honoured_across_dst() {
        let s = Schedule::new(
            spec("0 0 3 * * *", "Europe/Amsterdam", CatchUp::Latest),
            TimeDelta::days(1),
        )
        .unwrap();
        // 03:00 Amsterdam is 02:00 UTC in winter (CET) and 01:00 UTC in summer (CEST).
        assert_eq!(s.next_after(utc(2026, 1, 10, 12, 0)).unwrap().hour(), 2);
        assert_eq!(s.next_after(utc(2026, 7, 10, 12, 0)).unwrap().hour(), 1);
    }

    #[test]
    fn catch_up_policies_choose_what_a_late_tick_fires() {
        let last = utc(2026, 11, 23, 10, 0);
        let now = utc(2026, 11, 23, 10, 5) + TimeDelta::seconds(20);
        let grace = TimeDelta::seconds(30);
        let every_minute =
            |c| Schedule::new(spec("0 * * * * *", "UTC", c), TimeDelta::minutes(3)).unwrap();
        assert_eq!(
            every_minute(CatchUp::Latest).due_at_tick(Some(last), now, grace),
            vec![utc(2026, 11, 23, 10, 5)]
        );
        assert_eq!(
            every_minute(CatchUp::Skip).due_at_tick(Some(last), now, grace),
            vec![utc(2026, 11, 23, 10, 5)]
        );
        assert_eq!(
            every_minute(CatchUp::All).due_at_tick(Some(last), now, grace),
            vec![
                utc(2026, 11, 23, 10, 3),
                utc(2026, 11, 23, 10, 4),
                utc(2026, 11, 23, 10, 5)
            ]
        );
        // A duplicate tick after the instant fired finds nothing new.
        assert!(
            every_minute(CatchUp::All)
                .due_at_tick(Some(utc(2026, 11, 23, 10, 5)), now, grace)
                .is_empty()
        );
    }
}

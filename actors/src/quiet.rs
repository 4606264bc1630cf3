//! Quiet hours: a daily window of local time (`[limits] quiet_hours`, in `[limits] time_zone`)
//! inside which nothing new goes out.
//!
//! [`QuietHours`] is pure: whether a unix second is inside the window and when the window it is in
//! ends, by the wall clock of the zone (its daylight saving days included: a window follows the
//! local clock, so on the day the clocks go forward an hour of it may be skipped, and on the day
//! they go back a time of day inside it may come twice). The IANA database is the one compiled
//! into the binary (`jiff`'s bundled copy), so every instance reads the same rules, with or
//! without `/usr/share/zoneinfo`.
//!
//! What waits is decided elsewhere, each by one call here: the lifecycle holds what arrives and
//! claims nothing while [`QuietHours::contains`] says so, and delivery holds a slice not yet
//! written until [`QuietHours::wait_outside`] returns (docs/operations.md, "Quiet hours").
//! Must not touch: anything but the clock's reading; it imports nothing of the service but the
//! clock.

use std::sync::Arc;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

use crate::clock::Clock;

/// A sleeper inside the window looks at the clock again at least this often: the service's
/// clock follows Postgres' and may be corrected meanwhile.
const RECHECK: Duration = Duration::from_secs(30);

/// The daily quiet window, or none (off). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct QuietHours(Option<Arc<Daily>>);

#[derive(Debug)]
struct Daily {
    /// Seconds after local midnight: the window is `[start, end)`, across midnight when
    /// `start > end`.
    start: i32,
    end: i32,
    zone: TimeZone,
    /// As configured, for log lines.
    text: String,
}

/// Why a `quiet_hours` or `time_zone` value is refused.
#[derive(Debug, thiserror::Error)]
pub enum QuietHoursError {
    #[error("{0:?} is not a window: write HH:MM-HH:MM (24-hour local times, such as 22:00-08:00), or \"\" for none")]
    Window(String),
    #[error("{0:?}: a window that starts when it ends is empty or the whole day; leave quiet_hours empty for none")]
    Empty(String),
    #[error("{name:?} is not a time zone of the IANA database (such as Europe/Moscow or UTC)")]
    Zone {
        name: String,
        #[source]
        source: jiff::Error,
    },
}

impl QuietHours {
    /// No quiet hours.
    pub fn off() -> QuietHours {
        QuietHours(None)
    }

    /// `window` is `HH:MM-HH:MM` (empty: off), local time in the IANA zone `time_zone`.
    pub fn parse(window: &str, time_zone: &str) -> Result<QuietHours, QuietHoursError> {
        let zone = TimeZone::get(time_zone).map_err(|source| QuietHoursError::Zone {
            name: time_zone.to_string(),
            source,
        })?;
        let window = window.trim();
        if window.is_empty() {
            return Ok(QuietHours::off());
        }
        let bad = || QuietHoursError::Window(window.to_string());
        let (start, end) = window.split_once('-').ok_or_else(bad)?;
        let (start, end) = (
            time_of_day(start).ok_or_else(bad)?,
            time_of_day(end).ok_or_else(bad)?,
        );
        if start == end {
            return Err(QuietHoursError::Empty(window.to_string()));
        }
        Ok(QuietHours(Some(Arc::new(Daily {
            start,
            end,
            zone,
            text: format!("{window} {time_zone}"),
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The window and its zone as configured ("22:00-08:00 Europe/Moscow"), or "off".
    pub fn describe(&self) -> &str {
        self.0.as_ref().map_or("off", |d| d.text.as_str())
    }

    /// Whether unix second `now` is inside the window.
    pub fn contains(&self, now: i64) -> bool {
        self.0.as_ref().is_some_and(|d| d.contains(now))
    }

    /// The unix second at which the window `now` is in ends (the first second outside it), or
    /// `None` when `now` is outside (or quiet hours are off).
    pub fn next_end(&self, now: i64) -> Option<i64> {
        self.0.as_ref().and_then(|d| d.next_end(now))
    }

    /// Returns once `clock` says it is outside the window (at once when it is already, or quiet
    /// hours are off).
    pub async fn wait_outside(&self, clock: &Clock) {
        while let Some(end) = self.next_end(clock.now_secs()) {
            let left_ms = end.saturating_mul(1000).saturating_sub(clock.now_ms());
            let left = Duration::from_millis(left_ms.max(1) as u64);
            tokio::time::sleep(left.min(RECHECK)).await;
        }
    }

    /// Whether some second from unix second `from` to `to` was inside the window (a slice made
    /// at `from` and going out at `to` waited for quiet hours). The window starts and ends on a
    /// minute of local time, and the clocks of every zone move by whole minutes, so looking at
    /// `from`, `to` and each minute between is exact; a day or more always holds a window.
    pub fn crossed(&self, from: i64, to: i64) -> bool {
        if !self.is_on() || to < from {
            return false;
        }
        if to - from >= 86_400 {
            return true;
        }
        let minutes = (from.div_euclid(60) + 1..=to.div_euclid(60)).map(|m| m * 60);
        [from, to]
            .into_iter()
            .chain(minutes)
            .any(|t| self.contains(t))
    }
}

/// Unix second `secs` as RFC 3339 in UTC, for log lines.
pub fn rfc3339(secs: i64) -> String {
    Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
}

/// `HH:MM` as seconds after midnight.
fn time_of_day(text: &str) -> Option<i32> {
    let (h, m) = text.trim().split_once(':')?;
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 3_600 + m * 60)
}

impl Daily {
    /// The local date and second of the day at unix second `now`.
    fn local(&self, now: i64) -> Option<(Date, i32)> {
        let dt = self.zone.to_datetime(Timestamp::from_second(now).ok()?);
        let t = dt.time();
        let secs = i32::from(t.hour()) * 3_600 + i32::from(t.minute()) * 60 + i32::from(t.second());
        Some((dt.date(), secs))
    }

    fn inside(&self, secs: i32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&secs)
        } else {
            secs >= self.start || secs < self.end
        }
    }

    fn contains(&self, now: i64) -> bool {
        self.local(now).is_some_and(|(_, secs)| self.inside(secs))
    }

    fn next_end(&self, now: i64) -> Option<i64> {
        let (date, secs) = self.local(now)?;
        if !self.inside(secs) {
            return None;
        }
        // Inside: the end comes today unless the window wrapped past midnight and it is before
        // midnight still.
        let date = if secs < self.end {
            date
        } else {
            date.tomorrow().ok()?
        };
        let (h, m) = (self.end / 3_600, self.end % 3_600 / 60);
        let end = self
            .zone
            .to_ambiguous_timestamp(date.at(h as i8, m as i8, 0, 0));
        let (earlier, later) = (
            end.earlier().ok()?.as_second(),
            end.later().ok()?.as_second(),
        );
        match end.offset() {
            // The end's local time is skipped (the clocks went forward over it): the window ends
            // when the clocks jump past it, between the two readings.
            AmbiguousOffset::Gap { .. } => Some(self.first_outside(earlier.max(now), later)),
            // It comes twice (the clocks went back): the first time after `now`.
            _ => [earlier, later].into_iter().find(|&t| t > now),
        }
    }

    /// The first second in `(inside, outside]` that is outside, `inside` being inside and the
    /// seconds between inside until they are not (a jump of the clocks lies between them).
    fn first_outside(&self, mut inside: i64, mut outside: i64) -> i64 {
        while outside - inside > 1 {
            let mid = inside + (outside - inside) / 2;
            if self.contains(mid) {
                inside = mid;
            } else {
                outside = mid;
            }
        }
        outside
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unix second of local `y-m-d h:mi:s` in `zone` (the earlier of two readings).
    fn at(zone: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8) -> i64 {
        TimeZone::get(zone)
            .unwrap()
            .to_ambiguous_timestamp(jiff::civil::date(y, mo, d).at(h, mi, s, 0))
            .earlier()
            .unwrap()
            .as_second()
    }

    fn utc(h: i8, mi: i8, s: i8) -> i64 {
        at("UTC", 2026, 12, 5, h, mi, s)
    }

    #[test]
    fn a_slice_made_before_a_window_and_sent_after_it_crossed_it() {
        let q = QuietHours::parse("13:00-14:30", "UTC").unwrap();
        assert!(
            q.crossed(utc(12, 59, 50), utc(14, 30, 1)),
            "made before, sent after"
        );
        assert!(q.crossed(utc(12, 0, 0), utc(13, 0, 0)), "sent as it began");
        assert!(
            !q.crossed(utc(14, 30, 0), utc(23, 0, 0)),
            "made after it ended"
        );
        assert!(!q.crossed(utc(9, 0, 0), utc(12, 59, 59)), "before it began");
        assert!(
            q.crossed(utc(15, 0, 0), utc(15, 0, 0) + 86_400),
            "a day holds one"
        );
        assert!(!QuietHours::off().crossed(0, 1_000_000));
    }

    #[test]
    fn a_window_within_a_day_holds_its_start_and_not_its_end() {
        let q = QuietHours::parse("13:00-14:30", "UTC").unwrap();
        assert!(!q.contains(utc(12, 59, 59)));
        assert!(q.contains(utc(13, 0, 0)), "the start is inside");
        assert!(q.contains(utc(14, 29, 59)));
        assert!(!q.contains(utc(14, 30, 0)), "the end is outside");
        assert_eq!(q.next_end(utc(13, 10, 0)), Some(utc(14, 30, 0)));
        assert_eq!(
            q.next_end(utc(14, 30, 0)),
            None,
            "outside: no end to wait for"
        );
        assert_eq!(q.next_end(utc(9, 0, 0)), None);
    }

    #[test]
    fn a_window_across_midnight_ends_the_next_morning() {
        let q = QuietHours::parse("22:00-08:00", "Europe/Moscow").unwrap();
        let msk = |d, h, mi| at("Europe/Moscow", 2026, 12, d, h, mi, 0);
        assert!(q.contains(msk(5, 22, 0)));
        assert!(q.contains(msk(5, 23, 59)));
        assert!(q.contains(msk(6, 0, 0)));
        assert!(q.contains(msk(6, 7, 59)));
        assert!(!q.contains(msk(6, 8, 0)));
        assert!(!q.contains(msk(5, 21, 59)));
        assert!(!q.contains(msk(5, 12, 0)));
        // Moscow is UTC+3 all year: 22:00 there is 19:00 UTC.
        assert!(q.contains(utc(19, 0, 0)));
        assert!(!q.contains(utc(18, 59, 59)));
        assert_eq!(q.next_end(msk(5, 23, 0)), Some(msk(6, 8, 0)));
        assert_eq!(q.next_end(msk(6, 3, 0)), Some(msk(6, 8, 0)));
        assert_eq!(q.next_end(msk(6, 3, 0)), Some(utc(5, 0, 0) + 86_400));
    }

    #[test]
    fn on_the_days_the_clocks_change_the_window_follows_the_wall_clock() {
        // Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
        let ber = |mo, d, h, mi| at("Europe/Berlin", 2026, mo, d, h, mi, 0);
        let q = QuietHours::parse("22:00-07:00", "Europe/Berlin").unwrap();
        // Spring: the night is an hour shorter.
        let spring = q.next_end(ber(3, 28, 23, 0)).unwrap();
        assert_eq!(spring, ber(3, 29, 7, 0));
        assert_eq!(spring - ber(3, 28, 22, 0), 8 * 3_600);
        // Autumn: an hour longer.
        let autumn = q.next_end(ber(10, 24, 23, 0)).unwrap();
        assert_eq!(autumn - ber(10, 24, 22, 0), 10 * 3_600);
        // An end that the clocks skip: the window ends as they jump past it.
        let skipped = QuietHours::parse("22:00-02:30", "Europe/Berlin").unwrap();
        let jump = at("UTC", 2026, 3, 29, 1, 0, 0);
        assert!(skipped.contains(jump - 1));
        assert!(!skipped.contains(jump), "03:00 CEST is after 02:30");
        assert_eq!(skipped.next_end(ber(3, 28, 23, 0)), Some(jump));
        // An end that comes twice: the first time, then the repeated half hour is quiet again.
        let twice = QuietHours::parse("22:00-02:30", "Europe/Berlin").unwrap();
        let first = at("UTC", 2026, 10, 25, 0, 30, 0);
        assert_eq!(twice.next_end(ber(10, 24, 23, 0)), Some(first));
        let again = at("UTC", 2026, 10, 25, 1, 10, 0); // 02:10 CET
        assert!(twice.contains(again));
        assert_eq!(twice.next_end(again), Some(first + 3_600));
    }

    #[test]
    fn a_bad_window_or_zone_is_refused_and_empty_is_off() {
        let off = QuietHours::parse("", "UTC").unwrap();
        assert!(!off.is_on());
        assert!(!off.contains(utc(3, 0, 0)));
        assert_eq!(off.next_end(utc(3, 0, 0)), None);
        assert_eq!(off.describe(), "off");
        for bad in [
            "22:00",
            "22-08",
            "25:00-08:00",
            "22:60-08:00",
            "2200-0800",
            "22:00-8:00",
        ] {
            let err = QuietHours::parse(bad, "UTC").unwrap_err();
            assert!(matches!(err, QuietHoursError::Window(_)), "{bad}: {err}");
        }
        let err = QuietHours::parse("08:00-08:00", "UTC").unwrap_err();
        assert!(matches!(err, QuietHoursError::Empty(_)), "{err}");
        let err = QuietHours::parse("22:00-08:00", "Mars/Olympus").unwrap_err();
        assert!(err.to_string().contains("Mars/Olympus"), "{err}");
        let err = QuietHours::parse("", "Nowhere/Else").unwrap_err();
        assert!(
            matches!(err, QuietHoursError::Zone { .. }),
            "a zone is checked when off too"
        );
        let on = QuietHours::parse(" 22:00-08:00 ", "Europe/Moscow").unwrap();
        assert_eq!(on.describe(), "22:00-08:00 Europe/Moscow");
    }

    #[actix_rt::test]
    async fn waiting_returns_at_once_outside_the_window_and_not_inside() {
        let q = QuietHours::parse("13:00-14:00", "UTC").unwrap();
        let inside = Clock::fixed_at_ms(utc(13, 59, 59) * 1000 + 500);
        let waited = tokio::time::timeout(Duration::from_millis(700), q.wait_outside(&inside));
        assert!(waited.await.is_err(), "returned inside the window");
        let outside = Clock::fixed_at_ms(utc(15, 0, 0) * 1000);
        tokio::time::timeout(Duration::from_secs(1), q.wait_outside(&outside))
            .await
            .expect("no wait outside the window");
        tokio::time::timeout(
            Duration::from_secs(1),
            QuietHours::off().wait_outside(&outside),
        )
        .await
        .expect("no wait when off");
    }
}

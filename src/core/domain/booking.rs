//! Table bookings taken by the `take_booking` tool: the model's arguments checked against the
//! tenant's [`BookingRules`]. Pure: "now" (in the tenant's time zone) is an argument, and every
//! problem is phrased so the model can relay it to the caller.

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::{Date, Month, PrimitiveDateTime};

use crate::core::domain::tenant::{BookingRules, DAY_MINUTES, WEEKDAYS, hhmm};

/// The `take_booking` arguments as the model sends them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookingRequest {
    /// `YYYY-MM-DD`, the calendar date of the booking (00:30 on Saturday is Friday night).
    pub date: String,
    /// `HH:MM`, 24-hour.
    pub time: String,
    pub party_size: u32,
    pub name: String,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

/// A booking that passed every rule: what is stored with the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Booking {
    /// `YYYY-MM-DD`
    pub date: String,
    /// `HH:MM`
    pub time: String,
    pub party_size: u32,
    pub name: String,
    pub phone: Option<String>,
    pub notes: Option<String>,
}

/// Longest name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest notes accepted, in characters.
pub const MAX_NOTES_CHARS: usize = 500;

/// Checks the `take_booking` arguments against `rules` at `now_local` (the business's local
/// time). `Ok` holds the normalised booking (trimmed text, zero-padded time); `Err` every
/// problem found, each a sentence the model can pass on.
pub fn validate(args_json: &str, rules: &BookingRules, now_local: PrimitiveDateTime) -> Result<Booking, Vec<String>> {
    let req: BookingRequest = serde_json::from_str(args_json)
        .map_err(|e| vec![format!("the booking details could not be read ({e}); ask the caller for them again")])?;
    let mut problems = Vec::new();

    let date = parse_date(&req.date);
    if date.is_none() {
        problems.push(format!("{:?} is not a valid date (expected YYYY-MM-DD)", req.date));
    }
    let minute = parse_time(&req.time);
    if minute.is_none() {
        problems.push(format!("{:?} is not a valid time (expected HH:MM, 24-hour clock)", req.time));
    }

    let today = now_local.date();
    let mut date_ok = false;
    if let Some(d) = date {
        let ahead = (d - today).whole_days();
        if d < today {
            problems.push(format!("{} is in the past: today is {}", long_date(d), long_date(today)));
        } else if ahead > i64::from(rules.max_days_ahead) {
            let latest = today.checked_add(time::Duration::days(i64::from(rules.max_days_ahead))).unwrap_or(today);
            problems.push(if rules.max_days_ahead == 0 {
                "we only take bookings for today".to_owned()
            } else {
                format!(
                    "we take bookings at most {} days ahead, so {} is too far: the latest date is {}",
                    rules.max_days_ahead,
                    long_date(d),
                    long_date(latest)
                )
            });
        } else {
            date_ok = true;
        }
    }
    if let (Some(d), Some(m), true) = (date, minute, date_ok) {
        let now_minute = u16::from(now_local.hour()) * 60 + u16::from(now_local.minute());
        if d == today && m <= now_minute {
            problems.push(format!("{} today has already passed: it is now {}", hhmm(m), hhmm(now_minute)));
        } else {
            let weekday = usize::from(d.weekday().number_days_from_monday());
            if !rules.hours.is_open_for_booking(weekday, m, rules.last_booking_before_close_min) {
                problems.push(hours_problem(rules, weekday, m));
            }
        }
    }

    if req.party_size < rules.min_party {
        problems.push(if rules.min_party <= 1 {
            "a booking must be for at least 1 person".to_owned()
        } else {
            format!("we take bookings for at least {} people", rules.min_party)
        });
    } else if req.party_size > rules.max_party {
        problems.push(format!(
            "we take up to {} {} per booking; for {} the caller should speak with the staff",
            rules.max_party,
            if rules.max_party == 1 { "person" } else { "people" },
            req.party_size
        ));
    }

    let name = req.name.trim().to_owned();
    if name.is_empty() {
        problems.push("the booking needs a name: ask the caller for it".to_owned());
    } else if name.chars().count() > MAX_NAME_CHARS {
        problems.push(format!("the name is too long (at most {MAX_NAME_CHARS} characters)"));
    }

    let phone = non_empty(req.phone);
    if let Some(p) = &phone
        && !is_plausible_phone(p)
    {
        problems.push(format!("{p:?} does not look like a phone number: ask the caller to repeat it"));
    }
    let notes = non_empty(req.notes);
    if notes.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTES_CHARS) {
        problems
            .push(format!("the notes are too long (at most {MAX_NOTES_CHARS} characters): keep only the essentials"));
    }

    match (date, minute) {
        (Some(d), Some(m)) if problems.is_empty() => Ok(Booking {
            date: format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
            time: hhmm(m),
            party_size: req.party_size,
            name,
            phone,
            notes,
        }),
        _ => Err(problems),
    }
}

/// The `function_call_output` for an accepted booking.
pub fn tool_output_ok(b: &Booking) -> String {
    json!({"booked": true, "booking": b}).to_string()
}

/// The `function_call_output` for a refused booking: the problems and the opening hours, so the
/// model can offer an alternative.
pub fn tool_output_rejected(problems: &[String], rules: &BookingRules) -> String {
    json!({"booked": false, "problems": problems, "opening_hours": rules.hours.describe()}).to_string()
}

/// Why `minute` of `weekday` cannot be booked (the date itself is fine).
fn hours_problem(rules: &BookingRules, weekday: usize, minute: u16) -> String {
    let hours = &rules.hours;
    let lead = rules.last_booking_before_close_min;
    let week = hours.describe();
    if let Some((day, open, close)) = hours.service_containing(weekday, minute) {
        // Open then, but too close to closing.
        let last = u32::from(close).saturating_sub(lead);
        if last < u32::from(open) {
            return format!(
                "the {}–{} service on {} is too short to take bookings; opening hours: {week}",
                hhmm(open),
                hhmm(close),
                WEEKDAYS[day]
            );
        }
        // `last` ≤ close ≤ 2 days of minutes, so it fits a u16.
        let last = hhmm(u16::try_from(last).unwrap_or(0));
        let is_last_service = hours.days[day].iter().all(|&(o, _)| o <= open);
        return if is_last_service {
            format!("the last booking on {} is at {last}", WEEKDAYS[day])
        } else {
            format!("the last booking for the {}–{} service on {} is at {last}", hhmm(open), hhmm(close), WEEKDAYS[day])
        };
    }
    let day = WEEKDAYS[weekday];
    if hours.days[weekday].is_empty() {
        return format!("we are closed on {day}s; opening hours: {week}");
    }
    let lead_note = if lead == 0 { String::new() } else { format!(" (last booking {lead} minutes before closing)") };
    format!(
        "we do not take bookings at {} on {day}: on {day} we are open {}{lead_note}; opening hours: {week}",
        hhmm(minute),
        hours.describe_day(weekday)
    )
}

/// `YYYY-MM-DD`, a real calendar date.
fn parse_date(s: &str) -> Option<Date> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let day = u8::try_from(num(8..10)?).ok()?;
    Date::from_calendar_date(year, month, day).ok()
}

/// `HH:MM` (or `H:MM`), 24-hour, as minutes from midnight.
fn parse_time(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let digits = |p: &str, lens: std::ops::RangeInclusive<usize>| {
        lens.contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m).filter(|&v| v < DAY_MINUTES)
}

/// `Saturday 21 November 2026`
fn long_date(d: Date) -> String {
    format!("{} {} {} {}", WEEKDAYS[usize::from(d.weekday().number_days_from_monday())], d.day(), d.month(), d.year())
}

/// Digits, spaces and a leading `+`, with 6 to 20 digits.
fn is_plausible_phone(p: &str) -> bool {
    let body = p.strip_prefix('+').unwrap_or(p);
    let digits = body.bytes().filter(u8::is_ascii_digit).count();
    body.bytes().all(|c| c.is_ascii_digit() || c == b' ') && (6..=20).contains(&digits)
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::domain::tenant::WeeklyHours;
    use serde_json::Value;
    use time::macros::datetime;

    /// Trattoria-like: Mon closed; Tue-Sun lunch 12:00-14:30; Tue-Sat dinner 19:00-22:30;
    /// Friday dinner runs 19:00-01:00. Up to 12 people, last booking 30 min before closing.
    fn rules() -> BookingRules {
        let mut hours = WeeklyHours::default();
        for d in 1..7 {
            hours.days[d].push((720, 870));
        }
        for d in [1, 2, 3, 5] {
            hours.days[d].push((1140, 1350));
        }
        hours.days[4].push((1140, 1500));
        BookingRules { min_party: 1, max_party: 12, hours, last_booking_before_close_min: 30, max_days_ahead: 60 }
    }

    /// Saturday 21 November 2026, 20:05.
    const NOW: PrimitiveDateTime = datetime!(2026-11-21 20:05);

    fn args(date: &str, time: &str, party: u32) -> String {
        json!({"date": date, "time": time, "party_size": party, "name": "Rossi"}).to_string()
    }

    fn problems(args: &str) -> Vec<String> {
        validate(args, &rules(), NOW).expect_err("should be refused")
    }

    fn assert_one_problem(args: &str, needle: &str) {
        let ps = problems(args);
        assert_eq!(ps.len(), 1, "{ps:#?}");
        assert!(ps[0].contains(needle), "no {needle:?} in {ps:#?}");
    }

    #[test]
    fn a_good_booking_is_normalised() {
        let json = json!({
            "date": "2026-11-24", "time": "12:30", "party_size": 4, "name": "  Rossi  ",
            "phone": " +39 333 123 4567 ", "notes": "  "
        })
        .to_string();
        let b = validate(&json, &rules(), NOW).unwrap();
        assert_eq!(
            b,
            Booking {
                date: "2026-11-24".into(),
                time: "12:30".into(),
                party_size: 4,
                name: "Rossi".into(),
                phone: Some("+39 333 123 4567".into()),
                notes: None,
            }
        );
        // A one-digit hour is padded.
        let mut r = rules();
        r.hours.days[1] = vec![(540, 600)];
        assert_eq!(validate(&args("2026-11-24", "9:05", 2), &r, NOW).unwrap().time, "09:05");
    }

    #[test]
    fn past_dates_are_refused() {
        assert_one_problem(&args("2026-11-20", "20:00", 2), "Friday 20 November 2026 is in the past");
        assert_one_problem(&args("2025-12-25", "13:00", 2), "today is Saturday 21 November 2026");
    }

    #[test]
    fn today_needs_a_later_time() {
        // Saturday dinner 19:00-22:30, now 20:05.
        assert_one_problem(&args("2026-11-21", "20:00", 2), "20:00 today has already passed: it is now 20:05");
        assert_one_problem(&args("2026-11-21", "20:05", 2), "already passed");
        let b = validate(&args("2026-11-21", "20:30", 2), &rules(), NOW).unwrap();
        assert_eq!((b.date.as_str(), b.time.as_str()), ("2026-11-21", "20:30"));
    }

    #[test]
    fn closed_days_and_hours_outside_services() {
        // 2026-11-23 is a Monday.
        let ps = problems(&args("2026-11-23", "20:00", 2));
        assert_eq!(ps.len(), 1, "{ps:#?}");
        assert!(ps[0].starts_with("we are closed on Mondays"), "{ps:#?}");
        assert!(ps[0].contains("Mon closed; Tue 12:00–14:30, 19:00–22:30"), "{ps:#?}");
        // Tuesday between services.
        let ps = problems(&args("2026-11-24", "16:00", 2));
        assert!(
            ps[0].starts_with("we do not take bookings at 16:00 on Tuesday: on Tuesday we are open 12:00–14:30, 19:00–22:30 (last booking 30 minutes before closing)"),
            "{ps:#?}"
        );
        // Sunday has lunch only.
        assert_one_problem(&args("2026-11-22", "20:00", 2), "on Sunday we are open 12:00–14:30");
        // Before opening.
        assert_one_problem(&args("2026-11-24", "11:59", 2), "we do not take bookings at 11:59 on Tuesday");
    }

    #[test]
    fn after_the_last_booking() {
        assert!(validate(&args("2026-11-24", "22:00", 2), &rules(), NOW).is_ok());
        assert_one_problem(&args("2026-11-24", "22:01", 2), "the last booking on Tuesday is at 22:00");
        assert!(validate(&args("2026-11-24", "14:00", 2), &rules(), NOW).is_ok());
        assert_one_problem(
            &args("2026-11-24", "14:15", 2),
            "the last booking for the 12:00–14:30 service on Tuesday is at 14:00",
        );
    }

    #[test]
    fn past_midnight_service_belongs_to_the_previous_evening() {
        // Friday 27 November 19:00-01:00: Saturday 28 at 00:30 is the last booking.
        assert!(validate(&args("2026-11-27", "23:45", 2), &rules(), NOW).is_ok());
        assert!(validate(&args("2026-11-28", "00:30", 2), &rules(), NOW).is_ok());
        assert_one_problem(&args("2026-11-28", "00:45", 2), "the last booking on Friday is at 00:30");
        // Friday 00:30 would be Thursday night: closed then.
        assert_one_problem(&args("2026-11-27", "00:30", 2), "we do not take bookings at 00:30 on Friday");
        // Sunday 00:30 follows a Saturday that closes at 22:30.
        assert_one_problem(&args("2026-11-29", "00:30", 2), "we do not take bookings at 00:30 on Sunday");
    }

    #[test]
    fn party_size_limits() {
        assert_one_problem(&args("2026-11-24", "20:00", 13), "we take up to 12 people per booking");
        assert!(validate(&args("2026-11-24", "20:00", 12), &rules(), NOW).is_ok());
        assert_one_problem(&args("2026-11-24", "20:00", 0), "at least 1 person");
        let mut r = rules();
        r.min_party = 2;
        let ps = validate(&args("2026-11-24", "20:00", 1), &r, NOW).unwrap_err();
        assert_eq!(ps, vec!["we take bookings for at least 2 people".to_owned()]);
    }

    #[test]
    fn bad_formats() {
        for bad in ["24/11/2026", "2026-11-31", "2026-02-29", "26-11-24", "2026-1-24", "tomorrow", "2026-11-2a"] {
            assert_one_problem(&args(bad, "20:00", 2), "is not a valid date (expected YYYY-MM-DD)");
        }
        assert!(validate(&args("2028-02-29", "20:00", 2), &rules(), datetime!(2028-02-01 10:00)).is_ok());
        for bad in ["8pm", "24:00", "20:60", "20.30", "20:5", "-1:30", "120:00", ""] {
            assert_one_problem(&args("2026-11-24", bad, 2), "is not a valid time (expected HH:MM");
        }
        // Arguments that do not parse at all, lack a field, carry an unknown one, or a negative size.
        let unknown = json!({"date": "2026-11-24", "time": "20:00", "party_size": 2, "name": "R", "table": 3});
        let negative = json!({"date": "2026-11-24", "time": "20:00", "party_size": -2, "name": "R"});
        for bad in
            ["not json".to_owned(), r#"{"date":"2026-11-24"}"#.to_owned(), unknown.to_string(), negative.to_string()]
        {
            let ps = problems(&bad);
            assert_eq!(ps.len(), 1, "{ps:#?}");
            assert!(ps[0].starts_with("the booking details could not be read"), "{bad}: {ps:#?}");
        }
    }

    #[test]
    fn too_far_ahead() {
        // Today + 60 days = 20 January 2027 (a Wednesday: open).
        assert!(validate(&args("2027-01-20", "20:00", 2), &rules(), NOW).is_ok());
        assert_one_problem(
            &args("2027-01-21", "20:00", 2),
            "we take bookings at most 60 days ahead, so Thursday 21 January 2027 is too far: the latest date is \
             Wednesday 20 January 2027",
        );
        let mut r = rules();
        r.max_days_ahead = 0;
        assert_eq!(
            validate(&args("2026-11-22", "13:00", 2), &r, NOW).unwrap_err(),
            vec!["we only take bookings for today".to_owned()]
        );
    }

    #[test]
    fn name_phone_and_notes() {
        let with = |name: &str, phone: Option<&str>, notes: Option<&str>| {
            json!({"date": "2026-11-24", "time": "20:00", "party_size": 2, "name": name, "phone": phone,
                   "notes": notes})
            .to_string()
        };
        assert_one_problem(&with("   ", None, None), "the booking needs a name");
        assert_one_problem(&with(&"x".repeat(101), None, None), "the name is too long");
        assert!(validate(&with(&"è".repeat(100), None, None), &rules(), NOW).is_ok());
        for bad in ["12345", "+39 02 abc 1234", "02-1234567", "++390212345", "1".repeat(21).as_str()] {
            assert_one_problem(&with("Rossi", Some(bad), None), "does not look like a phone number");
        }
        for ok in ["+39 02 1234567", "021234567", "123456"] {
            assert!(validate(&with("Rossi", Some(ok), None), &rules(), NOW).is_ok(), "{ok}");
        }
        assert_one_problem(&with("Rossi", None, Some(&"n".repeat(501))), "the notes are too long");
        let b = validate(&with("Rossi", Some(""), Some(" high chair ")), &rules(), NOW).unwrap();
        assert_eq!((b.phone, b.notes.as_deref()), (None, Some("high chair")));
    }

    #[test]
    fn every_problem_is_reported_together() {
        let many = json!({"date": "2026-11-23", "time": "20:00", "party_size": 40, "name": "",
                          "phone": "abc"})
        .to_string();
        let ps = problems(&many);
        assert_eq!(ps.len(), 4, "{ps:#?}");
        for needle in ["closed on Mondays", "up to 12 people", "needs a name", "does not look like a phone"] {
            assert!(ps.iter().any(|p| p.contains(needle)), "no {needle:?} in {ps:#?}");
        }
        // A bad date and a bad time are both reported.
        assert_eq!(problems(&args("2026-13-01", "25:00", 2)).len(), 2);
    }

    #[test]
    fn tool_outputs_are_json_for_the_model() {
        let b = validate(&args("2026-11-24", "20:00", 3), &rules(), NOW).unwrap();
        let ok: Value = serde_json::from_str(&tool_output_ok(&b)).unwrap();
        assert_eq!(ok["booked"], true);
        assert_eq!(
            ok["booking"],
            json!({"date": "2026-11-24", "time": "20:00", "partySize": 3, "name": "Rossi", "phone": null,
                   "notes": null})
        );
        // The stored shape round-trips.
        let back: Booking = serde_json::from_value(ok["booking"].clone()).unwrap();
        assert_eq!(back, b);

        let ps = problems(&args("2026-11-23", "20:00", 2));
        let no: Value = serde_json::from_str(&tool_output_rejected(&ps, &rules())).unwrap();
        assert_eq!(no["booked"], false);
        assert_eq!(no["problems"], json!(ps));
        assert_eq!(no["opening_hours"], rules().hours.describe());
        assert!(no["opening_hours"].as_str().unwrap().starts_with("Mon closed; Tue 12:00–14:30"));
    }

    #[test]
    fn service_too_short_for_the_lead() {
        let mut r = rules();
        r.hours.days[1] = vec![(720, 740)];
        let ps = validate(&args("2026-11-24", "12:10", 2), &r, NOW).unwrap_err();
        assert!(ps[0].starts_with("the 12:00–12:20 service on Tuesday is too short to take bookings"), "{ps:#?}");
    }
}

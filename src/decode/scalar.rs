//! Text to typed values: numbers (exact), dates, times, timestamps with offsets and zone ids.
//!
//! Everything here works on the token text alone; column builders call in with what the JSON
//! reader found. Failures are `Bad`, which the caller turns into a record error naming the column.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone};
use chrono_tz::Tz;

use super::fail::RecordErrorKind;

/// A value that does not fit: its kind and, when useful, why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Bad {
    pub kind: RecordErrorKind,
    pub detail: Option<&'static str>,
}

pub(crate) const WRONG: Bad = Bad {
    kind: RecordErrorKind::WrongType,
    detail: None,
};

pub(crate) const fn wrong(detail: &'static str) -> Bad {
    Bad {
        kind: RecordErrorKind::WrongType,
        detail: Some(detail),
    }
}

pub(crate) const fn out_of_range(detail: &'static str) -> Bad {
    Bad {
        kind: RecordErrorKind::OutOfRange,
        detail: Some(detail),
    }
}

/// The unit of epoch numbers given for timestamp columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EpochUnit {
    Seconds,
    /// Milliseconds since 1970-01-01T00:00:00Z, as Kafka and Java use them (the default).
    #[default]
    Millis,
    Micros,
    Nanos,
}

impl EpochUnit {
    /// Decimal digits of the unit below one second.
    fn digits(self) -> i32 {
        match self {
            Self::Seconds => 0,
            Self::Millis => 3,
            Self::Micros => 6,
            Self::Nanos => 9,
        }
    }
}

impl std::str::FromStr for EpochUnit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "s" | "seconds" => Ok(Self::Seconds),
            "ms" | "millis" | "milliseconds" => Ok(Self::Millis),
            "us" | "micros" | "microseconds" => Ok(Self::Micros),
            "ns" | "nanos" | "nanoseconds" => Ok(Self::Nanos),
            _ => Err(format!(
                "unknown epoch unit {s:?}; use seconds, millis, micros or nanos"
            )),
        }
    }
}

// ---- exact numbers ------------------------------------------------------------------------------

/// A decimal number read exactly: `±mant × 10^exp`, with `mant` free of trailing zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exact {
    pub neg: bool,
    pub mant: u128,
    pub exp: i64,
}

const POW10: [u128; 39] = {
    let mut t = [1u128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

fn pow10(k: i64) -> Option<u128> {
    usize::try_from(k).ok().and_then(|k| POW10.get(k).copied())
}

/// Reads a number (JSON syntax, plus a leading `+`, as found in strings) exactly. `None` when the
/// text is not a number; `Err` when it has more significant digits than any column can hold.
pub(crate) fn exact(text: &str) -> Option<Result<Exact, Bad>> {
    let b = text.as_bytes();
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut mant: u128 = 0;
    let mut pending: i64 = 0; // zeros seen after the last non-zero digit
    let mut exp: i64 = 0;
    let mut digits = 0;
    let mut overflow = false;
    let mut push = |d: u8, mant: &mut u128, pending: &mut i64| {
        if d == 0 {
            if *mant != 0 {
                *pending += 1;
            }
        } else {
            match pow10(*pending + 1).and_then(|p| mant.checked_mul(p)) {
                Some(m) => *mant = m + d as u128,
                None => overflow = true,
            }
            *pending = 0;
        }
    };
    while let Some(&c) = b.get(i) {
        if !c.is_ascii_digit() {
            break;
        }
        push(c - b'0', &mut mant, &mut pending);
        digits += 1;
        i += 1;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            push(c - b'0', &mut mant, &mut pending);
            exp -= 1;
            digits += 1;
            i += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let eneg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        let mut e: i64 = 0;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            e = (e * 10 + (c - b'0') as i64).min(1_000_000);
            i += 1;
        }
        if i == start {
            return None;
        }
        exp += if eneg { -e } else { e };
    }
    if i != b.len() {
        return None;
    }
    if overflow {
        return Some(Err(out_of_range("too many digits")));
    }
    if mant == 0 {
        return Some(Ok(Exact {
            neg: false,
            mant: 0,
            exp: 0,
        }));
    }
    Some(Ok(Exact {
        neg,
        mant,
        exp: exp + pending,
    }))
}

impl Exact {
    /// The value as an integer, if it is one.
    fn integer(self) -> Result<i128, Bad> {
        if self.mant == 0 {
            return Ok(0);
        }
        if self.exp < 0 {
            return Err(wrong("not an integer"));
        }
        let v = pow10(self.exp)
            .and_then(|p| self.mant.checked_mul(p))
            .filter(|&v| v <= i128::MAX as u128)
            .ok_or(out_of_range("out of range"))? as i128;
        Ok(if self.neg { -v } else { v })
    }

    /// The unscaled value at `scale`, with at most `precision` digits.
    pub fn decimal(self, precision: u8, scale: i8) -> Result<i128, Bad> {
        if self.mant == 0 {
            return Ok(0);
        }
        let e = self.exp + scale as i64;
        if e < 0 {
            return Err(out_of_range(
                "more digits after the decimal point than the scale allows",
            ));
        }
        let v = pow10(e)
            .and_then(|p| self.mant.checked_mul(p))
            .filter(|&v| v < POW10[precision as usize])
            .ok_or(out_of_range("more digits than the precision allows"))? as i128;
        Ok(if self.neg { -v } else { v })
    }

    /// The value times 10^shift, rounded towards negative infinity.
    fn scaled_floor(self, shift: i64) -> Result<i128, Bad> {
        if self.mant == 0 {
            return Ok(0);
        }
        let e = self.exp + shift;
        let range = out_of_range("out of range");
        if e >= 0 {
            let v = pow10(e)
                .and_then(|p| self.mant.checked_mul(p))
                .ok_or(range)?;
            let v = i128::try_from(v).map_err(|_| out_of_range("out of range"))?;
            return Ok(if self.neg { -v } else { v });
        }
        let Some(p) = pow10(-e) else {
            return Ok(if self.neg { -1 } else { 0 });
        };
        let (q, r) = ((self.mant / p) as i128, self.mant % p);
        Ok(if self.neg { -q - i128::from(r != 0) } else { q })
    }
}

/// A 64-bit integer from number text (or a numeric string).
#[inline]
pub(crate) fn long(text: &str) -> Result<i64, Bad> {
    let b = text.as_bytes();
    // Fast path: up to 18 plain digits cannot overflow.
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
        let v = digits
            .iter()
            .fold(0i64, |acc, &c| acc * 10 + (c - b'0') as i64);
        return Ok(if neg { -v } else { v });
    }
    let v = exact(text).ok_or(WRONG)??.integer()?;
    i64::try_from(v).map_err(|_| out_of_range("out of range"))
}

pub(crate) fn int(text: &str) -> Result<i32, Bad> {
    i32::try_from(long(text)?).map_err(|_| out_of_range("out of range"))
}

fn float_text_ok(text: &str) -> bool {
    let b = text.as_bytes();
    matches!(b.first(), Some(c) if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.'))
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
}

fn special_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" | "+Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// A double from a JSON number (`is_string` false) or a string.
pub(crate) fn double(text: &str, is_string: bool) -> Result<f64, Bad> {
    if is_string {
        if let Some(v) = special_float(text) {
            return Ok(v);
        }
        if !float_text_ok(text) {
            return Err(WRONG);
        }
    }
    let v: f64 = text.parse().map_err(|_| WRONG)?;
    if v.is_infinite() {
        return Err(out_of_range("out of range"));
    }
    Ok(v)
}

pub(crate) fn float(text: &str, is_string: bool) -> Result<f32, Bad> {
    if is_string {
        if let Some(v) = special_float(text) {
            return Ok(v as f32);
        }
        if !float_text_ok(text) {
            return Err(WRONG);
        }
    }
    let v: f32 = text.parse().map_err(|_| WRONG)?;
    if v.is_infinite() {
        return Err(out_of_range("out of range"));
    }
    Ok(v)
}

pub(crate) fn decimal(text: &str, precision: u8, scale: i8) -> Result<i128, Bad> {
    exact(text).ok_or(WRONG)??.decimal(precision, scale)
}

pub(crate) fn boolean(text: &str) -> Result<bool, Bad> {
    if text.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if text.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(WRONG)
    }
}

// ---- dates and times ----------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits_at(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    s.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u32)
    })
}

/// `YYYY-MM-DD` at the start of `b`: days since the epoch.
fn date_prefix(b: &[u8]) -> Result<i64, Bad> {
    let shape = wrong("expected YYYY-MM-DD");
    let y = digits_at(b, 0, 4).ok_or(shape)? as i64;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return Err(wrong("expected YYYY-MM-DD"));
    }
    let m = digits_at(b, 5, 2).ok_or(wrong("expected YYYY-MM-DD"))?;
    let d = digits_at(b, 8, 2).ok_or(wrong("expected YYYY-MM-DD"))?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return Err(wrong("no such day"));
    }
    Ok(days_from_civil(y, m, d))
}

pub(crate) fn date(text: &str) -> Result<i32, Bad> {
    if text.len() != 10 {
        return Err(wrong("expected YYYY-MM-DD"));
    }
    Ok(date_prefix(text.as_bytes())? as i32)
}

/// `HH:MM[:SS[.fffffffff]]` at `b[*at..]`: seconds of the day and nanoseconds; `at` moves past it.
fn time_at(b: &[u8], at: &mut usize) -> Result<(i64, u32), Bad> {
    let shape = || wrong("expected HH:MM:SS[.ffffff]");
    let i = *at;
    let h = digits_at(b, i, 2).ok_or_else(shape)?;
    if b.get(i + 2) != Some(&b':') {
        return Err(shape());
    }
    let m = digits_at(b, i + 3, 2).ok_or_else(shape)?;
    let mut j = i + 5;
    let mut s = 0;
    let mut nanos = 0;
    if b.get(j) == Some(&b':') {
        s = digits_at(b, j + 1, 2).ok_or_else(shape)?;
        j += 3;
        if b.get(j) == Some(&b'.') {
            j += 1;
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() {
                if j - start < 9 {
                    nanos = nanos * 10 + (b[j] - b'0') as u32;
                }
                j += 1;
            }
            let n = j - start;
            if n == 0 {
                return Err(shape());
            }
            if n > 9 {
                return Err(wrong("more than 9 fractional digits"));
            }
            nanos *= 10u32.pow(9 - n as u32);
        }
    }
    if h > 23 || m > 59 || s > 59 {
        return Err(wrong("no such time of day"));
    }
    *at = j;
    Ok(((h * 3600 + m * 60 + s) as i64, nanos))
}

/// Microseconds since midnight.
pub(crate) fn time(text: &str) -> Result<i64, Bad> {
    let b = text.as_bytes();
    let mut at = 0;
    let (secs, nanos) = time_at(b, &mut at)?;
    if at != b.len() {
        return Err(wrong("expected HH:MM:SS[.ffffff]"));
    }
    Ok(secs * 1_000_000 + (nanos / 1000) as i64)
}

/// A parsed ISO-8601 date-time: local fields, the offset when given, and the bracketed zone id.
#[derive(Debug)]
pub(crate) struct DateTime<'t> {
    /// Seconds since the epoch of the local date-time read as if it were UTC.
    pub local_secs: i64,
    pub nanos: u32,
    /// Seconds east of UTC.
    pub offset: Option<i32>,
    pub zone: Option<&'t str>,
}

/// `±HH:MM`, `±HHMM`, `±HH` or `Z` at `b[*at..]`.
fn offset_at(b: &[u8], at: &mut usize) -> Result<Option<i32>, Bad> {
    let i = *at;
    let sign = match b.get(i) {
        Some(b'Z' | b'z') => {
            *at += 1;
            return Ok(Some(0));
        }
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Ok(None),
    };
    let shape = || wrong("invalid UTC offset");
    let h = digits_at(b, i + 1, 2).ok_or_else(shape)?;
    let (m, end) = match b.get(i + 3) {
        Some(b':') => (digits_at(b, i + 4, 2).ok_or_else(shape)?, i + 6),
        Some(c) if c.is_ascii_digit() => (digits_at(b, i + 3, 2).ok_or_else(shape)?, i + 5),
        _ => (0, i + 3),
    };
    if h > 18 || m > 59 {
        return Err(shape());
    }
    *at = end;
    Ok(Some(sign * (h * 3600 + m * 60) as i32))
}

pub(crate) fn date_time(text: &str) -> Result<DateTime<'_>, Bad> {
    let b = text.as_bytes();
    if b.len() < 16 {
        return Err(wrong("expected an ISO-8601 timestamp"));
    }
    let days = date_prefix(b)?;
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(wrong("expected an ISO-8601 timestamp"));
    }
    let mut at = 11;
    let (secs, nanos) = time_at(b, &mut at)?;
    let offset = offset_at(b, &mut at)?;
    let zone = match b.get(at) {
        None => None,
        Some(b'[') if b.last() == Some(&b']') && b.len() > at + 2 => {
            Some(&text[at + 1..b.len() - 1])
        }
        Some(_) => return Err(wrong("expected an ISO-8601 timestamp")),
    };
    Ok(DateTime {
        local_secs: days * 86_400 + secs,
        nanos,
        offset,
        zone,
    })
}

/// A zone id, cached: records usually carry the same one.
#[derive(Default)]
pub(crate) struct ZoneCache {
    last: Option<(String, ZoneRule)>,
}

#[derive(Clone, Copy)]
pub(crate) enum ZoneRule {
    Fixed(i32),
    Region(Tz),
}

impl ZoneCache {
    pub fn get(&mut self, id: &str) -> Result<ZoneRule, Bad> {
        if let Some((name, rule)) = &self.last
            && name == id
        {
            return Ok(*rule);
        }
        let rule = match id.parse::<Tz>() {
            Ok(tz) => ZoneRule::Region(tz),
            Err(_) => {
                let rest = ["UTC", "GMT", "UT"]
                    .iter()
                    .find_map(|p| id.strip_prefix(p))
                    .unwrap_or(id);
                let mut at = 0;
                match offset_at(rest.as_bytes(), &mut at) {
                    Ok(Some(off)) if at == rest.len() => ZoneRule::Fixed(off),
                    _ if rest.is_empty() => ZoneRule::Fixed(0),
                    _ => return Err(wrong("unknown time zone id")),
                }
            }
        };
        self.last = Some((id.to_owned(), rule));
        Ok(rule)
    }
}

impl ZoneRule {
    /// The offset (seconds east of UTC) of a local time in this zone. Ambiguous local times (the
    /// hour repeated when clocks go back) take the earlier instant; local times skipped when clocks
    /// go forward are moved later by the gap: both as Java's `ZonedDateTime` does.
    pub fn offset_of_local(self, local_secs: i64) -> Result<i32, Bad> {
        let tz = match self {
            ZoneRule::Fixed(off) => return Ok(off),
            ZoneRule::Region(Tz::UTC) => return Ok(0),
            ZoneRule::Region(tz) => tz,
        };
        let range = out_of_range("out of range");
        let ndt = naive(local_secs).ok_or(range)?;
        Ok(match tz.offset_from_local_datetime(&ndt) {
            chrono::LocalResult::Single(o) => o.fix().local_minus_utc(),
            chrono::LocalResult::Ambiguous(a, b) => {
                a.fix().local_minus_utc().max(b.fix().local_minus_utc())
            }
            chrono::LocalResult::None => {
                let before = ndt - chrono::Duration::days(1);
                tz.offset_from_utc_datetime(&before).fix().local_minus_utc()
            }
        })
    }
}

fn naive(local_secs: i64) -> Option<NaiveDateTime> {
    let days = local_secs.div_euclid(86_400);
    let secs = local_secs.rem_euclid(86_400) as u32;
    let date = NaiveDate::from_num_days_from_ce_opt(i32::try_from(days + 719_163).ok()?)?;
    Some(date.and_time(NaiveTime::from_num_seconds_from_midnight_opt(secs, 0)?))
}

/// Where a timestamp value comes from and where it goes.
#[derive(Clone, Copy)]
pub(crate) struct TsRules {
    /// The column has a zone (timestamptz): values are instants stored as UTC.
    pub tz: bool,
    /// The column stores nanoseconds (else microseconds).
    pub nanos: bool,
    pub epoch_unit: EpochUnit,
    /// For timestamptz values without an offset.
    pub default_zone: ZoneRule,
}

/// A timestamp column value from an ISO-8601 string.
pub(crate) fn timestamp_text(
    text: &str,
    rules: TsRules,
    zones: &mut ZoneCache,
) -> Result<i64, Bad> {
    let dt = date_time(text)?;
    let zone = dt.zone.map(|id| zones.get(id)).transpose()?;
    let offset = match (dt.offset, zone) {
        (Some(off), _) => off,
        (None, Some(rule)) => rule.offset_of_local(dt.local_secs)?,
        // A local timestamp column keeps the wall-clock time as written.
        (None, None) if !rules.tz => 0,
        (None, None) => rules.default_zone.offset_of_local(dt.local_secs)?,
    };
    let secs = dt.local_secs - offset as i64;
    let range = || out_of_range("out of range");
    if rules.nanos {
        secs.checked_mul(1_000_000_000)
            .and_then(|v| v.checked_add(dt.nanos as i64))
            .ok_or_else(range)
    } else {
        Ok(secs * 1_000_000 + (dt.nanos / 1000) as i64)
    }
}

/// A timestamp column value from an epoch number (in the configured unit).
pub(crate) fn timestamp_epoch(text: &str, rules: TsRules) -> Result<i64, Bad> {
    let target = if rules.nanos { 9 } else { 6 };
    let v = exact(text)
        .ok_or(WRONG)??
        .scaled_floor((target - rules.epoch_unit.digits()) as i64)?;
    i64::try_from(v).map_err(|_| out_of_range("out of range"))
}

/// Whether a string looks like an epoch number rather than a date-time.
pub(crate) fn is_epoch_text(text: &str) -> bool {
    let b = text.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
        && (b.len() < 5 || b[4] != b'-')
}

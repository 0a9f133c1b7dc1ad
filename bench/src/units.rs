//! Durations as people type them on a command line (`10s`, `500ms`, `250us`, `1.5m`).

use std::time::Duration;

/// Parses a non-negative decimal number followed by a unit: `us` (or `µs`), `ms`, `s`,
/// `m`. A bare number is refused: a duration without a unit is ambiguous.
///
/// # Errors
/// A message naming the input when the number or the unit is not one of these.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit (us, ms, s or m)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let seconds_per_unit = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        other => {
            return Err(format!(
                "`{other}` in `{text}` is not a unit (us, ms, s or m)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("`{text}` is out of range"))
}

/// A duration in milliseconds with a precision that suits its size (`0.084`, `12.3`, `1520`).
#[must_use]
pub fn format_ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 100.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_from_microseconds_to_minutes_are_understood() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }

    #[test]
    fn a_number_without_unit_or_with_an_unknown_one_is_refused() {
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn milliseconds_print_with_precision_that_suits_their_size() {
        assert_eq!(format_ms(Duration::from_micros(84)), "0.084");
        assert_eq!(format_ms(Duration::from_micros(12_345)), "12.35");
        assert_eq!(format_ms(Duration::from_millis(1520)), "1520");
    }
}

//! RFC 3339 timestamps as the image formats write them.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds and nanoseconds since the epoch, from an RFC 3339 string.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((t.unix_timestamp(), t.nanosecond()))
}

/// An RFC 3339 string in UTC for seconds and nanoseconds since the epoch.
pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .map(|t| t.replace_nanosecond(nanos).unwrap_or(t))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// Now as RFC 3339 with nanoseconds, as docker stamps the images it creates: two images
/// made within one second still differ.
pub fn now_rfc3339() -> String {
    let t = OffsetDateTime::now_utc();
    format_rfc3339(t.unix_timestamp(), t.nanosecond())
}

/// Seconds since the epoch now.
pub fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:10Z"), Some((10, 0)));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.5+01:00"),
            Some((1709204400, 500_000_000))
        );
        let s = format_rfc3339(1709204400, 0);
        assert_eq!(s, "2024-02-29T11:00:00Z");
        assert_eq!(parse_rfc3339(&s), Some((1709204400, 0)));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}

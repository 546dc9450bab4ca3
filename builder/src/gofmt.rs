//! Go's `fmt` forms that docker's classic builder writes into an image's history
//! (`CreatedBy`): `%q` of a string slice (`["sh" "-c"]`), `%v` of one (`[/data]`), `%+v` of a
//! health check (`&{Test:[CMD-SHELL true] Interval:5s ...}`), and `time.Duration`'s text.

use strata_oci::config::Healthcheck;

/// Go's `strconv.Quote`: double quotes, Go's escapes for what is not printable.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `%q` of a `[]string`: `["a" "b"]`.
pub fn quoted_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| quote(s)).collect();
    format!("[{}]", items.join(" "))
}

/// `%v` of a `[]string`: `[a b]`.
pub fn plain_list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// `time.Duration(nanos).String()`: `0s`, `1.5s`, `1m30s`, `2h0m0s`, `500ms`, `10µs`.
pub fn duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    let frac = |v: u64, digits: u32| -> String {
        let unit = 10u64.pow(digits);
        let (whole, rest) = (v / unit, v % unit);
        if rest == 0 {
            whole.to_string()
        } else {
            let f = format!("{rest:0w$}", w = digits as usize);
            format!("{whole}.{}", f.trim_end_matches('0'))
        }
    };
    let text = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", frac(u, 3))
    } else if u < 1_000_000_000 {
        format!("{}ms", frac(u, 6))
    } else {
        let secs = frac(u % 60_000_000_000, 9);
        let mins = u / 60_000_000_000;
        match (mins / 60, mins % 60) {
            (0, 0) => format!("{secs}s"),
            (0, m) => format!("{m}m{secs}s"),
            (h, m) => format!("{h}h{m}m{secs}s"),
        }
    };
    format!("{sign}{text}")
}

/// `%+v` of docker's `*container.HealthConfig`.
pub fn healthcheck(h: &Healthcheck) -> String {
    let d = |v: Option<i64>| duration(v.unwrap_or(0));
    format!(
        "&{{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        plain_list(&h.test),
        d(h.interval),
        d(h.timeout),
        d(h.start_period),
        d(h.start_interval),
        h.retries.unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms_as_fmt_prints_them() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(quoted_list(&v(&["sh", "-c"])), r#"["sh" "-c"]"#);
        assert_eq!(quoted_list(&v(&[])), "[]");
        assert_eq!(quoted_list(&v(&["a\"b\\\n\té"])), r#"["a\"b\\\n\té"]"#);
        assert_eq!(plain_list(&v(&["/data", "/x"])), "[/data /x]");
        for (n, s) in [
            (0, "0s"),
            (5_000_000_000, "5s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (7_200_000_000_000, "2h0m0s"),
            (500_000_000, "500ms"),
            (10_000, "10µs"),
            (42, "42ns"),
            (-3_000_000_000, "-3s"),
        ] {
            assert_eq!(duration(n), s, "{n}");
        }
        let h = Healthcheck {
            test: v(&["CMD-SHELL", "true"]),
            interval: Some(5_000_000_000),
            timeout: Some(2_000_000_000),
            ..Default::default()
        };
        assert_eq!(
            healthcheck(&h),
            "&{Test:[CMD-SHELL true] Interval:5s Timeout:2s StartPeriod:0s StartInterval:0s Retries:0}"
        );
    }
}

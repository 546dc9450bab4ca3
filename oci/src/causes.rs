//! An error and its chain of causes on one line, as strata reports errors.

/// `e` and its causes as `a: b: c`, a cause left out when the text before it already says it
/// (errors that format their source into their own message).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_follow_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(with_causes(&e), "outer: inner");
    }
}

//! Dockerfile words: splitting an argument into words the way docker's parser does, and
//! expanding one word (quotes, escapes, `$VAR`, `${VAR:-default}`, `${VAR:+alt}`, ...) the way
//! its shell lexer does.

/// Errors expanding a word.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WordError {
    /// A quote is not closed.
    #[error("unterminated quote in {0:?}")]
    Unterminated(String),
    /// `${` without its `}` or with a bad name.
    #[error("bad substitution in {0:?}")]
    BadSubstitution(String),
    /// `${VAR?message}` with VAR unset.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message given.
        message: String,
    },
}

/// Splits `s` on whitespace that is neither quoted nor escaped; quotes and escapes stay in
/// the words (they are removed when each word is expanded).
pub fn split_raw(s: &str, escape: char) -> Result<Vec<String>, WordError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == escape && q == '"' {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            None => {
                cur.push(c);
                if c == escape {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                } else if c == '"' || c == '\'' {
                    quote = Some(c);
                }
            }
        }
    }
    if quote.is_some() {
        return Err(WordError::Unterminated(s.to_string()));
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

/// Expands one word: removes quotes and escapes, substitutes variables from `lookup`.
/// Single quotes keep everything literal; inside double quotes the escape character only
/// escapes `"`, `$` and itself.
pub fn expand(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, WordError> {
    let chars: Vec<char> = word.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&x| x == '\'')
                .ok_or_else(|| WordError::Unterminated(word.to_string()))?;
            out.extend(&chars[i + 1..i + 1 + end]);
            i += end + 2;
        } else if c == '"' {
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(WordError::Unterminated(word.to_string()));
                };
                if d == '"' {
                    i += 1;
                    break;
                }
                if d == escape {
                    match chars.get(i + 1) {
                        Some(&n) if n == '"' || n == '$' || n == escape => {
                            out.push(n);
                            i += 2;
                        }
                        _ => {
                            out.push(d);
                            i += 1;
                        }
                    }
                } else if d == '$' {
                    i = variable(&chars, i, lookup, escape, word, &mut out)?;
                } else {
                    out.push(d);
                    i += 1;
                }
            }
        } else if c == escape {
            if let Some(&n) = chars.get(i + 1) {
                out.push(n);
            }
            i += 2;
        } else if c == '$' {
            i = variable(&chars, i, lookup, escape, word, &mut out)?;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Ok(out)
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the variable starting at `chars[at] == '$'`; returns the index after it.
fn variable(
    chars: &[char],
    at: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
    word: &str,
    out: &mut String,
) -> Result<usize, WordError> {
    let bad = || WordError::BadSubstitution(word.to_string());
    let mut i = at + 1;
    if chars.get(i) != Some(&'{') {
        let start = i;
        while chars.get(i).is_some_and(|&c| is_name(c)) {
            i += 1;
        }
        if i == start {
            out.push('$');
            return Ok(i);
        }
        let name: String = chars[start..i].iter().collect();
        out.push_str(&lookup(&name).unwrap_or_default());
        return Ok(i);
    }
    i += 1;
    let start = i;
    while chars.get(i).is_some_and(|&c| is_name(c)) {
        i += 1;
    }
    if i == start {
        return Err(bad());
    }
    let name: String = chars[start..i].iter().collect();
    // The operator, then the nested word up to the matching brace.
    let colon = chars.get(i) == Some(&':');
    if colon {
        i += 1;
    }
    let op = match chars.get(i) {
        Some('}') if !colon => {
            out.push_str(&lookup(&name).unwrap_or_default());
            return Ok(i + 1);
        }
        Some(&c @ ('-' | '+' | '?')) => c,
        _ => return Err(bad()),
    };
    i += 1;
    let arg_start = i;
    i = matching_brace(chars, i, escape).ok_or_else(bad)?;
    let arg: String = chars[arg_start..i].iter().collect();
    apply_operator(&name, op, colon, &arg, lookup, escape, out)?;
    Ok(i + 1)
}

/// The index of the `}` closing a `${...}` whose word starts at `i` (escapes skipped, nested
/// braces counted), or `None` if it is never closed.
fn matching_brace(chars: &[char], mut i: usize, escape: char) -> Option<usize> {
    let mut depth = 1;
    while let Some(&c) = chars.get(i) {
        if c == escape {
            i += 2;
            continue;
        }
        if c == '{' {
            depth += 1;
        } else if c == '}' {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

/// `${name-word}`, `${name+word}`, `${name?word}` and their `:` forms (with `:` an empty value
/// counts as unset), as the shell and BuildKit's shell lexer define them.
fn apply_operator(
    name: &str,
    op: char,
    colon: bool,
    arg: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
    out: &mut String,
) -> Result<(), WordError> {
    let value = lookup(name);
    let set = match &value {
        Some(v) => !colon || !v.is_empty(),
        None => false,
    };
    match op {
        '-' if set => out.push_str(&value.unwrap_or_default()),
        '-' => out.push_str(&expand(arg, lookup, escape)?),
        '+' if set => out.push_str(&expand(arg, lookup, escape)?),
        '+' => {}
        _ if set => out.push_str(&value.unwrap_or_default()),
        _ => {
            return Err(WordError::Required {
                name: name.to_string(),
                message: if arg.is_empty() {
                    "is not allowed to be unset".into()
                } else {
                    expand(arg, lookup, escape)?
                },
            });
        }
    }
    Ok(())
}

/// Parses the arguments of ENV, LABEL or ARG into raw (unexpanded) `(key, value)` pairs.
/// `KEY=VALUE ...` pairs, or (ENV and LABEL's legacy form, when the first word has no `=`)
/// `KEY the rest of the line`. A word without `=` gives `(key, None)` (ARG's form).
pub fn key_values(
    s: &str,
    escape: char,
    legacy: bool,
) -> Result<Vec<(String, Option<String>)>, WordError> {
    let words = split_raw(s, escape)?;
    if legacy
        && let Some(first) = words.first()
        && !first.contains('=')
    {
        let rest = s.trim_start()[first.len()..].trim();
        return Ok(vec![(first.clone(), Some(rest.to_string()))]);
    }
    Ok(words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w, None),
        })
        .collect())
}

/// A shell-form command as the shell gets it: line continuations (the escape character at
/// the end of a line) joined and comment lines inside them dropped.
pub fn join_continuations(raw: &str, escape: char) -> String {
    let mut out = String::new();
    let mut lines = raw.split('\n').peekable();
    let mut first = true;
    while let Some(line) = lines.next() {
        if !first && line.trim_start().starts_with('#') {
            continue;
        }
        first = false;
        let trimmed = line.trim_end();
        if trimmed.ends_with(escape) && lines.peek().is_some() {
            out.push_str(&trimmed[..trimmed.len() - escape.len_utf8()]);
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("a".into()),
            "EMPTY" => Some(String::new()),
            "SP" => Some("x y".into()),
            _ => None,
        }
    }

    #[test]
    fn expansion_table() {
        let cases: &[(&str, &str)] = &[
            ("$A", "a"),
            ("${A}", "a"),
            ("x${A}y", "xay"),
            ("$A/$A", "a/a"),
            ("$UNSET", ""),
            ("${UNSET:-d}", "d"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${A:-d}", "a"),
            ("${A:+alt}", "alt"),
            ("${UNSET:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET:-${A}b}", "ab"),
            ("'$A'", "$A"),
            ("\"$A b\"", "a b"),
            ("\\$A", "$A"),
            ("\"\\$A\"", "$A"),
            ("\"a\\b\"", "a\\b"),
            ("a\\ b", "a b"),
            ("$", "$"),
            ("$1", ""),
            ("${SP}", "x y"),
            ("cost$", "cost$"),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand(input, &env, '\\').as_deref(),
                Ok(*want),
                "input {input:?}"
            );
        }
        assert_eq!(expand("`$A", &env, '`').as_deref(), Ok("$A"));
    }

    #[test]
    fn expansion_errors() {
        assert!(matches!(
            expand("${A", &env, '\\'),
            Err(WordError::BadSubstitution(_))
        ));
        assert!(matches!(
            expand("${}", &env, '\\'),
            Err(WordError::BadSubstitution(_))
        ));
        assert!(matches!(
            expand("\"open", &env, '\\'),
            Err(WordError::Unterminated(_))
        ));
        assert_eq!(
            expand("${UNSET:?must be set}", &env, '\\'),
            Err(WordError::Required {
                name: "UNSET".into(),
                message: "must be set".into()
            })
        );
    }

    #[test]
    fn key_value_forms() {
        let kv = |s: &str, legacy| key_values(s, '\\', legacy).unwrap();
        assert_eq!(
            kv("A=1 B=\"x y\" C=a\\ b", true),
            vec![
                ("A".into(), Some("1".into())),
                ("B".into(), Some("\"x y\"".into())),
                ("C".into(), Some("a\\ b".into())),
            ]
        );
        assert_eq!(
            kv("PATH /usr/bin:/bin  with spaces", true),
            vec![("PATH".into(), Some("/usr/bin:/bin  with spaces".into()))]
        );
        assert_eq!(
            kv("V1 V2=d", false),
            vec![("V1".into(), None), ("V2".into(), Some("d".into()))]
        );
        assert!(key_values("A=\"open", '\\', true).is_err());
    }

    #[test]
    fn continuations_join_and_drop_comment_lines() {
        assert_eq!(
            join_continuations("echo a \\\n  # note\n  && echo b", '\\'),
            "echo a   && echo b"
        );
        assert_eq!(join_continuations("echo `\n x", '`'), "echo  x");
        assert_eq!(
            join_continuations("echo #not a comment", '\\'),
            "echo #not a comment"
        );
    }
}

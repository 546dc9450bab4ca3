//! What `gtmpl` does differently from Go's text/template, made up for at the template's edges:
//! values print as Go's `fmt` prints them (`[a b]`, `map[k:v]`, where gtmpl prints Rust debug
//! text), an unclosed action is reported as Go reports it, and execution errors read as the
//! docker CLI's ("template parsing error: template: :1:2: executing "" at <.Nope>: …").
//!
//! gtmpl keeps its parse tree private, so printing is fixed in the template text: every action
//! that prints (not `if`, `range`, `end`, a declaration, …) gets ` | __go` appended, a function
//! that renders its argument the Go way (strings pass through unchanged).

use gtmpl::{FuncError, Value};

/// The name of the printing function appended to printing actions.
pub const GO_PRINT: &str = "__go";

/// How a missing field reads in an execution error: docker's `ps`/`images` templates run on
/// typed contexts (`can't evaluate field X in type T`), `inspect` on decoded JSON maps.
#[derive(Clone, Copy, Debug)]
pub enum Missing {
    /// A struct of this Go type (`*formatter.imageContext`).
    Field(&'static str),
    /// A map: `map has no entry for key "X"`.
    MapKey,
}

/// An action `{{ … }}`: where it starts and ends (byte offsets, the braces included).
struct Action {
    start: usize,
    end: usize,
}

/// The actions of a template, or Go's error for one left open.
fn actions(text: &str) -> Result<Vec<Action>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find("{{") {
        let start = i + off;
        let mut j = start + 2;
        let mut quote: Option<u8> = None;
        let mut end = None;
        while j < b.len() {
            match (quote, b[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(b'"' | b'\''), b'\\') => j += 1,
                (Some(_), _) => {}
                (None, c @ (b'"' | b'`' | b'\'')) => quote = Some(c),
                (None, b'}') if b.get(j + 1) == Some(&b'}') => {
                    end = Some(j + 2);
                    break;
                }
                (None, _) => {}
            }
            j += 1;
        }
        let Some(end) = end else {
            let line = text[..start].matches('\n').count() + 1;
            return Err(format!("template: :{line}: unclosed action"));
        };
        out.push(Action { start, end });
        i = end;
    }
    Ok(out)
}

/// Whether an action's body (between the braces and trim markers) prints its value.
fn prints(body: &str) -> bool {
    let body = body.trim();
    let first = body.split_whitespace().next().unwrap_or("");
    let keywords = [
        "if", "else", "end", "range", "with", "define", "template", "block", "break", "continue",
    ];
    !(body.is_empty()
        || body.starts_with("/*")
        || keywords.contains(&first)
        || body.contains(":=")
        || (first.starts_with('$') && body[first.len()..].trim_start().starts_with('=')))
}

/// The name of the function docker's `.Label "KEY"` method becomes.
pub const LABEL: &str = "__label";

/// gtmpl cannot call a method with arguments: docker's `.Label "KEY"` (of `ps` and `images`)
/// becomes a call of [`LABEL`] on the item.
fn methods(body: &str) -> String {
    static LABEL_CALL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(^|[\s(])\.Label\s+("(?:[^"\\]|\\.)*"|`[^`]*`)"#)
            .expect("a valid pattern")
    });
    LABEL_CALL
        .replace_all(body, format!("${{1}}({LABEL} . ${{2}})").as_str())
        .into_owned()
}

/// [`LABEL`]: the value of a label in the item's `Labels` ("k=v,k2=v2"), as docker's
/// `ContainerContext.Label`; "" when it has none.
pub fn label(args: &[Value]) -> Result<Value, FuncError> {
    let (Some(item), Some(Value::String(key))) = (args.first(), args.get(1)) else {
        return Err(FuncError::ExactlyXArgs("Label".into(), 1));
    };
    let labels = match item {
        Value::Object(m) | Value::Map(m) => match m.get("Labels") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    let value = labels
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    Ok(Value::String(value))
}

/// The template text gtmpl parses: printing actions piped through [`GO_PRINT`]; an unclosed
/// action is an error worded as Go's.
pub fn prepare(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut last = 0;
    for a in actions(text)? {
        let inner = &text[a.start + 2..a.end - 2];
        let right_trim = inner.ends_with(" -") || inner.ends_with("\t-") || inner.ends_with("\n-");
        let body_end = a.end - 2 - if right_trim { 2 } else { 0 };
        let body_start = a.start + 2 + usize::from(inner.starts_with("- ")) * 2;
        out.push_str(&text[last..body_start.min(body_end)]);
        out.push_str(&methods(
            &text[body_start.min(body_end)..body_end.max(body_start)],
        ));
        if body_start <= body_end && prints(&text[body_start..body_end]) {
            out.push_str(" | ");
            out.push_str(GO_PRINT);
        }
        out.push_str(&text[body_end.max(body_start)..a.end]);
        last = a.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// A value as Go's `fmt.Print` shows it.
pub fn go_text(v: &Value) -> String {
    match v {
        Value::NoValue => "<no value>".into(),
        Value::Nil => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Function(_) => "<func>".into(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(go_text).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(m) | Value::Map(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", go_text(&m[k])))
                .collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

/// [`GO_PRINT`]: its (last) argument as Go prints it.
pub fn go_print(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(args.last().map(go_text).unwrap_or_default()))
}

/// An execution error as docker's CLI words it; `template` is the text the user gave.
pub fn exec_error(template: &str, err: &gtmpl::error::ExecError, missing: Missing) -> String {
    let text = err.to_string();
    let field = match err {
        gtmpl::error::ExecError::NoFiledFor(f, _) => Some(f.clone()),
        _ => text
            .strip_prefix("no field ")
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string),
    };
    let Some(field) = field else {
        return format!("template: :1: {text}");
    };
    // The first `.FIELD` in the text is where Go's error points (line and column from 0).
    let needle = format!(".{field}");
    let at = template
        .match_indices(&needle)
        .find(|(i, _)| {
            let next = template[i + needle.len()..].chars().next();
            !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
        .map(|(i, _)| i);
    let (line, col, node) = match at {
        Some(i) => {
            // The node is the whole field chain the name ends (`.Config.Nope`), where Go's
            // error points: line from 1, column (bytes) from 0.
            let begin = template[..i]
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .map_or(0, |n| n + 1);
            let line = template[..begin].matches('\n').count() + 1;
            let col = begin - template[..begin].rfind('\n').map_or(0, |n| n + 1);
            (line, col, &template[begin..i + needle.len()])
        }
        None => (1, 0, needle.as_str()),
    };
    let why = match missing {
        Missing::Field(ty) => format!("can't evaluate field {field} in type {ty}"),
        Missing::MapKey => format!("map has no entry for key \"{field}\""),
    };
    format!("template: :{line}:{col}: executing \"\" at <{node}>: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_actions_get_go_print() {
        assert_eq!(prepare("{{.A}}").unwrap(), "{{.A | __go}}");
        assert_eq!(prepare("{{- .A -}}x").unwrap(), "{{- .A | __go -}}x");
        assert_eq!(
            prepare("{{range .E}}{{.}}{{\"\\n\"}}{{end}}").unwrap(),
            "{{range .E}}{{. | __go}}{{\"\\n\" | __go}}{{end}}"
        );
        assert_eq!(
            prepare("{{$x := .A}}{{if $x}}y{{end}}").unwrap(),
            "{{$x := .A}}{{if $x}}y{{end}}"
        );
        assert_eq!(prepare("{{\"}}\"}}").unwrap(), "{{\"}}\" | __go}}");
        assert_eq!(
            prepare("{{.ID").unwrap_err(),
            "template: :1: unclosed action"
        );
        assert_eq!(
            prepare("a\n{{.ID}").unwrap_err(),
            "template: :2: unclosed action"
        );
    }

    #[test]
    fn label_method_calls_become_functions() {
        assert_eq!(
            prepare("{{json .Labels}} {{.Label \"team\"}}").unwrap(),
            "{{json .Labels | __go}} {{(__label . \"team\") | __go}}"
        );
        let mut m = std::collections::HashMap::new();
        m.insert("Labels".to_string(), Value::from("team=a,tier=one"));
        let got = label(&[Value::Object(m), Value::from("tier")]).unwrap();
        assert_eq!(got, Value::from("one"));
    }

    #[test]
    fn values_print_as_go_prints_them() {
        let v = Value::Array(vec![Value::from("sh"), Value::from("-c")]);
        assert_eq!(go_text(&v), "[sh -c]");
        let mut m = std::collections::HashMap::new();
        m.insert("b".to_string(), Value::from(2u64));
        m.insert("a".to_string(), Value::from("x"));
        assert_eq!(go_text(&Value::Map(m)), "map[a:x b:2]");
    }
}

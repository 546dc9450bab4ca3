//! `--format` as docker's CLI reads it: `table` (the default columns), `json` (one object a
//! line), `table TEMPLATE` (a header row, then a row per item, columns split at tabs), or a Go
//! template rendered once per item. Templates run on `gtmpl` with docker's extra functions
//! (`json`, `join`, `split`, `upper`, `lower`, `title`, `truncate`, `pad`).

use std::collections::HashMap;

use gtmpl::{Context, Func, FuncError, Template, Value};
use serde_json::Value as Json;

use crate::gotmpl::{self, Missing};

/// How a listing prints.
pub enum Format {
    /// The command's own columns (`--format table` or no `--format`).
    Default,
    /// A template rendered per item; `table` adds a header row and aligns tab-separated cells.
    Template {
        template: Template,
        table: bool,
        /// The text as the user wrote it (for error messages).
        text: String,
        missing: Missing,
    },
}

/// A template error, printed as docker prints it: the message alone, exit 1.
#[derive(Debug)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "template parsing error: {}", self.0)
    }
}

impl std::error::Error for TemplateError {}

impl Format {
    /// Parses `--format` of a listing (`ps`, `images`, `history`) whose items are docker's
    /// formatter context of Go type `context` (named in errors about a missing field).
    pub fn parse(arg: Option<&str>) -> anyhow::Result<Self> {
        Self::parse_for(arg, Missing::Field("*formatter.imageContext"), true)
    }

    /// Parses `--format`; `escapes`: `\t` and `\n` in the text are a tab and a newline (docker's
    /// listings, not `inspect`). A template that does not parse is an error worded as docker's.
    pub fn parse_for(arg: Option<&str>, missing: Missing, escapes: bool) -> anyhow::Result<Self> {
        let Some(arg) = arg else {
            return Ok(Self::Default);
        };
        let trimmed = arg.trim();
        if trimmed.is_empty() || trimmed == "table" {
            return Ok(Self::Default);
        }
        let (text, table) = if trimmed == "json" {
            ("{{json .}}", false)
        } else if let Some(rest) = arg.strip_prefix("table ") {
            (rest, true)
        } else {
            (arg, false)
        };
        // docker's listings write tabs and newlines as escapes on the command line.
        let text = if escapes {
            text.replace("\\t", "\t").replace("\\n", "\n")
        } else {
            text.to_string()
        };
        let mut template = Template::default();
        template.add_funcs(&FUNCS);
        template.add_func(gotmpl::GO_PRINT, gotmpl::go_print);
        template.add_func(gotmpl::LABEL, gotmpl::label);
        let prepared = gotmpl::prepare(&text).map_err(TemplateError)?;
        template
            .parse(prepared)
            .map_err(|e| TemplateError(e.to_string()))?;
        Ok(Self::Template {
            template,
            table,
            text,
            missing,
        })
    }

    /// Whether the command's default columns print.
    pub fn is_default(&self) -> bool {
        matches!(self, Self::Default)
    }

    /// Renders items (JSON objects) and prints them; `header` names each field's column for
    /// `table` templates (fields it lacks head with their own name in upper case).
    pub fn print(&self, items: &[Json], header: &[(&str, &str)]) -> anyhow::Result<()> {
        let Self::Template { table, .. } = self else {
            return Ok(());
        };
        let mut lines = Vec::new();
        if *table {
            lines.push(self.render(&header_item(items, header))?);
        }
        for item in items {
            lines.push(self.render(item)?);
        }
        if *table {
            for line in align(&lines) {
                println!("{line}");
            }
        } else {
            for line in lines {
                println!("{line}");
            }
        }
        Ok(())
    }

    /// Renders one item (a template; the default format renders nothing).
    pub fn render(&self, item: &Json) -> anyhow::Result<String> {
        let Self::Template {
            template,
            text,
            missing,
            ..
        } = self
        else {
            return Ok(String::new());
        };
        // docker's listing contexts marshal themselves with HTML escapes; `json` of anything
        // else (inspect's objects, fields) does not escape.
        ESCAPE_TOP.with(|e| e.set(matches!(missing, Missing::Field(_))));
        template
            .render(&Context::from(to_value(item, true)))
            .map_err(|e| TemplateError(gotmpl::exec_error(text, &e, *missing)).into())
    }
}

/// The header row's item: each field of the first item mapped to its column title.
fn header_item(items: &[Json], header: &[(&str, &str)]) -> Json {
    let mut out = serde_json::Map::new();
    let titles: HashMap<&str, &str> = header.iter().copied().collect();
    let keys: Vec<String> = match items.first() {
        Some(Json::Object(m)) => m.keys().cloned().collect(),
        _ => header.iter().map(|(k, _)| k.to_string()).collect(),
    };
    for k in keys {
        let title = titles
            .get(k.as_str())
            .map(|t| t.to_string())
            .unwrap_or_else(|| k.to_uppercase());
        out.insert(k, Json::String(title));
    }
    Json::Object(out)
}

/// Aligns tab-separated cells like docker's tabwriter (min width 10, padding 3).
fn align(lines: &[String]) -> Vec<String> {
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].chars().count() + 3)
                .max()
                .unwrap_or(0)
                .max(10)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}", w = widths[c]));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

/// JSON to a template value: the top level is a struct (an unknown field is an error, as in
/// docker), nested objects are maps (a missing key prints `<no value>`).
pub fn to_value(j: &Json, top: bool) -> Value {
    match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(|v| to_value(v, false)).collect()),
        Json::Object(o) => {
            let m = o
                .iter()
                .map(|(k, v)| (k.clone(), to_value(v, false)))
                .collect();
            if top { Value::Object(m) } else { Value::Map(m) }
        }
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Json::from(u)
            } else if let Some(i) = n.as_i64() {
                Json::from(i)
            } else {
                n.as_f64().map(Json::from).unwrap_or(Json::Null)
            }
        }
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Object(o) | Value::Map(o) => {
            Json::Object(o.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
    }
}

/// Fields in the order of docker's Go structs (OCI image config, health check), which Go's
/// encoder keeps; gtmpl's maps have no order, so `json` sorts keys by this rank, then by name.
const GO_FIELD_ORDER: &[&str] = &[
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Healthcheck",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "ArgsEscaped",
    "OnBuild",
    "Shell",
    "Test",
    "Interval",
    "Timeout",
    "StartPeriod",
    "StartInterval",
    "Retries",
];

/// A value as Go's `json.Marshal` writes it (compact; object keys in [`GO_FIELD_ORDER`]).
fn go_json(v: &Value) -> String {
    match v {
        // The top level of a listing's item is docker's formatter map: keys sorted.
        Value::Object(o) | Value::Map(o) => {
            let top = matches!(v, Value::Object(_));
            let rank = |k: &str| {
                if top {
                    return 0;
                }
                GO_FIELD_ORDER
                    .iter()
                    .position(|f| *f == k)
                    .unwrap_or(GO_FIELD_ORDER.len())
            };
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Json::String(k.clone()), go_json(&o[k])))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(go_json).collect();
            format!("[{}]", items.join(","))
        }
        other => to_json(other).to_string(),
    }
}

const FUNCS: [(&str, Func); 8] = [
    ("json", json),
    ("join", join),
    ("split", split),
    ("upper", upper),
    ("lower", lower),
    ("title", title),
    ("truncate", truncate),
    ("pad", pad),
];

fn arg<'a>(args: &'a [Value], i: usize, name: &str) -> Result<&'a Value, FuncError> {
    args.get(i)
        .ok_or_else(|| FuncError::AtLeastXArgs(name.into(), i + 1))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

thread_local! {
    /// Whether `json` of a listing's whole item escapes <, > and & (see [`Format::render`]).
    static ESCAPE_TOP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn json(args: &[Value]) -> Result<Value, FuncError> {
    let v = arg(args, 0, "json")?;
    let text = go_json(v);
    // A listing's item marshals itself with json.Marshal, which escapes <, > and & for HTML;
    // docker's `json` function itself does not (SetEscapeHTML(false)).
    if matches!(v, Value::Object(_)) && ESCAPE_TOP.with(std::cell::Cell::get) {
        return Ok(Value::String(
            text.replace('<', "\\u003c")
                .replace('>', "\\u003e")
                .replace('&', "\\u0026"),
        ));
    }
    Ok(Value::String(text))
}

fn join(args: &[Value]) -> Result<Value, FuncError> {
    let sep = text(arg(args, 1, "join")?);
    match arg(args, 0, "join")? {
        Value::Array(a) => Ok(Value::String(
            a.iter().map(text).collect::<Vec<_>>().join(&sep),
        )),
        Value::Nil | Value::NoValue => Ok(Value::String(String::new())),
        other => Ok(Value::String(text(other))),
    }
}

fn split(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(arg(args, 0, "split")?);
    let sep = text(arg(args, 1, "split")?);
    Ok(Value::Array(
        s.split(sep.as_str())
            .map(|p| Value::String(p.into()))
            .collect(),
    ))
}

fn upper(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(text(arg(args, 0, "upper")?).to_uppercase()))
}

fn lower(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(text(arg(args, 0, "lower")?).to_lowercase()))
}

fn title(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(arg(args, 0, "title")?);
    let mut out = String::new();
    let mut start = true;
    for ch in s.chars() {
        if start {
            out.extend(ch.to_uppercase());
        } else {
            out.push(ch);
        }
        start = ch.is_whitespace();
    }
    Ok(Value::String(out))
}

fn count(v: &Value, name: &str) -> Result<usize, FuncError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(strata_oci::usize_of)
            .ok_or_else(|| FuncError::Generic(format!("{name}: not a count: {n}"))),
        other => Err(FuncError::Generic(format!("{name}: not a count: {other}"))),
    }
}

fn truncate(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(arg(args, 0, "truncate")?);
    let n = count(arg(args, 1, "truncate")?, "truncate")?;
    Ok(Value::String(s.chars().take(n).collect()))
}

fn pad(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(arg(args, 0, "pad")?);
    let before = count(arg(args, 1, "pad")?, "pad")?;
    let after = count(arg(args, 2, "pad")?, "pad")?;
    Ok(Value::String(format!(
        "{}{s}{}",
        " ".repeat(before),
        " ".repeat(after)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(fmt: &str, item: Json) -> String {
        Format::parse(Some(fmt)).unwrap().render(&item).unwrap()
    }

    #[test]
    fn docker_templates_render() {
        let item = serde_json::json!({
            "Repository": "app", "Tag": "1", "Size": 12,
            "Env": ["A=1", "B=2"], "Labels": {"k": "v"},
        });
        assert_eq!(one("{{.Repository}}:{{.Tag}}", item.clone()), "app:1");
        assert_eq!(one("{{join .Env \",\"}}", item.clone()), "A=1,B=2");
        assert_eq!(one("{{index .Labels \"k\"}}", item.clone()), "v");
        assert_eq!(one("{{.Labels.none}}", item.clone()), "<no value>");
        assert_eq!(one("{{upper .Repository}}", item.clone()), "APP");
        assert_eq!(one("{{printf \"%s=%d\" .Tag .Size}}", item.clone()), "1=12");
        assert_eq!(one("{{json .Env}}", item.clone()), r#"["A=1","B=2"]"#);
        assert_eq!(
            one("{{json .}}", serde_json::json!({"ID": "<missing>&"})),
            r#"{"ID":"\u003cmissing\u003e\u0026"}"#
        );
        let back: Json = serde_json::from_str(&one("json", item.clone())).unwrap();
        assert_eq!(back, item);
        assert!(Format::parse(Some("{{.Repository")).is_err());
        let bogus = Format::parse(Some("{{.Bogus}}")).unwrap();
        assert_eq!(
            bogus.render(&item).unwrap_err().to_string(),
            "template parsing error: template: :1:2: executing \"\" at <.Bogus>: can't evaluate field Bogus in type *formatter.imageContext"
        );
        assert_eq!(
            one("{{.Env}} {{.Labels}}", item.clone()),
            "[A=1 B=2] map[k:v]"
        );
        assert!(Format::parse(Some("table")).unwrap().is_default());
    }

    #[test]
    fn table_cells_align_like_tabwriter() {
        let lines = vec!["REPOSITORY\tTAG".to_string(), "a\tlatest".to_string()];
        assert_eq!(
            align(&lines),
            vec!["REPOSITORY   TAG", "a            latest"]
        );
    }
}

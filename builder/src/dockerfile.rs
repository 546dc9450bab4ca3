//! A Dockerfile read into stages of owned instructions, each with its line number and its
//! text. Parsing is parse-dockerfile's (taiki-e); words are expanded later, when the builder
//! knows the variables in scope.

use parse_dockerfile as pd;

/// Errors reading a Dockerfile.
#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    /// The parser refused the text.
    #[error("dockerfile parse error on line {line}: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// An instruction strata cannot carry out.
    #[error("dockerfile line {line}: {message}")]
    Unsupported {
        /// 1-based line.
        line: usize,
        /// What is not supported.
        message: String,
    },
}

/// RUN, CMD or ENTRYPOINT arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    /// `["prog", "arg"]`.
    Exec(Vec<String>),
    /// A command line for the shell (continuations already joined).
    Shell(String),
}

/// COPY or ADD arguments (raw words, expanded by the builder).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    /// Sources.
    pub srcs: Vec<String>,
    /// Destination.
    pub dest: String,
    /// `--from=stage|image` (COPY only).
    pub from: Option<String>,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=octal`.
    pub chmod: Option<String>,
}

/// HEALTHCHECK arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [--interval=..] CMD ...`.
    Check {
        /// The flags (interval, timeout, start-period, start-interval, retries).
        flags: Vec<(String, String)>,
        /// The test command.
        cmd: CommandForm,
    },
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `FROM [--platform=..] image [AS name]`.
    From {
        /// Image (raw word).
        image: String,
        /// Stage name.
        alias: Option<String>,
        /// `--platform`.
        platform: Option<String>,
    },
    /// `RUN`.
    Run(CommandForm),
    /// `CMD`.
    Cmd(CommandForm),
    /// `ENTRYPOINT`.
    Entrypoint(CommandForm),
    /// `ENV` (raw arguments).
    Env(String),
    /// `ARG` (raw arguments).
    Arg(String),
    /// `LABEL` (raw arguments).
    Label(String),
    /// `MAINTAINER name`.
    Maintainer(String),
    /// `EXPOSE` (raw words).
    Expose(Vec<String>),
    /// `VOLUME` (raw words).
    Volume(Vec<String>),
    /// `USER` (raw word).
    User(String),
    /// `WORKDIR` (raw word).
    Workdir(String),
    /// `COPY`.
    Copy(CopyArgs),
    /// `ADD`.
    Add(CopyArgs),
    /// `ONBUILD` with the trigger's text.
    Onbuild(String),
    /// `SHELL ["..."]`.
    Shell(Vec<String>),
    /// `STOPSIGNAL` (raw word).
    Stopsignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Health),
}

/// One instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line of its keyword.
    pub line: usize,
    /// Its text, continuations joined (for messages and history).
    pub text: String,
    /// What it says.
    pub kind: Kind,
}

/// A stage: its FROM and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The FROM instruction.
    pub from: Instruction,
    /// The instructions after it.
    pub body: Vec<Instruction>,
}

/// A whole Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The escape character (`# escape=` directive; `\` by default).
    pub escape: char,
    /// ARG instructions before the first FROM.
    pub global_args: Vec<Instruction>,
    /// The stages.
    pub stages: Vec<Stage>,
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

/// The logical line starting at `start`: up to a newline not preceded by the escape
/// character, continuations joined.
fn logical_line(text: &str, start: usize, escape: char) -> String {
    let rest = &text[start..];
    let mut end = rest.len();
    let mut from = 0;
    while let Some(nl) = rest[from..].find('\n') {
        let at = from + nl;
        if !rest[..at].trim_end().ends_with(escape) {
            end = at;
            break;
        }
        from = at + 1;
    }
    crate::words::join_continuations(rest[..end].trim_end(), escape)
        .trim()
        .to_string()
}

/// Stands in for the empty exec form `[]` of CMD and ENTRYPOINT, which docker accepts (it
/// clears the value) and parse-dockerfile refuses: see [`empty_exec_forms`].
const EMPTY_EXEC: &str = "__strata_empty_exec_form__";

/// `text` with every `CMD []` / `ENTRYPOINT []` line's `[]` replaced by `["EMPTY_EXEC"]`, so
/// that the parser takes it; lines are kept, so line numbers stay right.
fn empty_exec_forms(text: &str) -> String {
    text.split('\n')
        .map(|l| {
            let t = l.trim();
            let Some((word, rest)) = t.split_once(char::is_whitespace) else {
                return l.to_string();
            };
            let is_cmd = ["cmd", "entrypoint"].contains(&word.to_ascii_lowercase().as_str());
            let empty = rest
                .trim()
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'));
            match empty {
                Some(inner) if is_cmd && inner.trim().is_empty() => {
                    format!("{word} [\"{EMPTY_EXEC}\"]")
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn command(c: &pd::Command<'_>, escape: char) -> CommandForm {
    match c {
        pd::Command::Exec(v) if v.value.len() == 1 && v.value[0].value == EMPTY_EXEC => {
            CommandForm::Exec(Vec::new())
        }
        pd::Command::Exec(v) => {
            CommandForm::Exec(v.value.iter().map(|s| s.value.to_string()).collect())
        }
        pd::Command::Shell(s) => {
            CommandForm::Shell(crate::words::join_continuations(s.value, escape))
        }
        _ => CommandForm::Shell(String::new()),
    }
}

fn flags<'a>(flags: impl IntoIterator<Item = &'a pd::Flag<'a>>) -> Vec<(String, String)> {
    flags
        .into_iter()
        .map(|f| {
            (
                f.name.value.to_string(),
                f.value
                    .as_ref()
                    .map(|v| v.value.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn copy_args(
    line: usize,
    what: &str,
    options: &[pd::Flag<'_>],
    src: &[pd::Source<'_>],
    dest: &pd::UnescapedString<'_>,
) -> Result<CopyArgs, DockerfileError> {
    let mut args = CopyArgs {
        dest: dest.value.to_string(),
        ..CopyArgs::default()
    };
    for (name, value) in flags(options) {
        match name.as_str() {
            "from" if what == "COPY" => args.from = Some(value),
            "chown" => args.chown = Some(value),
            "chmod" => args.chmod = Some(value),
            "link" => {}
            other => {
                return Err(DockerfileError::Unsupported {
                    line,
                    message: format!("{what} --{other} is not supported"),
                });
            }
        }
    }
    for s in src {
        match s {
            pd::Source::Path(p) => args.srcs.push(p.value.to_string()),
            _ => {
                return Err(DockerfileError::Unsupported {
                    line,
                    message: format!("{what} from a here-document is not supported"),
                });
            }
        }
    }
    Ok(args)
}

fn convert(
    text: &str,
    escape: char,
    ins: &pd::Instruction<'_>,
    start: usize,
) -> Result<Instruction, DockerfileError> {
    let line = line_of(text, start);
    let unsupported = |message: String| DockerfileError::Unsupported { line, message };
    let kind = match ins {
        pd::Instruction::From(f) => from_kind(f, &unsupported)?,
        pd::Instruction::Run(r) => run_kind(r, escape, &unsupported)?,
        pd::Instruction::Cmd(c) => Kind::Cmd(command(&c.arguments, escape)),
        pd::Instruction::Entrypoint(e) => Kind::Entrypoint(command(&e.arguments, escape)),
        pd::Instruction::Env(e) => Kind::Env(e.arguments.value.to_string()),
        pd::Instruction::Arg(a) => Kind::Arg(a.arguments.value.to_string()),
        pd::Instruction::Label(l) => Kind::Label(l.arguments.value.to_string()),
        pd::Instruction::Maintainer(m) => Kind::Maintainer(m.name.value.to_string()),
        pd::Instruction::Expose(e) => {
            Kind::Expose(e.arguments.iter().map(|a| a.value.to_string()).collect())
        }
        pd::Instruction::Volume(v) => Kind::Volume(match &v.arguments {
            pd::JsonOrStringArray::Json(j) => j.value.iter().map(|a| a.value.to_string()).collect(),
            pd::JsonOrStringArray::String(s) => s.iter().map(|a| a.value.to_string()).collect(),
        }),
        pd::Instruction::User(u) => Kind::User(u.arguments.value.to_string()),
        pd::Instruction::Workdir(w) => Kind::Workdir(w.arguments.value.to_string()),
        pd::Instruction::Copy(c) => {
            Kind::Copy(copy_args(line, "COPY", &c.options, &c.src, &c.dest)?)
        }
        pd::Instruction::Add(a) => Kind::Add(copy_args(line, "ADD", &a.options, &a.src, &a.dest)?),
        pd::Instruction::Onbuild(o) => onbuild_kind(text, o, escape, &unsupported)?,
        pd::Instruction::Shell(s) => {
            Kind::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect())
        }
        pd::Instruction::Stopsignal(s) => Kind::Stopsignal(s.arguments.value.to_string()),
        pd::Instruction::Healthcheck(h) => Kind::Healthcheck(match &h.arguments {
            pd::HealthcheckArguments::None { .. } => Health::None,
            pd::HealthcheckArguments::Cmd { arguments, .. } => Health::Check {
                flags: flags(&h.options),
                cmd: command(arguments, escape),
            },
            _ => return Err(unsupported("unknown HEALTHCHECK form".into())),
        }),
        _ => return Err(unsupported("unknown instruction".into())),
    };
    Ok(Instruction {
        line,
        text: logical_line(text, start, escape).replace(&format!("[\"{EMPTY_EXEC}\"]"), "[]"),
        kind,
    })
}

type Unsupported<'a> = dyn Fn(String) -> DockerfileError + 'a;

/// FROM with its only supported flag, `--platform`.
fn from_kind(
    f: &pd::FromInstruction<'_>,
    unsupported: &Unsupported<'_>,
) -> Result<Kind, DockerfileError> {
    let mut platform = None;
    for (name, value) in flags(&f.options) {
        match name.as_str() {
            "platform" => platform = Some(value),
            other => return Err(unsupported(format!("FROM --{other} is not supported"))),
        }
    }
    Ok(Kind::From {
        image: f.image.value.to_string(),
        alias: f.as_.as_ref().map(|(_, a)| a.value.to_string()),
        platform,
    })
}

/// RUN in shell or exec form (no `--mount`/`--network` flags, no here-documents).
fn run_kind(
    r: &pd::RunInstruction<'_>,
    escape: char,
    unsupported: &Unsupported<'_>,
) -> Result<Kind, DockerfileError> {
    if let Some(f) = r.options.first() {
        return Err(unsupported(format!(
            "RUN --{} is not supported",
            f.name.value
        )));
    }
    if !r.here_docs.is_empty() {
        return Err(unsupported(
            "RUN with a here-document is not supported".into(),
        ));
    }
    Ok(Kind::Run(command(&r.arguments, escape)))
}

/// ONBUILD: the trigger's logical line, refused for the triggers docker refuses.
fn onbuild_kind(
    text: &str,
    o: &pd::OnbuildInstruction<'_>,
    escape: char,
    unsupported: &Unsupported<'_>,
) -> Result<Kind, DockerfileError> {
    let trigger = logical_line(text, o.onbuild.span.end, escape);
    let word = trigger
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    if matches!(word.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
        return Err(unsupported(format!(
            "{word} isn't allowed as an ONBUILD trigger"
        )));
    }
    Ok(Kind::Onbuild(trigger))
}

fn keyword_start(ins: &pd::Instruction<'_>) -> usize {
    match ins {
        pd::Instruction::Add(i) => i.add.span.start,
        pd::Instruction::Arg(i) => i.arg.span.start,
        pd::Instruction::Cmd(i) => i.cmd.span.start,
        pd::Instruction::Copy(i) => i.copy.span.start,
        pd::Instruction::Entrypoint(i) => i.entrypoint.span.start,
        pd::Instruction::Env(i) => i.env.span.start,
        pd::Instruction::Expose(i) => i.expose.span.start,
        pd::Instruction::From(i) => i.from.span.start,
        pd::Instruction::Healthcheck(i) => i.healthcheck.span.start,
        pd::Instruction::Label(i) => i.label.span.start,
        pd::Instruction::Maintainer(i) => i.maintainer.span.start,
        pd::Instruction::Onbuild(i) => i.onbuild.span.start,
        pd::Instruction::Run(i) => i.run.span.start,
        pd::Instruction::Shell(i) => i.shell.span.start,
        pd::Instruction::Stopsignal(i) => i.stopsignal.span.start,
        pd::Instruction::User(i) => i.user.span.start,
        pd::Instruction::Volume(i) => i.volume.span.start,
        pd::Instruction::Workdir(i) => i.workdir.span.start,
        _ => 0,
    }
}

/// parse-dockerfile's messages in docker's words: "ENV requires at least one argument",
/// "unknown instruction: FOO".
fn docker_wording(message: &str) -> String {
    let m = message.replace(" instruction requires ", " requires ");
    match m.strip_prefix("unknown instruction '") {
        Some(rest) => format!("unknown instruction: {}", rest.trim_end_matches('\'')),
        None => m,
    }
}

fn parse(t: &str) -> Result<pd::Dockerfile<'_>, DockerfileError> {
    pd::parse(t).map_err(|e| DockerfileError::Parse {
        line: e.line().max(1),
        // docker's wording: "ENV requires at least one argument".
        message: docker_wording(&format!("{e:#}")),
    })
}

impl Dockerfile {
    /// Reads a Dockerfile's text.
    pub fn parse(text: &str) -> Result<Self, DockerfileError> {
        let text = empty_exec_forms(text);
        let escape = parse(&text)?
            .parser_directives
            .escape
            .as_ref()
            .map(|d| d.value.value)
            .unwrap_or('\\');
        // An escape character ending the file continues nothing: docker drops it.
        let text = match text.trim_end().strip_suffix(escape) {
            Some(head) => format!("{head}\n"),
            None => text,
        };
        let text = text.as_str();
        let parsed = parse(text)?;
        let mut global_args = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        for ins in &parsed.instructions {
            let owned = convert(text, escape, ins, keyword_start(ins))?;
            match (&owned.kind, stages.last_mut()) {
                (Kind::From { .. }, _) => stages.push(Stage {
                    from: owned,
                    body: Vec::new(),
                }),
                (_, Some(stage)) => stage.body.push(owned),
                (Kind::Arg(_), None) => global_args.push(owned),
                (_, None) => {
                    return Err(DockerfileError::Parse {
                        line: owned.line,
                        message: "no FROM before the first instruction".into(),
                    });
                }
            }
        }
        if stages.is_empty() {
            return Err(DockerfileError::Parse {
                line: 1,
                message: "the Dockerfile has no FROM instruction".into(),
            });
        }
        Ok(Self {
            escape,
            global_args,
            stages,
        })
    }

    /// Reads one instruction (an ONBUILD trigger) on its own.
    pub fn parse_trigger(trigger: &str, escape: char) -> Result<Instruction, DockerfileError> {
        let text = format!("# escape={escape}\nFROM scratch\n{trigger}\n");
        let mut df = Self::parse(&text)?;
        let mut ins =
            df.stages
                .remove(0)
                .body
                .into_iter()
                .next()
                .ok_or_else(|| DockerfileError::Parse {
                    line: 1,
                    message: format!("empty ONBUILD trigger {trigger:?}"),
                })?;
        ins.line = 0;
        Ok(ins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_table() {
        let cases: &[(&str, Kind)] = &[
            (
                "RUN echo hi",
                Kind::Run(CommandForm::Shell("echo hi".into())),
            ),
            (
                "RUN [\"a\", \"b c\"]",
                Kind::Run(CommandForm::Exec(vec!["a".into(), "b c".into()])),
            ),
            (
                "RUN echo a \\\n  # c\n  && echo b",
                Kind::Run(CommandForm::Shell("echo a   && echo b".into())),
            ),
            ("CMD x y", Kind::Cmd(CommandForm::Shell("x y".into()))),
            (
                "ENTRYPOINT [\"e\"]",
                Kind::Entrypoint(CommandForm::Exec(vec!["e".into()])),
            ),
            ("ENV A=1 B=\"x y\"", Kind::Env("A=1 B=\"x y\"".into())),
            ("ARG V=1", Kind::Arg("V=1".into())),
            ("LABEL a=b", Kind::Label("a=b".into())),
            ("MAINTAINER me <m@e>", Kind::Maintainer("me <m@e>".into())),
            (
                "EXPOSE 80 53/udp",
                Kind::Expose(vec!["80".into(), "53/udp".into()]),
            ),
            (
                "VOLUME [\"/a\", \"/b\"]",
                Kind::Volume(vec!["/a".into(), "/b".into()]),
            ),
            ("VOLUME /a /b", Kind::Volume(vec!["/a".into(), "/b".into()])),
            ("USER u:g", Kind::User("u:g".into())),
            ("WORKDIR $D/x", Kind::Workdir("$D/x".into())),
            (
                "COPY --from=b --chown=1:2 a* /x/",
                Kind::Copy(CopyArgs {
                    srcs: vec!["a*".into()],
                    dest: "/x/".into(),
                    from: Some("b".into()),
                    chown: Some("1:2".into()),
                    chmod: None,
                }),
            ),
            (
                "ADD [\"a b\", \"/d/\"]",
                Kind::Add(CopyArgs {
                    srcs: vec!["a b".into()],
                    dest: "/d/".into(),
                    ..CopyArgs::default()
                }),
            ),
            ("ONBUILD RUN echo on", Kind::Onbuild("RUN echo on".into())),
            (
                "SHELL [\"/bin/sh\", \"-ec\"]",
                Kind::Shell(vec!["/bin/sh".into(), "-ec".into()]),
            ),
            ("STOPSIGNAL SIGINT", Kind::Stopsignal("SIGINT".into())),
            ("HEALTHCHECK NONE", Kind::Healthcheck(Health::None)),
            (
                "HEALTHCHECK --interval=5s CMD true",
                Kind::Healthcheck(Health::Check {
                    flags: vec![("interval".into(), "5s".into())],
                    cmd: CommandForm::Shell("true".into()),
                }),
            ),
        ];
        for (text, want) in cases {
            let df = Dockerfile::parse(&format!("FROM base\n{text}\n")).unwrap();
            let ins = &df.stages[0].body[0];
            assert_eq!(&ins.kind, want, "{text:?}");
            assert_eq!(ins.line, 2);
        }
    }

    #[test]
    fn stages_global_args_and_escape() {
        let df = Dockerfile::parse(
            "# escape=`\nARG BASE=busybox\nFROM --platform=linux/amd64 $BASE AS build\nRUN a `\n b\n\nFROM scratch\nCOPY --from=build /x /x\n",
        )
        .unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.global_args.len(), 1);
        assert_eq!(df.stages.len(), 2);
        assert_eq!(
            df.stages[0].from.kind,
            Kind::From {
                image: "$BASE".into(),
                alias: Some("build".into()),
                platform: Some("linux/amd64".into())
            }
        );
        assert_eq!(
            df.stages[0].body[0].kind,
            Kind::Run(CommandForm::Shell("a  b".into()))
        );
        assert_eq!(df.stages[1].from.line, 7);
        assert_eq!(df.stages[1].body[0].line, 8);
        assert_eq!(df.stages[1].body[0].text, "COPY --from=build /x /x");
    }

    #[test]
    fn bad_dockerfiles_name_their_line() {
        for (text, line, needle) in [
            ("FROM a\nRUN x\nFOO bar\n", 3, "unknown instruction"),
            ("RUN x\n", 1, "FROM"),
            ("", 1, "FROM"),
            ("FROM a\nENV\n", 2, "ENV"),
            ("FROM a\nRUN --mount=type=cache x\n", 2, "--mount"),
            ("FROM a\nONBUILD FROM b\n", 2, "ONBUILD"),
        ] {
            let e = Dockerfile::parse(text).unwrap_err();
            let shown = e.to_string();
            assert!(shown.contains(&format!("line {line}")), "{text:?}: {shown}");
            assert!(shown.contains(needle), "{text:?}: {shown}");
        }
    }

    #[test]
    fn empty_exec_forms_and_a_final_escape_parse_as_docker() {
        let df = Dockerfile::parse("FROM a\nENTRYPOINT []\ncmd [ ]\nRUN echo hi \\").unwrap();
        let body = &df.stages[0].body;
        assert_eq!(body[0].kind, Kind::Entrypoint(CommandForm::Exec(vec![])));
        assert_eq!(body[0].text, "ENTRYPOINT []");
        assert_eq!(body[1].kind, Kind::Cmd(CommandForm::Exec(vec![])));
        assert_eq!(
            body[2].kind,
            Kind::Run(CommandForm::Shell("echo hi".into()))
        );
        assert_eq!(body[2].line, 4);
        let e = Dockerfile::parse("FROM a\nRUN true\nENV\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "dockerfile parse error on line 3: ENV requires at least one argument"
        );
    }

    #[test]
    fn triggers_parse_alone() {
        let t = Dockerfile::parse_trigger("COPY a /b", '\\').unwrap();
        assert!(matches!(t.kind, Kind::Copy(_)));
    }
}

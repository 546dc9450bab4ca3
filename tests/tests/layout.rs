//! The shape of the source tree, checked on every test run (issue 13, DESIGN.md §9): within
//! each crate no two modules import each other, directly or through others; no source file is
//! much over 600 lines and no function outside tests over 80. Parsed with `syn`, so comments
//! and strings never count as imports, and `#[cfg(test)]` code is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Longest source file accepted, in lines ("~600": a little slack for a long doc block).
const MAX_FILE_LINES: usize = 650;
/// Longest function outside tests, in lines (signature to closing brace).
const MAX_FN_LINES: usize = 80;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The library and binary crates of the workspace: `(name, src dir)`.
fn crates() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(workspace()).unwrap() {
        let dir = e.unwrap().path();
        let src = dir.join("src");
        if dir.join("Cargo.toml").is_file() && src.is_dir() && !dir.ends_with("target") {
            out.push((dir.file_name().unwrap().to_string_lossy().into_owned(), src));
        }
    }
    out.sort();
    out
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src`: `lib.rs`/`main.rs` → `[]`, `a/mod.rs` and `a.rs` →
/// `[a]`, `a/b.rs` → `[a, b]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let s = quote_attr(a);
        s == "test" || s.starts_with("cfg(test") || s.starts_with("tokio::test")
    })
}

fn quote_attr(a: &syn::Attribute) -> String {
    let m = a.meta.path().segments.iter().map(|s| s.ident.to_string());
    let name = m.collect::<Vec<_>>().join("::");
    match &a.meta {
        syn::Meta::List(l) => format!("{name}({})", l.tokens).replace(' ', ""),
        _ => name,
    }
}

/// What one file's non-test code refers to, and its long functions.
struct Scan {
    module: Vec<String>,
    refs: BTreeSet<Vec<String>>,
    long_fns: Vec<(String, usize)>,
}

impl Scan {
    fn path(&mut self, segs: Vec<String>) {
        let mut base: Vec<String> = match segs.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("super") => self.module.clone(),
            _ => return,
        };
        let mut rest = segs.into_iter().peekable();
        if rest.peek().map(String::as_str) == Some("crate") {
            rest.next();
        }
        while rest.peek().map(String::as_str) == Some("super") {
            rest.next();
            base.pop();
        }
        base.extend(rest);
        self.refs.insert(base);
    }

    fn func(&mut self, name: &syn::Ident, attrs: &[syn::Attribute], span: proc_macro2::Span) {
        let lines = span.end().line - span.start().line + 1;
        if !is_test(attrs) && lines > MAX_FN_LINES {
            self.long_fns.push((name.to_string(), lines));
        }
    }
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push([prefix.clone(), vec![n.ident.to_string()]].concat()),
        syn::UseTree::Rename(r) => out.push([prefix.clone(), vec![r.ident.to_string()]].concat()),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| use_paths(t, prefix, out)),
    }
}

impl<'ast> Visit<'ast> for Scan {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if is_test(&f.attrs) {
            return;
        }
        self.func(&f.sig.ident, &f.attrs, syn::spanned::Spanned::span(f));
        syn::visit::visit_item_fn(self, f);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.func(&f.sig.ident, &f.attrs, syn::spanned::Spanned::span(f));
        syn::visit::visit_impl_item_fn(self, f);
    }
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut out = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut out);
        out.into_iter().for_each(|p| self.path(p));
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.path(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
}

fn scan(src: &Path, file: &Path) -> Scan {
    let text = std::fs::read_to_string(file).unwrap();
    let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut s = Scan {
        module: module_of(src, file),
        refs: BTreeSet::new(),
        long_fns: Vec::new(),
    };
    s.visit_file(&ast);
    s
}

/// Edges between sibling-or-cousin modules of one crate (a module and its own ancestors or
/// descendants are one unit: a parent declares its children).
fn edges(scans: &[Scan]) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeSet<Vec<String>> = scans.iter().map(|s| s.module.clone()).collect();
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for s in scans.iter().filter(|s| !s.module.is_empty()) {
        for r in &s.refs {
            // The longest known module that prefixes the path.
            let target = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|m| modules.contains(m));
            let Some(t) = target else { continue };
            if t.starts_with(&s.module) || s.module.starts_with(&t) {
                continue;
            }
            g.entry(s.module.clone()).or_default().insert(t);
        }
    }
    g
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(
    g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    start: &Vec<String>,
) -> Option<Vec<Vec<String>>> {
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in g.get(&node).into_iter().flatten() {
            if next == start {
                return Some([path.clone(), vec![start.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

fn all_scans() -> Vec<(String, Vec<(PathBuf, Scan)>)> {
    crates()
        .into_iter()
        .map(|(name, src)| {
            let mut files = Vec::new();
            rs_files(&src, &mut files);
            files.sort();
            let scans = files
                .into_iter()
                .map(|f| (f.clone(), scan(&src, &f)))
                .collect();
            (name, scans)
        })
        .collect()
}

#[test]
fn no_module_imports_itself_through_others() {
    let mut cycles = Vec::new();
    for (name, scans) in all_scans() {
        let scans: Vec<Scan> = scans.into_iter().map(|(_, s)| s).collect();
        let g = edges(&scans);
        for m in g.keys() {
            if let Some(c) = cycle_from(&g, m) {
                let c: Vec<String> = c.iter().map(|m| m.join("::")).collect();
                cycles.push(format!("{name}: {}", c.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn files_and_functions_stay_short() {
    let mut long = Vec::new();
    for (name, scans) in all_scans() {
        for (file, s) in scans {
            // The end-to-end harness is test code: its fixtures may be long.
            if name == "tests" {
                continue;
            }
            let rel = file
                .strip_prefix(workspace())
                .unwrap()
                .display()
                .to_string();
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > MAX_FILE_LINES {
                long.push(format!("{rel}: {lines} lines"));
            }
            for (f, n) in s.long_fns {
                long.push(format!("{rel}: fn {f}: {n} lines"));
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

#[test]
fn the_scanner_sees_a_cycle_and_a_long_function() {
    // The checks above can fail: a two-module cycle and an 81-line function are caught.
    let a = syn::parse_file("use crate::b::X; fn f() {}").unwrap();
    let b = syn::parse_file("fn g() { super::a::f() }").unwrap();
    let mut scans = Vec::new();
    for (m, ast) in [("a", a), ("b", b)] {
        let mut s = Scan {
            module: vec![m.into()],
            refs: BTreeSet::new(),
            long_fns: Vec::new(),
        };
        s.visit_file(&ast);
        scans.push(s);
    }
    let g = edges(&scans);
    assert!(cycle_from(&g, &vec!["a".to_string()]).is_some(), "{g:?}");
    let body = "let _x = 1;\n".repeat(MAX_FN_LINES);
    let long = syn::parse_file(&format!("fn h() {{\n{body}}}")).unwrap();
    let mut s = Scan {
        module: vec![],
        refs: BTreeSet::new(),
        long_fns: Vec::new(),
    };
    s.visit_file(&long);
    assert_eq!(s.long_fns.len(), 1);
}

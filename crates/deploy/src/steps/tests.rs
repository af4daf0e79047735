//! The step names are unique and well formed, and `ALL` is exactly the set
//! of steps the engine's code marks (read from the crate's sources).

use super::ALL;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

#[test]
fn names_are_unique_and_prefixed() {
    let mut seen = HashSet::new();
    for (transaction, steps) in ALL {
        assert!(!steps.is_empty(), "{transaction} has no steps");
        for name in *steps {
            assert!(seen.insert(*name), "duplicate step name {name}");
            let prefix = format!("{transaction}.");
            assert!(name.starts_with(&prefix), "{name} lacks prefix {prefix}");
            let step = &name[prefix.len()..];
            assert!(
                !step.is_empty() && step.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{name}: step part must be lowercase words joined by '-'"
            );
        }
    }
}

/// `(module, CONST) -> value` for every `pub const` in a `pub mod` of steps.rs.
fn declared(src: &str) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let mut module = None;
    for line in src.lines() {
        let l = line.trim();
        if let Some(m) = l
            .strip_prefix("pub mod ")
            .and_then(|r| r.strip_suffix(" {"))
        {
            module = Some(m.to_owned());
        } else if line == "}" {
            module = None;
        } else if let (Some(m), Some(rest)) = (&module, l.strip_prefix("pub const ")) {
            if let Some((name, value)) = rest.split_once(": &str = ") {
                let value = value.trim_end_matches(';').trim_matches('"');
                out.insert((m.clone(), name.to_owned()), value.to_owned());
            }
        }
    }
    out
}

/// The aliases a source file gives step modules: `use crate::steps::X as Y`,
/// `use crate::steps::{X as Y, Z}`.
fn aliases(src: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in src.lines() {
        let Some(rest) = line.trim().strip_prefix("use crate::steps::") else {
            continue;
        };
        let rest = rest
            .trim_end_matches(';')
            .trim_start_matches('{')
            .trim_end_matches('}');
        for item in rest.split(',') {
            let item = item.trim();
            match item.split_once(" as ") {
                Some((m, a)) => out.insert(a.trim().to_owned(), m.trim().to_owned()),
                None => out.insert(item.to_owned(), item.to_owned()),
            };
        }
    }
    out
}

/// The text of each `step(...)` and `point(...)` call's argument (to the
/// matching parenthesis), without definitions (`fn step(`).
fn call_args<'a>(src: &'a str, callee: &str) -> Vec<&'a str> {
    let pat = format!("{callee}(");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = src[from..].find(&pat) {
        let start = from + i;
        let open = start + pat.len();
        from = open;
        let before = &src[..start];
        let prev = before.chars().last();
        if before.ends_with("fn ") || prev.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let mut depth = 1;
        let mut end = open;
        for (k, c) in src[open..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = open + k;
                break;
            }
        }
        out.push(&src[open..end]);
    }
    out
}

#[test]
fn all_lists_every_step_the_code_marks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let decl = declared(&std::fs::read_to_string(dir.join("steps.rs")).unwrap());
    let listed: BTreeSet<&str> = ALL.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    let values: BTreeSet<&str> = decl.values().map(String::as_str).collect();
    assert_eq!(
        values, listed,
        "the constants of steps.rs and steps::ALL differ"
    );

    let mut used = BTreeSet::new();
    let mut calls = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "rs") || p.ends_with("steps.rs") {
            continue;
        }
        let src = std::fs::read_to_string(&p).unwrap();
        let al = aliases(&src);
        for lit in call_args(&src, "point") {
            // `Target::step` passes its argument on; any other point names a literal.
            if lit.trim() == "name" {
                continue;
            }
            let name = lit.trim().trim_matches('"');
            assert!(
                listed.contains(name),
                "{}: point({lit}) is not in steps::ALL",
                p.display()
            );
            used.insert(name.to_owned());
        }
        for arg in call_args(&src, "step") {
            if arg.trim() == "name" {
                continue;
            }
            let refs: Vec<&str> = arg
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .filter(|w| w.contains("::"))
                .collect();
            assert!(
                !refs.is_empty(),
                "{}: step({arg}) names no step constant",
                p.display()
            );
            for r in refs {
                let (m, c) = r.rsplit_once("::").unwrap();
                let m = m.rsplit("::").next().unwrap();
                let module = al.get(m).unwrap_or_else(|| {
                    panic!(
                        "{}: step({arg}): {m} is no alias of a steps module",
                        p.display()
                    )
                });
                let v = decl
                    .get(&(module.clone(), c.to_owned()))
                    .unwrap_or_else(|| {
                        panic!("{}: step({arg}): no steps::{module}::{c}", p.display())
                    });
                used.insert(v.clone());
                calls += 1;
            }
        }
    }
    assert!(calls >= listed.len(), "only {calls} step calls found");
    let unused: Vec<&&str> = listed.iter().filter(|n| !used.contains(**n)).collect();
    assert!(unused.is_empty(), "steps no code marks: {unused:?}");
}

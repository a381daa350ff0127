//! The library's import graph has no cycles: not between the files of one
//! layer, and not between the top-level folders of `layers/` (DESIGN.md: imports
//! flow one way, `classify` at the bottom, layers above it, backends above them).
//!
//! It reads `layers/**/*.rs`, takes every `use` tree and every `crate::`,
//! `super::` and `self::` path outside comments, and resolves each to the file
//! that defines the item, looking through the `pub use` re-exports of `mod.rs`
//! files (a re-export is how a folder shows its children, not a dependency).
//! The same check runs on a small tree with a cycle, so it is known to fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module path: `["fallback", "future"]` is `crate::fallback::future`.
type ModPath = Vec<String>;

struct Tree {
    /// Every module, with the source of its file.
    files: BTreeMap<ModPath, String>,
    /// `(module, name)` re-exported by `pub use` from the module at the value.
    reexports: BTreeMap<(ModPath, String), ModPath>,
}

fn read_tree(root: &Path) -> Tree {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let source = strip_comments(&fs::read_to_string(&path).unwrap());
                // In-file unit tests (`#[cfg(test)] mod tests`, at the end by
                // convention) import their own file through `super::*`.
                let source = match source.find("#[cfg(test)]\nmod ") {
                    Some(at) => source[..at].to_owned(),
                    None => source,
                };
                files.insert(module_of(root, &path), source);
            }
        }
    }
    let mut tree = Tree {
        files,
        reexports: BTreeMap::new(),
    };
    let mut reexports = BTreeMap::new();
    for (module, source) in &tree.files {
        for (public, path) in use_statements(source) {
            if !public {
                continue;
            }
            for full in expand_use(&path) {
                let (target, name) = match resolve_relative(module, &full, &tree) {
                    Some(resolved) => resolved,
                    None => continue,
                };
                let alias = name.last().cloned().unwrap_or_default();
                if alias.is_empty() || alias == "*" {
                    continue;
                }
                reexports.insert((module.clone(), alias), target);
            }
        }
    }
    tree.reexports = reexports;
    tree
}

fn module_of(root: &Path, file: &Path) -> ModPath {
    let relative: PathBuf = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: ModPath = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Drops `//` comments (doc comments included: their links are not imports).
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        let code = match line.find("//") {
            // `"http://..."` in a string: keep the line up to the string.
            Some(at) => &line[..at],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every `use` statement: whether it is a re-export (`pub use`, `pub(crate) use`),
/// and its tree with whitespace and renames (`as name`) removed.
fn use_statements(source: &str) -> Vec<(bool, String)> {
    let mut statements = Vec::new();
    let mut rest = source;
    while let Some(at) = find_word(rest, "use") {
        let before = rest[..at].trim_end();
        let public = ["pub", "pub(crate)", "pub(super)"]
            .iter()
            .any(|vis| before.ends_with(vis));
        let after = &rest[at + 3..];
        let Some(end) = after.find(';') else { break };
        let mut tree = String::new();
        let mut tokens = after[..end].split_whitespace();
        while let Some(token) = tokens.next() {
            if token == "as" {
                // Keep what follows the new name: `_,` keeps `,`.
                let renamed = tokens.next().unwrap_or("");
                tree.push_str(
                    renamed.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'),
                );
            } else {
                tree.push_str(token);
            }
        }
        statements.push((public, tree));
        rest = &after[end..];
    }
    statements
}

/// The position of `word` standing alone (not part of an identifier).
fn find_word(text: &str, word: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = text[from..].find(word) {
        let at = from + found;
        let end = at + word.len();
        let alone_before = at == 0 || !ident(bytes[at - 1]);
        let alone_after = end < bytes.len() && bytes[end] == b' ';
        if alone_before && alone_after {
            return Some(at);
        }
        from = end;
    }
    None
}

/// `a::{b,c::{d,e}}` into `a::b`, `a::c::d`, `a::c::e` (renames dropped).
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(list: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, c) in list.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&list[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&list[start..]);
        parts.into_iter().filter(|part| !part.is_empty()).collect()
    }
    match tree.find('{') {
        None => vec![tree.split("::").map(str::to_owned).collect()],
        Some(open) => {
            let prefix: Vec<String> = tree[..open]
                .trim_end_matches("::")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            split_top(inner)
                .into_iter()
                .flat_map(expand_use)
                .map(|tail| {
                    let mut full = prefix.clone();
                    if tail != ["self"] {
                        full.extend(tail);
                    }
                    full
                })
                .collect()
        }
    }
}

/// Every `crate::`, `super::` or `self::` path used in code, outside `use`.
fn inline_paths(source: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let bytes = source.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = source[from..].find(start) {
            let at = from + found;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            if at >= 2 && &source[at - 2..at] == "::" {
                continue; // `super::super::`: part of a longer path.
            }
            let end = source[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(source.len(), |len| at + len);
            paths.push(
                source[at..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    paths
}

/// Resolve a path written in `module` to (the module it names, the rest).
fn resolve_relative(
    module: &ModPath,
    path: &[String],
    tree: &Tree,
) -> Option<(ModPath, Vec<String>)> {
    let (mut base, mut rest): (ModPath, &[String]) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (module.clone(), &path[1..]),
        "super" => {
            let mut base = module.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        _ => return None, // an external crate, or a name in scope
    };
    while let Some(next) = rest.first() {
        let mut deeper = base.clone();
        deeper.push(next.clone());
        if !tree.files.contains_key(&deeper) {
            break;
        }
        base = deeper;
        rest = &rest[1..];
    }
    Some((base, rest.to_vec()))
}

/// The file that defines what `path` names, through re-exports.
fn defining_module(module: &ModPath, path: &[String], tree: &Tree) -> Option<ModPath> {
    if path.last().is_some_and(|last| last == "*") {
        return None; // A glob: no single item to follow.
    }
    let (mut target, mut rest) = resolve_relative(module, path, tree)?;
    for _ in 0..8 {
        let Some(name) = rest.first().cloned() else {
            break;
        };
        match tree.reexports.get(&(target.clone(), name.clone())).cloned() {
            Some(source) if source != target => {
                target = source;
                rest = rest[1..].to_vec();
                // The re-exported item is in `source` (or deeper under it).
                let mut full = vec!["crate".to_owned()];
                full.extend(target.iter().cloned());
                full.push(name.clone());
                full.extend(rest.iter().cloned());
                let (deeper, tail) = resolve_relative(&target, &full, tree)?;
                target = deeper;
                rest = tail;
            }
            _ => break,
        }
    }
    Some(target)
}

/// Import edges between files (module paths), re-exports left out.
fn file_edges(tree: &Tree) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (module, source) in &tree.files {
        let mut paths: Vec<Vec<String>> = use_statements(source)
            .into_iter()
            .filter(|(public, _)| !public)
            .flat_map(|(_, tree)| expand_use(&tree))
            .collect();
        // Inline paths, but not those of re-exports (already left out above).
        let without_reexports = source
            .lines()
            .filter(|line| {
                !line.trim_start().starts_with("pub use") && !line.contains("pub(crate) use")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let without_uses: String = strip_use_statements(&without_reexports);
        paths.extend(inline_paths(&without_uses));
        for path in paths {
            if let Some(target) = defining_module(module, &path, tree) {
                // A module and the modules inside it are one unit with their parent
                // only through `mod` declarations, which are not imports.
                if &target != module && tree.files.contains_key(&target) {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
    }
    edges
}

fn strip_use_statements(source: &str) -> String {
    let mut out = String::new();
    let mut rest = source;
    while let Some(at) = find_word(rest, "use") {
        out.push_str(&rest[..at]);
        match rest[at..].find(';') {
            Some(end) => rest = &rest[at + end + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The top-level unit of a module: its folder under `layers/`, or the file itself
/// for the crate root's own files.
fn unit(module: &ModPath, tree: &Tree) -> String {
    match module.first() {
        None => "lib.rs".to_owned(),
        Some(first) => {
            let is_folder = tree
                .files
                .keys()
                .any(|other| other.len() > 1 && other[0] == *first);
            if is_folder {
                format!("{first}/")
            } else {
                format!("{first}.rs")
            }
        }
    }
}

/// Strongly connected components with more than one node: the cycles.
fn cycles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    let nodes: BTreeSet<N> = edges
        .iter()
        .flat_map(|(from, to)| std::iter::once(from.clone()).chain(to.iter().cloned()))
        .collect();
    let reach = |from: &N| -> BTreeSet<N> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(node) = stack.pop() {
            for next in edges.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<N, BTreeSet<N>> = nodes.iter().map(|n| (n.clone(), reach(n))).collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for node in &nodes {
        if done.contains(node) || !reachable[node].contains(node) {
            continue;
        }
        let component: Vec<N> = nodes
            .iter()
            .filter(|other| reachable[node].contains(*other) && reachable[*other].contains(node))
            .cloned()
            .collect();
        done.extend(component.iter().cloned());
        found.push(component);
    }
    found
}

fn report(tree: &Tree) -> Vec<String> {
    let edges = file_edges(tree);
    let name = |m: &ModPath| {
        if m.is_empty() {
            "lib.rs".to_owned()
        } else {
            m.join("/")
        }
    };
    let mut problems = Vec::new();
    for component in cycles(&edges) {
        let names: Vec<String> = component.iter().map(name).collect();
        let links: Vec<String> = component
            .iter()
            .flat_map(|from| {
                edges[from]
                    .iter()
                    .filter(|to| component.contains(to))
                    .map(move |to| format!("{} -> {}", name(from), name(to)))
            })
            .collect();
        problems.push(format!(
            "files import each other in a cycle: {} ({})",
            names.join(", "),
            links.join("; ")
        ));
    }
    let mut units: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut why: BTreeMap<(String, String), String> = BTreeMap::new();
    for (from, targets) in &edges {
        for to in targets {
            let (a, b) = (unit(from, tree), unit(to, tree));
            if a != b {
                units.entry(a.clone()).or_default().insert(b.clone());
                why.entry((a, b))
                    .or_insert_with(|| format!("{} -> {}", name(from), name(to)));
            }
        }
    }
    for component in cycles(&units) {
        let mut links: Vec<&String> = Vec::new();
        for a in &component {
            for b in &component {
                links.extend(why.get(&(a.clone(), b.clone())));
            }
        }
        problems.push(format!(
            "folders import each other in a cycle: {} (for example {:?})",
            component.join(", "),
            links
        ));
    }
    problems
}

#[test]
fn layers_have_no_import_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("layers");
    let tree = read_tree(&root);
    assert!(tree.files.len() > 50, "read {} files", tree.files.len());
    let problems = report(&tree);
    assert!(
        problems.is_empty(),
        "import cycles:\n{}",
        problems.join("\n")
    );
}

/// The check finds a cycle between files of a folder and between folders, sees
/// through re-exports, and ignores imports in comments.
#[test]
fn the_check_fails_on_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write(
        "lib.rs",
        "pub mod base;\npub mod upper;\npub type BoxError = ();\n",
    );
    write("base/mod.rs", "mod kind;\npub use self::kind::Kind;\n");
    write(
        "base/kind.rs",
        "use crate::BoxError;\n/// [`x`](crate::upper::Upper)\npub struct Kind;\n",
    );
    write(
        "upper/mod.rs",
        "mod layer;\nmod service;\npub use self::layer::Upper;\npub use self::service::Service;\n",
    );
    write(
        "upper/layer.rs",
        "use super::Service;\nuse crate::base::Kind;\npub struct Upper;\n",
    );
    write(
        "upper/service.rs",
        "use super::{layer::Upper, Service as _};\npub struct Service;\n",
    );
    let clean = report(&read_tree(dir.path()));
    assert!(clean.iter().all(|p| !p.contains("base/")), "{clean:?}");
    assert_eq!(clean.len(), 1, "{clean:?}");
    assert!(
        clean[0].contains("upper/layer -> upper/service"),
        "{clean:?}"
    );
    assert!(
        clean[0].contains("upper/service -> upper/layer"),
        "{clean:?}"
    );

    // A path in code (not a `use`) from the bottom folder to the upper one.
    write(
        "base/kind.rs",
        "pub struct Kind;\nfn up() -> crate::upper::Upper { crate::upper::Upper }\n",
    );
    write("upper/service.rs", "pub struct Service;\n");
    let problems = report(&read_tree(dir.path()));
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("folders import each other in a cycle: base/, upper/")),
        "{problems:?}"
    );
}

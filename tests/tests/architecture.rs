//! The architecture, checked on the sources:
//!
//! - within each crate, the imports between files form no circle: a file that uses another is
//!   never used by it, directly or through others (`mod` declarations are not uses; a parent
//!   module that re-exports a child's item is a use of the child);
//! - the broker library depends on neither the client library nor the command line's crates,
//!   and the state machine on nothing that does IO.
//!
//! A use is any `use` item and any path of two or more segments that starts with `crate`,
//! `super`, `self` or a child module's name, outside `#[cfg(test)]` items and test-only modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

type ModulePath = Vec<String>;

/// Each crate whose files are checked, by its source directory.
const CRATES: [&str; 6] =
    ["broker/src", "broker/machine/src", "broker/chorus/src", "consumers/src", "protocol/src", "tests/src"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

/// A crate's modules, each with its file and whether only tests compile it.
fn modules(src: &Path) -> BTreeMap<ModulePath, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a source directory") {
            let path = entry.expect("a directory entry").path();
            let relative = path.strip_prefix(src).expect("under src");
            if path.is_dir() {
                // Binaries are crates of their own.
                if relative != Path::new("bin") {
                    pending.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs")
                || relative == Path::new("main.rs") && src.join("lib.rs").exists()
            {
                continue;
            }
            let mut module: ModulePath =
                relative.with_extension("").iter().map(|part| part.to_string_lossy().into_owned()).collect();
            if matches!(module.last().map(String::as_str), Some("lib" | "main" | "mod")) {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg") && attr.parse_args::<syn::Meta>().is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// The paths one file uses, and the child modules it declares for tests only.
#[derive(Default)]
struct Uses {
    paths: Vec<Vec<String>>,
    test_only_children: Vec<String>,
}

impl<'ast> Visit<'ast> for Uses {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if is_test_only(attrs) {
            if let syn::Item::Mod(module) = item {
                self.test_only_children.push(module.ident.to_string());
            }
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        flatten(&item.tree, &mut Vec::new(), &mut self.paths);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() >= 2 {
            self.paths.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }
}

/// Every path a `use` tree names.
fn flatten(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            flatten(&path.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(name) => out.push([prefix.as_slice(), &[name.ident.to_string()]].concat()),
        syn::UseTree::Rename(rename) => out.push([prefix.as_slice(), &[rename.ident.to_string()]].concat()),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(group) => group.items.iter().for_each(|item| flatten(item, prefix, out)),
    }
}

/// The module a path used in `module` names, if it is one of the crate's: the longest prefix of
/// the resolved path that is a module file.
fn target(module: &[String], path: &[String], known: &BTreeMap<ModulePath, PathBuf>) -> Option<ModulePath> {
    let mut resolved: ModulePath = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => module.to_vec(),
        Some("super") => module[..module.len().saturating_sub(1)].to_vec(),
        Some(child) if known.contains_key(&[module, &[child.to_owned()]].concat()) => {
            let mut resolved = module.to_vec();
            resolved.push(child.to_owned());
            return longest_known(resolved.into_iter().chain(path[1..].iter().cloned()).collect(), known);
        }
        _ => return None,
    };
    let mut rest = &path[1..];
    while rest.first().is_some_and(|s| s == "super") {
        resolved.pop();
        rest = &rest[1..];
    }
    resolved.extend(rest.iter().cloned());
    longest_known(resolved, known)
}

fn longest_known(mut path: ModulePath, known: &BTreeMap<ModulePath, PathBuf>) -> Option<ModulePath> {
    loop {
        if known.contains_key(&path) {
            return Some(path);
        }
        path.pop()?;
    }
}

/// Which module uses which, among a crate's files outside test-only modules.
fn import_graph(src: &Path) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let known = modules(src);
    let mut uses = BTreeMap::new();
    for (module, file) in &known {
        let text = std::fs::read_to_string(file).expect("read a source file");
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut found = Uses::default();
        found.visit_file(&parsed);
        uses.insert(module.clone(), found);
    }
    let mut test_only: BTreeSet<ModulePath> = BTreeSet::new();
    for (module, found) in &uses {
        for child in &found.test_only_children {
            test_only.insert([module.as_slice(), std::slice::from_ref(child)].concat());
        }
    }
    let in_tests = |module: &ModulePath| test_only.iter().any(|t| module.starts_with(t));
    let mut graph = BTreeMap::new();
    for (module, found) in &uses {
        if in_tests(module) {
            continue;
        }
        let targets = found
            .paths
            .iter()
            .filter_map(|path| target(module, path, &known))
            .filter(|t| t != module && !in_tests(t))
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The circles of a graph: its strongly connected components of more than one module.
fn circles(graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<Vec<ModulePath>> {
    // Kosaraju: order by finish time, then collect components on the reversed graph.
    fn finish(
        node: &ModulePath,
        graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        seen: &mut BTreeSet<ModulePath>,
        order: &mut Vec<ModulePath>,
    ) {
        if !seen.insert(node.clone()) {
            return;
        }
        for next in graph.get(node).into_iter().flatten() {
            finish(next, graph, seen, order);
        }
        order.push(node.clone());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for node in graph.keys() {
        finish(node, graph, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (from, targets) in graph {
        for to in targets {
            reversed.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut found = Vec::new();
    for node in order.iter().rev() {
        let mut component = Vec::new();
        finish(node, &reversed, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            found.push(component);
        }
    }
    found
}

fn show(module: &ModulePath) -> String {
    if module.is_empty() { "<crate root>".into() } else { module.join("::") }
}

#[test]
fn no_file_imports_in_a_circle() {
    let mut report = Vec::new();
    for src in CRATES {
        let graph = import_graph(&workspace().join(src));
        assert!(graph.len() > 3, "{src}: found its modules");
        for circle in circles(&graph) {
            let lines: Vec<String> = circle
                .iter()
                .map(|module| {
                    let inside: Vec<String> = graph[module].iter().filter(|t| circle.contains(t)).map(show).collect();
                    format!("    {} -> {}", show(module), inside.join(", "))
                })
                .collect();
            report.push(format!("{src}: a circle of {} files\n{}", circle.len(), lines.join("\n")));
        }
    }
    assert!(report.is_empty(), "imports must run one way:\n{}", report.join("\n"));
}

#[test]
fn the_checker_finds_a_circle() {
    let module = |name: &str| vec![name.to_owned()];
    let graph = BTreeMap::from([
        (module("a"), BTreeSet::from([module("b")])),
        (module("b"), BTreeSet::from([module("c")])),
        (module("c"), BTreeSet::from([module("a")])),
        (module("d"), BTreeSet::from([module("a")])),
    ]);
    assert_eq!(circles(&graph), vec![vec![module("a"), module("b"), module("c")]]);
    let known = BTreeMap::from([
        (vec![], PathBuf::new()),
        (module("server"), PathBuf::new()),
        (vec!["server".into(), "cmd".into()], PathBuf::new()),
    ]);
    let from_cmd = ["server".to_owned(), "cmd".to_owned()];
    let path = |text: &str| text.split("::").map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(target(&from_cmd, &path("super::Server"), &known), Some(module("server")));
    assert_eq!(target(&module("server"), &path("cmd::Serve"), &known), Some(from_cmd.to_vec()));
    assert_eq!(target(&from_cmd, &path("crate::Broker"), &known), Some(vec![]));
    assert_eq!(target(&from_cmd, &path("tokio::spawn"), &known), None);
}

/// The `[dependencies]` a manifest names.
fn dependencies(manifest: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace().join(manifest)).expect("read a manifest");
    let section = text.split("\n[dependencies]\n").nth(1).expect("a [dependencies] section");
    let section = section.split("\n[").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|line| line.split(['.', '=', ' ']).next())
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_broker_and_the_machine_depend_only_on_what_they_need() {
    let broker = dependencies("broker/Cargo.toml");
    assert!(broker.contains("openraft") && broker.contains("chorus-machine"), "{broker:?}");
    for client_side in ["chorus-consumers", "chorus", "clap", "async-nats", "hdrhistogram", "anyhow", "serde_json"] {
        assert!(!broker.contains(client_side), "the broker library depends on {client_side}");
    }
    let machine = dependencies("broker/machine/Cargo.toml");
    let pure: BTreeSet<String> = ["bytes", "postcard", "serde", "thiserror"].map(str::to_owned).into();
    assert!(machine.is_subset(&pure), "the state machine depends on {:?}", machine.difference(&pure));
}

//! The layering of DESIGN.md and ARCHITECTURE.md, checked on the source:
//! `wire` imports nothing from the rest of the crate, `transport` nothing
//! from `quant`, `send` and `recv` not each other, and the top-level
//! modules form no import cycle. Paths in comments (doc links) do not count.
//! And the library, as `cargo add tensorwire` brings it, pulls none of the
//! command-line tool's dependencies (those live in `cli/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`wire`, `recv`, ...).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("component").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file refers to through `crate::NAME`.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        // Unit tests sit at the bottom of a file (STYLE.md §8) and may
        // build their inputs with any module.
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            // `crate::Error` and other items of lib.rs are the `error` module's.
            if name.is_empty() {
                continue;
            }
            let module = if name.chars().next().is_some_and(char::is_uppercase) { "error".to_string() } else { name };
            out.insert(module);
        }
        // `use crate::{a, b}` groups.
        if let Some(group) = code.strip_prefix("use crate::{") {
            for part in group.split([',', '}', ';']) {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.insert(if name.chars().next().is_some_and(char::is_uppercase) { "error".into() } else { name });
                }
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        // lib.rs declares the modules; fuzz.rs is a test-only bridge into all of them.
        if module == "lib" || module == "fuzz" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        let refs = references(&text);
        let entry = edges.entry(module.clone()).or_default();
        entry.extend(refs.into_iter().filter(|r| *r != module));
    }
    edges
}

#[test]
fn wire_imports_nothing_above_it() {
    let g = graph();
    assert_eq!(g.get("wire").cloned().unwrap_or_default(), BTreeSet::new(), "src/wire must stand alone");
}

#[test]
fn transport_does_not_import_quant() {
    assert!(!graph().get("transport").is_some_and(|r| r.contains("quant")), "transport applies no quantization");
}

#[test]
fn send_and_recv_do_not_import_each_other() {
    let g = graph();
    assert!(!g.get("send").is_some_and(|r| r.contains("recv")), "send imports recv");
    assert!(!g.get("recv").is_some_and(|r| r.contains("send")), "recv imports send");
}

/// A cycle in `g`, as the path that closes it, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Depth-first search for a back edge.
    fn visit<'a>(
        n: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(1) => {
                let at = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(n, 1);
        path.push(n);
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(n, g, &mut state, &mut path) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_import_cycle_between_modules() {
    if let Some(cycle) = find_cycle(&graph()) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

/// The code of a file before its unit tests, without comment lines.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if !code.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Which of `files` (path relative to `src/wire`, text) refers to which,
/// through `super::NAME` or `crate::wire::NAME` paths and `use` groups:
/// NAME is resolved to the file of the module of that name, or to the file
/// that defines an item of that name at its top level. `mod.rs` of `wire`
/// itself only declares and re-exports, and is left out (as `lib.rs` is
/// above).
fn wire_file_graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    // Module names (`meta`, `frame`, `common`...) and top-level items.
    let mut owner: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut claim = |name: String, file: &str| {
        owner.entry(name).and_modify(|o| *o = None).or_insert_with(|| Some(file.to_string()));
    };
    for (file, text) in files {
        let stem = file.trim_end_matches(".rs").trim_end_matches("/mod");
        claim(stem.rsplit('/').next().unwrap_or(stem).to_string(), file);
        for line in code_of(text).lines() {
            let rest = ["pub ", "pub(crate) ", "pub(super) "].iter().find_map(|p| line.strip_prefix(p));
            let Some(rest) = rest else { continue };
            for kw in ["struct ", "enum ", "fn ", "const ", "type ", "trait ", "static "] {
                if let Some(name) = rest.strip_prefix(kw) {
                    claim(ident(name), file);
                }
            }
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in files {
        let code = code_of(text);
        let mut names = BTreeSet::new();
        for prefix in ["super::", "crate::wire::"] {
            let mut rest = code.as_str();
            while let Some(at) = rest.find(prefix) {
                rest = &rest[at + prefix.len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    // `use super::{a, b::C, d}`: every name of the group.
                    let end = group.find('}').unwrap_or(group.len());
                    for part in group[..end].split(',') {
                        for seg in part.split("::") {
                            names.insert(ident(seg.trim()));
                        }
                    }
                } else {
                    // `super::a::B`: each segment of the path.
                    let path: String =
                        rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
                    for seg in path.split("::") {
                        names.insert(ident(seg));
                    }
                }
            }
        }
        let entry = edges.entry(file.clone()).or_default();
        // A `dir/mod.rs` uses the children it declares (`mod chunk;`).
        if let Some(dir) = file.strip_suffix("mod.rs") {
            for line in code.lines() {
                let decl = line.trim_start().trim_start_matches("pub ").strip_prefix("mod ");
                if let Some(child) = decl.map(ident).map(|c| format!("{dir}{c}.rs")) {
                    if files.iter().any(|(f, _)| *f == child) {
                        entry.insert(child);
                    }
                }
            }
        }
        for name in names {
            if let Some(Some(target)) = owner.get(&name) {
                if target != file {
                    entry.insert(target.clone());
                }
            }
        }
    }
    edges
}

#[test]
fn no_import_cycle_between_wire_files() {
    // As h2 keeps src/frame/: one file per frame kind, and the files of
    // `wire` (frame/, meta.rs, the decoder...) import one another one way.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join("wire");
    let mut paths = Vec::new();
    sources(&root, &mut paths);
    let mut files = Vec::new();
    for path in paths {
        let rel = path.strip_prefix(&root).expect("under wire").to_string_lossy().replace('\\', "/");
        // mod.rs declares and re-exports; test_util.rs is a test-only helper.
        if rel == "mod.rs" || rel == "test_util.rs" {
            continue;
        }
        files.push((rel, std::fs::read_to_string(&path).expect("read")));
    }
    assert!(files.iter().any(|(f, _)| f == "frame/chunk.rs"), "wire/frame/ has one file per frame kind");
    let g = wire_file_graph(&files);
    if let Some(cycle) = find_cycle(&g) {
        panic!("import cycle between the files of src/wire: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_wire_checker_sees_a_circle() {
    // The check must be able to fail: frame.rs and meta.rs importing each
    // other (the IndexEntry circle this layout broke) is seen.
    let files = [
        ("frame.rs".to_string(), "use super::meta::{self, IndexJson};\npub struct IndexEntry;\n".to_string()),
        ("meta.rs".to_string(), "pub(crate) struct IndexJson;\nfn f(e: &super::IndexEntry) {}\n".to_string()),
        ("crc.rs".to_string(), "// super::frame in a comment\npub fn checksum() {}\n".to_string()),
        ("f/mod.rs".to_string(), "mod chunk;\npub use chunk::Chunk;\npub enum Frame {}\n".to_string()),
        ("f/chunk.rs".to_string(), "pub struct Chunk;\nfn g(_: super::Frame) {}\n".to_string()),
    ];
    let g = wire_file_graph(&files);
    assert_eq!(g["crc.rs"], BTreeSet::new());
    // A child that uses its parent's items closes a circle too.
    assert!(g["f/mod.rs"].contains("f/chunk.rs") && g["f/chunk.rs"].contains("f/mod.rs"), "{g:?}");
    assert!(g["frame.rs"].contains("meta.rs") && g["meta.rs"].contains("frame.rs"), "{g:?}");
    assert!(find_cycle(&g).is_some(), "{g:?}");
}

#[test]
fn the_checker_sees_imports() {
    // The check must be able to fail: a file that imports quant is seen.
    let refs = references(
        "use crate::quant::Scheme;\nuse crate::{recv, send::FileStreamer};\n// crate::transport in a comment\n",
    );
    assert_eq!(refs.into_iter().collect::<Vec<_>>(), ["quant", "recv", "send"]);
}

/// What the `tensorwire` binary needs and a library user must not get.
const CLI_ONLY: [&str; 4] = ["clap", "indicatif", "mimalloc", "tracing-subscriber"];

/// The CLI-only crates among the lines of `cargo tree --prefix none`
/// (`NAME vVERSION ...`).
fn cli_crates_in(tree: &str) -> BTreeSet<String> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| CLI_ONLY.contains(name))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_library_pulls_no_cli_dependencies() {
    // The library with its default features, normal dependencies only: what
    // `cargo add tensorwire` brings (README: the CLI is the `cli/` crate).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = std::process::Command::new(&cargo)
        .args(["tree", "--offline", "-e", "normal", "-p", "tensorwire", "--prefix", "none", "--manifest-path"])
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("run {cargo} tree: {e}"));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(tree.lines().next().is_some_and(|l| l.starts_with("tensorwire v")), "unexpected cargo tree output: {tree}");
    assert_eq!(cli_crates_in(&tree), BTreeSet::new(), "the library's default dependencies include CLI crates");
}

#[test]
fn the_dependency_check_sees_cli_crates() {
    // The check must be able to fail: a tree that holds clap is seen.
    let tree = "tensorwire v0.1.0 (/src)\nbytes v1.9.0\nclap v4.5.0\nclap_builder v4.5.0\nmimalloc v0.1.4\n";
    assert_eq!(cli_crates_in(tree).into_iter().collect::<Vec<_>>(), ["clap", "mimalloc"]);
}

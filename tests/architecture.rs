//! The layers of docs/ARCHITECTURE.md, enforced: every `crate::` path in every file under
//! `src/` is checked against the modules its own module may use. A new dependency that
//! points up (or sideways, between modules that must not know each other) fails here, with
//! the file, the line and the rule it breaks.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module of the library and the modules it may use (besides itself).
/// Lowest first; docs/ARCHITECTURE.md says why each line is what it is.
const LAYERS: &[(&str, &[&str])] = &[
    // Counters below a ceiling, time, change numbers.
    ("clock", &[]),
    ("commits", &[]),
    ("sequence", &[]),
    // TLS material: PEM files read into rustls types, the crypto provider.
    ("tls", &[]),
    // Domain state machines: pure, they know no wire, no disk and no thread.
    ("lease", &["sequence", "clock", "commits"]),
    ("stream", &["sequence", "clock", "commits"]),
    // Pure codecs: they know sequence ids and names, nothing of the domain or the disk.
    ("protocol", &["sequence"]),
    // The shared records the domain is made of.
    (
        "state",
        &["lease", "stream", "sequence", "clock", "commits"],
    ),
    // The disk.
    (
        "store",
        &["state", "lease", "stream", "sequence", "clock", "commits"],
    ),
    // Sessions, the executor (domain outcomes → wire replies), the stream hub.
    (
        "service",
        &[
            "store", "state", "protocol", "lease", "stream", "sequence", "clock", "commits",
        ],
    ),
    // I/O backends: bytes in, bytes out.
    (
        "server",
        &[
            "service", "store", "state", "protocol", "lease", "stream", "sequence", "clock",
            "commits", "tls",
        ],
    ),
    // Clients of the wire protocols (they share the codecs, not the server).
    ("client", &["protocol", "sequence", "tls"]),
    ("stream_client", &["protocol", "clock"]),
    // Cluster mode: the election and the fenced store (ceilings, lease and stream records)
    // the persister writes to.
    (
        "cluster",
        &[
            "store", "state", "lease", "stream", "sequence", "clock", "commits",
        ],
    ),
    // The command line: it builds every layer's settings.
    (
        "config",
        &[
            "cluster", "server", "service", "store", "state", "protocol", "lease", "stream",
            "sequence", "clock", "commits",
        ],
    ),
];

/// Imports that break the layers today, as `(file, module used)`. This list may only
/// shrink: fix the import rather than add a line.
const KNOWN_EXCEPTIONS: &[(&str, &str)] = &[];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to; None for the binaries' roots
/// (`main.rs`, `bin/`) and `lib.rs`, which sit above every layer.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "main.rs" | "lib.rs" | "bin" => None,
        file if file.ends_with(".rs") => Some(file.trim_end_matches(".rs").to_string()),
        dir => Some(dir.to_string()),
    }
}

/// Strips comments (line and block) so that a path in a doc comment is not an import.
fn without_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let bytes = source.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            out.push(c as char);
            if c == b'\\' && i + 1 < bytes.len() {
                out.push(bytes[i + 1] as char);
                i += 2;
                continue;
            }
            in_string = c != b'"';
            i += 1;
        } else if c == b'\'' {
            // A char literal ('"', '\'', '\n') is skipped whole; a lifetime is kept.
            let literal_len = match bytes.get(i + 1) {
                Some(b'\\') => bytes[i + 3..]
                    .iter()
                    .position(|&b| b == b'\'')
                    .map(|p| p + 4),
                Some(_) if bytes.get(i + 2) == Some(&b'\'') => Some(3),
                _ => None,
            };
            match literal_len {
                Some(len) => i += len,
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else if c == b'"' {
            in_string = true;
            out.push('"');
            i += 1;
        } else if bytes[i..].starts_with(b"//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i..].starts_with(b"/*") {
            let end = source[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |e| i + 2 + e + 2);
            out.extend(source[i..end].chars().filter(|&c| c == '\n'));
            i = end;
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules named by `crate::x` and `crate::{x, y::z}` paths, with line numbers.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (index, line_start) in source.match_indices("crate::") {
        if source[..index].chars().next_back().is_some_and(is_ident) {
            continue; // `seqd_crate::`, not `crate::`
        }
        let line = source[..index].matches('\n').count() + 1;
        let rest = &source[index + line_start.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at depth-0 commas.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push((line, leading_ident(&item)));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.push((line, leading_ident(&item)));
        } else {
            found.push((line, leading_ident(rest)));
        }
    }
    found.retain(|(_, module)| !module.is_empty());
    found
}

fn leading_ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|&c| is_ident(c))
        .collect()
}

/// Every rule broken under `root`, as `file:line: message`.
fn violations(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    let known: BTreeSet<&str> = LAYERS.iter().map(|(m, _)| *m).collect();
    let mut broken = Vec::new();
    for file in files {
        let relative = file.strip_prefix(root).unwrap_or(&file).to_path_buf();
        let Some(module) = module_of(&relative) else {
            continue;
        };
        let shown = format!("src/{}", relative.display());
        let Some((_, allowed)) = LAYERS.iter().find(|(m, _)| *m == module) else {
            broken.push(format!(
                "{shown}: module `{module}` has no line in LAYERS: give it its place"
            ));
            continue;
        };
        let source = fs::read_to_string(&file).unwrap_or_default();
        for (line, used) in crate_paths(&without_comments(&source)) {
            if used == module || allowed.contains(&used.as_str()) {
                continue;
            }
            if KNOWN_EXCEPTIONS.contains(&(shown.as_str(), used.as_str())) {
                continue;
            }
            let why = if known.contains(used.as_str()) {
                format!("`{module}` may use only {allowed:?}")
            } else {
                "not a module of LAYERS".to_string()
            };
            broken.push(format!("{shown}:{line}: uses crate::{used}: {why}"));
        }
    }
    broken
}

#[test]
fn every_import_points_down_the_layers() {
    let broken = violations(&src_dir());
    assert!(
        broken.is_empty(),
        "imports against docs/ARCHITECTURE.md's layers:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn known_exceptions_are_still_needed() {
    // An exception whose import is gone must leave the list (it may only shrink).
    let src = src_dir();
    for (file, used) in KNOWN_EXCEPTIONS {
        let source = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
            .unwrap_or_default();
        assert!(
            crate_paths(&without_comments(&source))
                .iter()
                .any(|(_, m)| m == used),
            "{file} no longer uses crate::{used}: remove it from KNOWN_EXCEPTIONS"
        );
    }
    assert!(src.is_dir());
}

#[test]
fn the_parser_sees_plain_grouped_and_nested_paths_but_not_comments() {
    let source = "use crate::lease::Table;\n\
                  use crate::{protocol::{self, Reply}, store};\n\
                  // crate::server in a comment\n\
                  /* crate::config */ let x = crate::clock::unix_ms();\n\
                  let s = \"// not a comment\"; crate::state::X;\n\
                  let q = b'\"'; fn f<'a>() {} crate::sequence::Y;\n";
    let found: Vec<(usize, String)> = crate_paths(&without_comments(source));
    let names: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        names,
        ["lease", "protocol", "store", "clock", "state", "sequence"],
        "{found:?}"
    );
    assert_eq!(found[3].0, 4, "line numbers survive removed comments");
}

#[test]
fn a_lower_layer_importing_a_higher_one_is_reported() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let lease = dir.path().join("lease");
    fs::create_dir(&lease).unwrap_or_else(|e| panic!("{e}"));
    fs::write(
        lease.join("table.rs"),
        "use crate::sequence::Sequence;\nuse crate::protocol::Problem;\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    fs::write(dir.path().join("widgets.rs"), "").unwrap_or_else(|e| panic!("{e}"));
    let broken = violations(dir.path());
    assert_eq!(broken.len(), 2, "{broken:?}");
    assert!(broken[0].starts_with("src/lease/table.rs:2: uses crate::protocol"));
    assert!(broken[1].contains("`widgets` has no line in LAYERS"));
}

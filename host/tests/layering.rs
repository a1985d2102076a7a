//! The layering of `host/src`, checked from the code's own imports: a module may use modules of its own
//! layer or below, never above, so the picture in `lib.rs` stays true. Test modules (everything after a
//! `#[cfg(test)]` at the start of a line) and the test-support module `testing` are left out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first; every top-level module of `host/src` must be in one.
const LAYERS: &[&[&str]] = &[
    &["disconnect", "glob", "sync", "logging", "metrics"],
    &["engine"],
    &["errors", "channel", "policy", "limits", "plugin"],
    &["protocol"],
    &["outbound", "webhooks"],
    &["config", "hub"],
    &["control", "pusher_app", "estate"],
    &["node"],
    &["session"],
    // Other entrances to the node, beside the sessions.
    &["api", "pusher_api", "queue", "nodes", "counts", "admin"],
    &["transport"],
    // Composition: what starts and wires everything.
    &["server", "reload", "main", "lib"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read host/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::…`, outside comments and test modules.
fn used_modules(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for name in group[..end].split(',') {
                    let name = name.trim().split("::").next().unwrap_or_default();
                    if !name.is_empty() {
                        used.insert(name.to_owned());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    used.insert(name);
                }
            }
        }
    }
    used
}

#[test]
fn no_module_uses_a_higher_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a module")
            .trim_end_matches(".rs");
        if module == "testing" || module.ends_with(".toml") {
            continue;
        }
        let Some(own) = layer(module) else {
            violations.push(format!(
                "{}: module `{module}` is in no layer",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for used in used_modules(&text) {
            if used == module || used == "testing" {
                continue;
            }
            match layer(&used) {
                Some(theirs) if theirs <= own => {}
                Some(_) => violations.push(format!(
                    "{}: `{module}` uses `{used}`, a higher layer",
                    relative.display()
                )),
                None => violations.push(format!(
                    "{}: uses `{used}`, which is in no layer",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn imports_are_read_from_paths_and_groups() {
    let used = used_modules(
        "use crate::{api, transport::tls};\nlet x = crate::node::hostname(); // crate::queue\n#[cfg(test)]\nuse crate::server;",
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["api", "node", "transport"]
    );
}

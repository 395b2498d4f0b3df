//! The crate graph, checked: every dependency between Berth's own crates
//! points the way ARCHITECTURE.md's table says, as rust-analyzer's tidy
//! tests check theirs. A new crate, or a new arrow, starts by changing the
//! table here and in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each workspace crate and the workspace crates it may depend on (normal,
/// dev and build dependencies alike).
const ALLOWED: &[(&str, &[&str])] = &[
    ("core-types", &[]),
    ("telemetry", &[]),
    ("domain", &["core-types"]),
    ("journal", &["core-types", "domain"]),
    ("github", &["core-types", "telemetry"]),
    ("fake-github", &["core-types"]),
    ("dispatcher", &["core-types"]),
    ("kubernetes", &["core-types", "dispatcher"]),
    ("runner", &["core-types", "domain", "journal", "github", "dispatcher", "telemetry"]),
    (
        "api",
        &[
            "core-types",
            "domain",
            "journal",
            "github",
            "fake-github",
            "dispatcher",
            "kubernetes",
            "runner",
            "telemetry",
        ],
    ),
    ("worker", &["core-types"]),
    ("stub", &[]),
    // The end-to-end tests and benchmarks may use anything.
    (
        "tests",
        &[
            "core-types",
            "domain",
            "journal",
            "github",
            "fake-github",
            "dispatcher",
            "kubernetes",
            "runner",
            "telemetry",
            "api",
            "worker",
        ],
    ),
];

/// `cargo metadata` of the workspace, without its dependencies.
fn metadata() -> Value {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

fn workspace_graph() -> BTreeMap<String, BTreeSet<String>> {
    let metadata = metadata();
    let packages = metadata["packages"].as_array().expect("packages");
    let ours: BTreeSet<String> =
        packages.iter().filter_map(|package| package["name"].as_str().map(str::to_owned)).collect();
    packages
        .iter()
        .map(|package| {
            let name = package["name"].as_str().expect("name").to_owned();
            let deps = package["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter_map(|dep| dep["name"].as_str())
                .filter(|dep| ours.contains(*dep))
                .map(str::to_owned)
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn every_arrow_between_our_crates_is_in_the_table() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(name, deps)| (*name, deps.iter().copied().collect())).collect();
    let mut wrong = Vec::new();
    for (name, deps) in workspace_graph() {
        let Some(may) = allowed.get(name.as_str()) else {
            wrong.push(format!("crate `{name}` is not in the table"));
            continue;
        };
        for dep in deps {
            if !may.contains(dep.as_str()) {
                wrong.push(format!("`{name}` depends on `{dep}`, which the table does not allow"));
            }
        }
    }
    assert!(wrong.is_empty(), "crate graph outside ARCHITECTURE.md's table:\n{}", wrong.join("\n"));
}

#[test]
fn the_table_names_only_crates_that_exist() {
    let graph = workspace_graph();
    for (name, _) in ALLOWED {
        assert!(graph.contains_key(*name), "the table names `{name}`, which is not a workspace crate");
    }
}

#[test]
fn only_the_journal_names_redb_the_dispatcher_bollard_and_github_octocrab() {
    let metadata = metadata();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name");
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep = dep["name"].as_str().expect("dependency name");
            match dep {
                "redb" => assert_eq!(name, "journal", "only `journal` may name redb"),
                "bollard" => assert!(
                    ["dispatcher", "tests"].contains(&name),
                    "only `dispatcher` (and the benchmarks' raw Engine API baseline) may name bollard, not `{name}`"
                ),
                "octocrab" => assert_eq!(name, "github", "only `github` may name octocrab"),
                "axum" => assert!(
                    ["api", "fake-github", "tests"].contains(&name),
                    "`{name}` depends on axum: only the HTTP side may"
                ),
                _ => {}
            }
        }
    }
}

/// The outside crates `core-types` and `domain` may use at run time: data,
/// errors, hashing and the logging facade. No runtime, no I/O, no HTTP.
const PURE: &[(&str, &[&str])] = &[
    ("core-types", &["serde", "serde_json", "thiserror"]),
    (
        "domain",
        &["core-types", "hex", "hmac", "serde", "serde_json", "sha2", "subtle", "thiserror", "tracing"],
    ),
];

#[test]
fn core_types_and_domain_name_only_pure_crates_outside_their_tests() {
    let metadata = metadata();
    for (crate_name, allowed) in PURE {
        let package = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|package| package["name"] == *crate_name)
            .expect("the crate is in the workspace");
        let named: BTreeSet<&str> = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            // `kind` is null for a normal dependency ("dev" and "build" otherwise).
            .filter(|dep| dep["kind"].is_null())
            .filter_map(|dep| dep["name"].as_str())
            .collect();
        let extra: Vec<&&str> = named.iter().filter(|dep| !allowed.contains(dep)).collect();
        assert!(
            extra.is_empty(),
            "`{crate_name}` must stay pure (ARCHITECTURE.md), but depends on {extra:?}; \
             move the I/O to a crate above it, or argue the change in an ADR and here"
        );
    }
}

/// A `BERTH_*` variable is named in code only through `core_types::env_names`,
/// so that renaming one is one edit and the README's table check sees them
/// all. Tests may spell names out (they pin what users type); `berth-stub`,
/// which depends on nothing of ours, reads `BERTH_TASK_ID` by name.
#[test]
fn berth_variables_are_spelled_only_in_env_names() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut files = Vec::new();
    let mut dirs = vec![crates.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the crates directory reads") {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            if path.is_dir() {
                // Tests, and the stub with its one name.
                if !matches!(name, "tests" | "stub" | "target") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|ext| ext == "rs")
                && name != "tests.rs"
                && name != "env_names.rs"
            {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 50, "the walk found only {} source files under {}", files.len(), crates.display());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("a source file reads");
        for (number, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("\"BERTH_") {
                let literal = &rest[at + 1..];
                let end = literal.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
                if end.is_some_and(|end| literal[end..].starts_with('"')) {
                    found.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                }
                rest = &literal[1..];
            }
        }
    }
    assert!(found.is_empty(), "BERTH_* names spelled outside env_names:\n{}", found.join("\n"));
}

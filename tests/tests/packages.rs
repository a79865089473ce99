//! Every crate a release publishes carries what crates.io and docs.rs show
//! of it: a description, the licence, the minimum Rust version, a readme,
//! keywords and categories, and docs.rs settings that document every feature
//! with `--cfg docsrs` (so `doc_cfg` marks the items a feature brings). The
//! crates with `publish = false` (examples, tests, benches) are left out.
//!
//! `scripts/release-check.sh` checks that the published crates package and
//! build, and the order they are published in; it builds the docs.rs form with
//! flags of its own, so a crate without the settings would pass it and then be
//! documented on docs.rs without its features.

use std::process::Command;

use serde_json::Value;

/// The workspace's packages, as `cargo metadata --no-deps` describes them.
fn workspace_packages() -> Vec<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");
    metadata["packages"]
        .as_array()
        .expect("a list of packages")
        .clone()
}

/// Whether a package is published: `publish` is null (anywhere) unless
/// `publish = false` made it an empty list.
fn is_published(package: &Value) -> bool {
    !matches!(&package["publish"], Value::Array(registries) if registries.is_empty())
}

/// What is missing from a published package's manifest, one line each.
fn missing(package: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    let text = |field: &str| {
        package[field]
            .as_str()
            .is_some_and(|value| !value.is_empty())
    };
    let listed = |field: &str| {
        package[field]
            .as_array()
            .is_some_and(|list| !list.is_empty())
    };
    for field in ["description", "rust_version", "readme"] {
        if !text(field) {
            missing.push(format!("`{field}`"));
        }
    }
    if package["license"].as_str() != Some("MIT OR Apache-2.0") {
        missing.push("`license = \"MIT OR Apache-2.0\"` (license.workspace)".to_owned());
    }
    for field in ["keywords", "categories"] {
        if !listed(field) {
            missing.push(format!("`{field}`"));
        }
    }
    let docs_rs = &package["metadata"]["docs"]["rs"];
    if docs_rs["all-features"].as_bool() != Some(true) {
        missing.push("`all-features = true` under [package.metadata.docs.rs]".to_owned());
    }
    let rustdoc_args: Vec<&str> = docs_rs["rustdoc-args"]
        .as_array()
        .map(|args| args.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !rustdoc_args
        .windows(2)
        .any(|pair| pair == ["--cfg", "docsrs"])
    {
        missing.push(
            "`rustdoc-args = [\"--cfg\", \"docsrs\"]` under [package.metadata.docs.rs]".to_owned(),
        );
    }
    missing
}

#[test]
fn every_published_crate_has_its_crates_io_and_docs_rs_metadata() {
    let packages = workspace_packages();
    let published: Vec<&Value> = packages.iter().filter(|p| is_published(p)).collect();
    let names: Vec<&str> = published
        .iter()
        .filter_map(|package| package["name"].as_str())
        .collect();
    // The four libraries; a new one is welcome, but these must not drop out.
    for library in [
        "redis-cache-sync",
        "redis-cache-core",
        "redis-cache-macros",
        "tower-redis-rate-limit",
    ] {
        assert!(
            names.contains(&library),
            "{library} is not a published package of the workspace: {names:?}"
        );
    }
    let gaps: Vec<String> = published
        .iter()
        .filter_map(|package| {
            let missing = missing(package);
            (!missing.is_empty()).then(|| {
                format!(
                    "{}: {}",
                    package["name"].as_str().unwrap_or("?"),
                    missing.join(", ")
                )
            })
        })
        .collect();
    assert!(
        gaps.is_empty(),
        "published crates without what crates.io and docs.rs show:\n{}",
        gaps.join("\n")
    );
}

#[test]
fn a_manifest_without_docs_rs_settings_is_reported() {
    let bare = serde_json::json!({
        "name": "bare",
        "publish": null,
        "description": "a crate",
        "rust_version": "1.88",
        "readme": "README.md",
        "license": "MIT OR Apache-2.0",
        "keywords": ["x"],
        "categories": ["y"],
        "metadata": null,
    });
    assert!(is_published(&bare));
    let missing = missing(&bare);
    assert_eq!(missing.len(), 2, "{missing:?}");
    assert!(missing.iter().all(|line| line.contains("docs.rs")));
    assert!(!is_published(&serde_json::json!({ "publish": [] })));
}

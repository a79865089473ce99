//! ARCHITECTURE.md stays true to the tree: every path it names exists, and
//! its code map names every crate of the workspace.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md at the root")
}

/// The spans between backticks that name a path of the tree, from the root:
/// a folder (`dir/`) or a file with an extension.
fn named_paths(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            !span.contains([' ', ':', '(', '#', '<'])
                && (span.ends_with('/')
                    || [".rs", ".md", ".lua", ".sh", ".toml", ".py", ".json"]
                        .iter()
                        .any(|ext| span.ends_with(ext)))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_path_architecture_md_names_exists() {
    let text = architecture();
    let paths = named_paths(&text);
    assert!(paths.len() > 30, "too few paths found: {paths:?}");
    let root = root();
    let missing: Vec<&String> = paths
        .iter()
        .filter(|path| !root.join(path).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn the_code_map_names_every_crate_of_the_workspace() {
    let text = architecture();
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("root Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|line| line.strip_prefix("members = "))
        .expect("a members line");
    let crates: Vec<&str> = members
        .trim_matches(['[', ']'])
        .split(',')
        .map(|name| name.trim().trim_matches('"'))
        .collect();
    assert!(crates.len() >= 6, "{crates:?}");
    for name in crates {
        assert!(
            text.contains(&format!("`{name}/`")),
            "the code map does not name the crate `{name}/`"
        );
    }
}

#[test]
fn a_missing_path_is_found() {
    let paths = named_paths("see `cache-core/src/nowhere.rs` and `Cache::get` and `x y/`");
    assert_eq!(paths, ["cache-core/src/nowhere.rs"]);
    assert!(!root().join(&paths[0]).exists());
}

/// Every `.rs` file under `dir`, with its path from the root.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).expect("a readable source");
                found.push((path, text));
            }
        }
    }
    found
}

#[test]
fn only_the_connection_owner_builds_redis_clients() {
    let owner = root().join("cache-core/src/store/connect.rs");
    let builders = [
        "Client::open(",
        "Client::build_with_tls(",
        "ClusterClientBuilder::new(",
        "ConnectionManagerConfig::new(",
        "arg(\"NODES\")",
    ];
    let mut offenders = Vec::new();
    for crate_src in ["cache-core/src", "rate-limit/src"] {
        for (path, text) in sources(&root().join(crate_src)) {
            if path == owner {
                assert!(builders.iter().all(|b| text.contains(b)), "{path:?}");
                continue;
            }
            for builder in builders.iter().filter(|b| text.contains(*b)) {
                offenders.push(format!("{}: {builder}", path.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "Redis clients built outside store/connect.rs: {offenders:?}"
    );
}

#[test]
fn only_the_store_and_the_config_branch_on_the_in_memory_backend() {
    let allowed = [
        root().join("cache-core/src/store"),
        root().join("cache-core/src/config"),
    ];
    let mut offenders = Vec::new();
    for (path, text) in sources(&root().join("cache-core/src")) {
        if allowed.iter().any(|dir| path.starts_with(dir)) {
            continue;
        }
        // Doc examples may compare a handle's backend; code asks the store.
        let code = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .filter(|line| line.contains("Backend::Memory"));
        for line in code {
            offenders.push(format!("{}: {}", path.display(), line.trim()));
        }
    }
    assert!(
        offenders.is_empty(),
        "Backend::Memory branches outside store/ and config/ (ask the store's Reach): {offenders:?}"
    );
}

/// The rate limiter asks the handle where its store is (`Cache::reach`)
/// and which store it is (`Cache::store_id`, `Cache::stored_key`): no match
/// on `Backend` in it. Its `store/` is left out until its in-memory engine
/// is an `AtomicOp` of cache-core's store (its test helpers still pick the
/// in-memory state by backend).
#[test]
fn the_rate_limiter_asks_the_handle_not_the_backend() {
    let pending = root().join("rate-limit/src/store");
    let mut offenders = Vec::new();
    for (path, text) in sources(&root().join("rate-limit/src")) {
        if path.starts_with(&pending) {
            continue;
        }
        let code = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .filter(|line| line.contains("Backend::") || line.contains(".backend()"));
        for line in code {
            offenders.push(format!("{}: {}", path.display(), line.trim()));
        }
    }
    assert!(
        offenders.is_empty(),
        "the rate limiter matches on the backend (ask Cache::reach or Cache::store_id): {offenders:?}"
    );
}

#[test]
fn the_event_bus_knows_no_backend() {
    // What differs by backend is the store's pub/sub (store/pubsub/).
    let backend_words = ["reach()", "Reach::", "Backend::", "redis::", "shared_state"];
    let mut offenders = Vec::new();
    for (path, text) in sources(&root().join("cache-core/src/events")) {
        let code = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"));
        for line in code {
            if backend_words.iter().any(|word| line.contains(word)) {
                offenders.push(format!("{}: {}", path.display(), line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "the event bus branches on the backend (ask the store's pub/sub): {offenders:?}"
    );
}

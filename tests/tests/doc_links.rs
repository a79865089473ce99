//! Every link of the README, the guide (`docs/`), ARCHITECTURE.md,
//! BENCHMARKS.md, CHANGELOG.md and CONTRIBUTING.md points somewhere: a
//! relative link to a file or folder that exists, and a `#anchor` to a
//! heading of the Markdown file it names, by GitHub's rules for heading
//! anchors. Links in code (fenced blocks, `inline code`) are not links.
//!
//! External links (`http`, `https`, `mailto`) are not fetched: the machines
//! that run the tests have no internet. They are only counted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The workspace's root folder.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The documents whose links are checked: those at the root that exist, and
/// every Markdown file under `docs/`.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = [
        "README.md",
        "ARCHITECTURE.md",
        "BENCHMARKS.md",
        "CHANGELOG.md",
        "CONTRIBUTING.md",
    ]
    .iter()
    .map(|name| root.join(name))
    .filter(|path| path.is_file())
    .collect();
    let mut folders = vec![root.join("docs")];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", folder.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The text of a Markdown document outside code: fenced blocks become empty
/// lines, inline code spans are removed.
fn prose(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut fence: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|&c| c == '`' || c == '~')
            .collect();
        match &fence {
            Some(open) => {
                if marker.len() >= open.len() && marker.starts_with(&open[..1]) {
                    fence = None;
                }
                lines.push(String::new());
            }
            None if marker.len() >= 3
                && (marker.chars().all(|c| c == '`') || marker.chars().all(|c| c == '~')) =>
            {
                fence = Some(marker);
                lines.push(String::new());
            }
            None => lines.push(without_code_spans(line)),
        }
    }
    lines
}

/// `line` without its code spans (a run of n backticks up to the next run of
/// exactly n); an unmatched run stays as text.
fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let mut j = i + run;
        let mut closed = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let other = chars[j..].iter().take_while(|&&c| c == '`').count();
                if other == run {
                    closed = Some(j + other);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match closed {
            Some(end) => {
                out.push(' ');
                i = end;
            }
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// The anchors GitHub gives the headings of a Markdown document: the
/// heading's text, lowercase, without punctuation but `-` and `_`, spaces
/// as `-`; a repeated one gets `-1`, `-2`... Also `<a name>` and `id`
/// attributes written in HTML.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        for attribute in ["name=\"", "id=\""] {
            for (at, _) in line.match_indices(attribute) {
                let rest = &line[at + attribute.len()..];
                if let Some(end) = rest.find('"') {
                    seen.insert(rest[..end].to_string());
                }
            }
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&level) || !line[level..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[level..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// GitHub's anchor of a heading's Markdown text.
fn slug(heading: &str) -> String {
    // The rendered text: a link is its text, emphasis and code marks go.
    let mut text = String::new();
    let mut rest = heading.trim();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match (after.find("]("), after.find(')')) {
            (Some(close), Some(end)) if close < end => {
                text.push_str(&rest[..open]);
                text.push_str(&after[..close]);
                rest = &after[end + 1..];
            }
            _ => {
                text.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.chars()
        .filter(|&c| c != '`' && c != '*')
        .flat_map(char::to_lowercase)
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The link targets of one line of prose: `[text](target)`, `![alt](target)`,
/// `<target>` inside the parentheses, an optional `"title"` after it, and
/// reference definitions `[label]: target`.
fn targets(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(close) = trimmed.find("]:")
    {
        if let Some(target) = trimmed[close + 2..].split_whitespace().next() {
            found.push(target.trim_matches(['<', '>']).to_string());
        }
        return found;
    }
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        // The target ends at the parenthesis that balances the opening one.
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = i;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let inside = after[..end].trim();
        let target = if let Some(stripped) = inside.strip_prefix('<') {
            stripped.split('>').next().unwrap_or("")
        } else {
            inside.split_whitespace().next().unwrap_or("")
        };
        if !target.is_empty() {
            found.push(target.to_string());
        }
        rest = &after[end.min(after.len())..];
    }
    found
}

/// The broken links of the documents, as `file:line: target (why)`, and how
/// many external links were left unchecked.
fn broken_links(root: &Path, documents: &[PathBuf]) -> (Vec<String>, usize) {
    let mut broken = Vec::new();
    let mut external = 0;
    for document in documents {
        let text = std::fs::read_to_string(document)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", document.display()));
        let shown = document.strip_prefix(root).unwrap_or(document).display();
        for (number, line) in prose(&text).iter().enumerate() {
            for target in targets(line) {
                if ["http://", "https://", "mailto:"]
                    .iter()
                    .any(|scheme| target.starts_with(scheme))
                {
                    external += 1;
                    continue;
                }
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    document.clone()
                } else {
                    let folder = document.parent().expect("a document has a folder");
                    folder.join(path.replace("%20", " "))
                };
                let line = number + 1;
                if !file.exists() {
                    broken.push(format!("{shown}:{line}: {target} (no such file)"));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if file.extension().is_none_or(|ext| ext != "md") {
                    continue; // a source file's `#L10`: GitHub's, not checked
                }
                let named = std::fs::read_to_string(&file)
                    .unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
                if !anchors(&named).contains(anchor) {
                    broken.push(format!("{shown}:{line}: {target} (no such heading)"));
                }
            }
        }
    }
    (broken, external)
}

#[test]
fn every_link_of_the_readme_and_the_guide_points_somewhere() {
    let root = root();
    let documents = documents(&root);
    assert!(
        documents
            .iter()
            .any(|path| path.ends_with("docs/README.md")),
        "the guide's index docs/README.md is missing"
    );
    let (broken, external) = broken_links(&root, &documents);
    eprintln!(
        "checked the links of {} documents; {external} external links not fetched (no internet)",
        documents.len()
    );
    assert!(
        broken.is_empty(),
        "links that point nowhere:\n{}",
        broken.join("\n")
    );
}

#[test]
fn a_link_to_a_missing_file_or_heading_is_reported() {
    let folder = std::env::temp_dir().join(format!("doc-links-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("a scratch folder");
    let page = folder.join("page.md");
    std::fs::write(
        &page,
        "# Title\n\n## When Redis fails: `Cache` calls\n\n\
         [ok](#when-redis-fails-cache-calls) [ok](page.md#title) [ok](https://example.com/x)\n\
         [gone](missing.md) [gone](#no-such-heading) `[code](missing.md)`\n\
         ```\n[code](also-missing.md)\n```\n",
    )
    .expect("the scratch page");
    let (broken, external) = broken_links(&folder, std::slice::from_ref(&page));
    std::fs::remove_dir_all(&folder).ok();
    assert_eq!(
        broken,
        [
            "page.md:6: missing.md (no such file)",
            "page.md:6: #no-such-heading (no such heading)"
        ]
    );
    assert_eq!(external, 1);
}

#[test]
fn anchors_follow_githubs_rules() {
    let text = "# Events: typed pub/sub, `cache.events()`\n## Issue 21: the exact path\n\
                ## Soak\n## Soak\n```\n# not a heading\n```\n### [Linked](x.md) *name*\n";
    let found = anchors(text);
    for anchor in [
        "events-typed-pubsub-cacheevents",
        "issue-21-the-exact-path",
        "soak",
        "soak-1",
        "linked-name",
    ] {
        assert!(found.contains(anchor), "{anchor} missing from {found:?}");
    }
    assert!(!found.contains("not-a-heading"));
}

/// Every page of the guide is compiled as a doc test (its line in the
/// `guide` module of `examples/src/lib.rs`, as the README's is) and listed in
/// the guide's index, docs/README.md: a page added without them would have
/// its Rust blocks unchecked, or be found by no reader (CONTRIBUTING.md).
#[test]
fn every_guide_page_is_a_doc_test_and_in_the_index() {
    let root = root();
    let doctests =
        std::fs::read_to_string(root.join("examples/src/lib.rs")).expect("examples/src/lib.rs");
    let index = std::fs::read_to_string(root.join("docs/README.md")).expect("docs/README.md");
    let mut gaps = Vec::new();
    for page in documents(&root) {
        let relative = page
            .strip_prefix(&root)
            .expect("a document under the root")
            .to_string_lossy()
            .replace('\\', "/");
        if relative != "README.md" && !relative.starts_with("docs/") {
            continue;
        }
        if !doctests.contains(&format!("include_str!(\"../../{relative}\")")) {
            gaps.push(format!(
                "{relative}: no `#[doc = include_str!(\"../../{relative}\")]` in examples/src/lib.rs"
            ));
        }
        if let Some(in_docs) = relative.strip_prefix("docs/")
            && in_docs != "README.md"
            && !index.contains(&format!("]({in_docs})"))
        {
            gaps.push(format!(
                "{relative}: no link `]({in_docs})` in docs/README.md"
            ));
        }
    }
    assert!(
        gaps.is_empty(),
        "guide pages left out:\n{}",
        gaps.join("\n")
    );
}

/// The README opens with its two set-up commands (the example service, then
/// the whole test suite), the second is exactly what CI runs (`.ci/run`), and
/// the README stays a five-minute read.
#[test]
fn the_readme_starts_with_the_two_commands_and_ci_runs_its_test_command() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    assert!(
        readme.lines().count() <= 200,
        "README.md has {} lines: move detail to the guide (docs/)",
        readme.lines().count()
    );
    let first_block: Vec<&str> = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a sh block in README.md")
        .lines()
        .collect();
    let before = readme.split("```sh\n").next().unwrap_or("");
    assert!(
        before
            .lines()
            .all(|line| line.is_empty() || line.starts_with("# ")),
        "the README's first block must come right after its title"
    );
    assert_eq!(first_block.len(), 2, "two set-up commands: {first_block:?}");
    assert!(first_block[0].starts_with("cargo run --release -p examples --bin search-service"));
    let test_command = first_block[1]
        .split('#')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines()
            .any(|line| line.trim() == format!("exec {test_command}")),
        ".ci/run does not run the README's test command `{test_command}`"
    );
}

/// CHANGELOG.md keeps Keep a Changelog's form: its title, `## [Unreleased]`
/// first, and under each version only the six standard categories, in
/// order (CONTRIBUTING.md says how an entry is added).
#[test]
fn the_changelog_keeps_the_keep_a_changelog_form() {
    let changelog = std::fs::read_to_string(root().join("CHANGELOG.md")).expect("CHANGELOG.md");
    assert!(changelog.starts_with("# Changelog\n"), "the title first");
    let sections: Vec<&str> = changelog
        .lines()
        .filter(|line| line.starts_with("## "))
        .collect();
    assert_eq!(
        sections.first().copied(),
        Some("## [Unreleased]"),
        "`## [Unreleased]` is the first section"
    );
    const CATEGORIES: [&str; 6] = [
        "Added",
        "Changed",
        "Deprecated",
        "Removed",
        "Fixed",
        "Security",
    ];
    let mut section = "";
    let mut last = None;
    for line in changelog.lines() {
        if line.starts_with("## ") {
            section = line;
            last = None;
        } else if let Some(heading) = line.strip_prefix("### ") {
            let position = CATEGORIES.iter().position(|&category| category == heading);
            assert!(
                position.is_some(),
                "`### {heading}` under `{section}` is not a Keep a Changelog category \
                 ({CATEGORIES:?}): file its bullets under those, with `**{heading}:**` \
                 as their lead-in (CONTRIBUTING.md)"
            );
            assert!(
                position > last,
                "`### {heading}` under `{section}` is out of order or repeated: {CATEGORIES:?}"
            );
            last = position;
        }
    }
}

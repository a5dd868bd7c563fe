//! The docs cannot go stale: every `sluice` command they show must name a subcommand and
//! flags the binary has, and every self-contained config in `docs/` must pass `sluice check`.

use std::path::{Path, PathBuf};

use crate::support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The pages whose commands are checked.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    for extra in [
        "README.md",
        "control/README.md",
        "examples/README.md",
        "filters/README.md",
    ] {
        pages.push(root().join(extra));
    }
    pages
}

/// The fenced blocks of `language` in a markdown text.
fn blocks<'a>(text: &'a str, language: &str) -> Vec<&'a str> {
    let fence = format!("```{language}\n");
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let Some(end) = body.find("```") else { break };
        found.push(&body[..end]);
        rest = &body[end..];
    }
    found
}

/// Shell words of a command line, with quotes removed; stops at a comment.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '#') if !in_word => break,
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The arguments of a `sluice` invocation on `line` (`sluice ...` or `cargo run ... -- ...`).
fn sluice_arguments(line: &str) -> Option<Vec<String>> {
    let words = words(line);
    let position = if words.first().is_some_and(|w| w == "sluice") {
        1
    } else if words.first().is_some_and(|w| w == "cargo")
        && words.iter().any(|w| w == "sluice")
        && words.get(1).is_some_and(|w| w == "run")
    {
        words.iter().position(|w| w == "--")? + 1
    } else {
        return None;
    };
    Some(words[position..].to_vec())
}

#[test]
fn every_documented_sluice_command_names_real_flags() {
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for block in blocks(&text, "sh") {
            for line in block.replace("\\\n", " ").lines() {
                let Some(arguments) = sluice_arguments(line) else {
                    continue;
                };
                let Some(subcommand) = arguments.first() else {
                    continue;
                };
                let help = sluice()
                    .args([subcommand.as_str(), "--help"])
                    .output()
                    .unwrap();
                assert!(
                    help.status.success(),
                    "{}: `{line}`: sluice has no subcommand {subcommand:?}",
                    page.display()
                );
                let help = String::from_utf8_lossy(&help.stdout);
                for flag in arguments.iter().filter(|a| a.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap_or(flag);
                    // The whole flag, not a prefix of a longer one.
                    let listed = [" ", "\n", "="]
                        .iter()
                        .any(|after| help.contains(&format!("{flag}{after}")));
                    assert!(
                        listed,
                        "{}: `{line}`: `sluice {subcommand}` has no {flag}\n{help}",
                        page.display()
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 25, "only {checked} commands found in the docs");
}

#[test]
fn every_self_contained_config_in_the_docs_passes_check() {
    let folder = temp_folder("docs-configs");
    let mut checked = 0;
    for page in pages()
        .iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("docs")))
    {
        let text = std::fs::read_to_string(page).unwrap();
        for (index, block) in blocks(&text, "yaml").into_iter().enumerate() {
            // Configs that name module files depend on a build; the filter tests cover those.
            if !block.contains("listeners:") || block.contains("module:") {
                continue;
            }
            let file = folder.join(format!(
                "{}-{index}.yaml",
                page.file_stem().unwrap().to_string_lossy()
            ));
            std::fs::write(&file, block).unwrap();
            let output = sluice()
                .args(["check", "--config"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{} config #{index}:\n{block}\n{}",
                page.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} configs found in docs/");
}

#[test]
fn the_word_splitter_reads_commands_as_a_shell_does() {
    assert_eq!(
        words(r#"cargo run -p sluice -- push m.wasm --config '{"rate": 1}' --wait   # note"#),
        [
            "cargo",
            "run",
            "-p",
            "sluice",
            "--",
            "push",
            "m.wasm",
            "--config",
            r#"{"rate": 1}"#,
            "--wait"
        ]
    );
    assert_eq!(
        sluice_arguments("sluice status --control http://x:1").unwrap(),
        ["status", "--control", "http://x:1"]
    );
    assert!(sluice_arguments("curl -s http://x").is_none());
}

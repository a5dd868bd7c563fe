//! The docs cannot go stale: every `sluice` command they show must name a subcommand and
//! flags the binary has, every self-contained config in `docs/` must pass `sluice check`, and
//! the configuration reference must list exactly the fields the config accepts.

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

/// The arguments of a `sluice` invocation on `line` (`sluice ...` or `cargo run ... -- ...`),
/// after what may set its environment in front (`env`, `SLUICE_LOG=debug`).
fn sluice_arguments(line: &str) -> Option<Vec<String>> {
    let mut words = words(line);
    let environment = words
        .iter()
        .enumerate()
        .take_while(|(position, word)| {
            (*position == 0 && *word == "env")
                || word
                    .split_once('=')
                    .is_some_and(|(name, _)| is_env_name(name))
        })
        .count();
    words.drain(..environment);
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

/// A shell variable name: what `NAME=value` in front of a command must start with.
fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn a_command_behind_environment_assignments_is_still_checked() {
    let arguments =
        sluice_arguments("SLUICE_WASM_PERFMAP=1 A_2=x cargo run -p sluice -- proxy --config f");
    assert_eq!(arguments.unwrap(), ["proxy", "--config", "f"]);
    assert_eq!(
        sluice_arguments("sluice check --config a=b").unwrap(),
        ["check", "--config", "a=b"]
    );
    assert_eq!(
        sluice_arguments("env lower=1 sluice check").unwrap(),
        ["check"]
    );
    assert!(sluice_arguments("1x=1 sluice check").is_none());
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

/// The fields an object of the config accepts, as serde lists them when it meets an unknown
/// one (`bogus`) in `yaml`.
fn accepted_fields(yaml: &str) -> Vec<String> {
    let error = serde_yaml::from_str::<sluice::config::ProxyConfig>(yaml)
        .err()
        .unwrap_or_else(|| panic!("the probe was accepted: {yaml}"))
        .to_string();
    let listed = error
        .split_once("unknown field `bogus`, expected ")
        .unwrap_or_else(|| panic!("not an unknown-field error for {yaml}: {error}"))
        .1;
    // serde writes "`a`", "`a` or `b`", or "one of `a`, `b`, `c`": the names are what the
    // backticks hold.
    let names: Vec<String> = listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "no field names in {error}");
    names
}

/// The fields a section of the reference lists: its table rows up to the next heading.
fn documented_fields(page: &str, heading: &str) -> Vec<String> {
    let start = page
        .lines()
        .position(|line| line == heading)
        .unwrap_or_else(|| panic!("docs/configuration.md has no heading {heading:?}"));
    page.lines()
        .skip(start + 1)
        .take_while(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |"))
        .map(|(field, _)| field.to_owned())
        .collect()
}

#[test]
fn the_configuration_reference_lists_every_field() {
    let page = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let listener = |inner: &str| format!("listeners: [{{ name: a, address: x, {inner} }}]");
    let route = |inner: &str| listener(&format!("routes: [{{ {inner} }}]"));
    let filter = |inner: &str| listener(&format!("filters: [{{ name: f, module: m, {inner} }}]"));
    let cluster = |inner: &str| format!("clusters: [{{ name: c, endpoints: [], {inner} }}]");
    // Each object of the config, by the heading of its section, with an unknown field in it.
    let probes = [
        ("## Top level", "bogus: 1".to_owned()),
        ("## Admin", "admin: { address: x, bogus: 1 }".to_owned()),
        (
            "## Registration",
            "register: [{ service: a, address: x, bogus: 1 }]".to_owned(),
        ),
        ("## Locality", "locality: { bogus: 1 }".to_owned()),
        ("## Listener", listener("bogus: 1")),
        (
            "### SNI route",
            listener("sni_routes: [{ server_names: [a], cluster: c, bogus: 1 }]"),
        ),
        ("### Listener TLS", listener("tls: { bogus: 1 }")),
        (
            "#### Certificate",
            listener("tls: { certificates: [{ cert: a, key: b, bogus: 1 }] }"),
        ),
        ("## Route", route("match: {}, bogus: 1")),
        ("### Match", route("match: { bogus: 1 }")),
        (
            "#### Header match",
            route("match: { headers: [{ name: a, bogus: 1 }] }"),
        ),
        (
            "### Weighted cluster",
            route("match: {}, weighted_clusters: [{ cluster: c, weight: 1, bogus: 1 }]"),
        ),
        ("## Filter", filter("bogus: 1")),
        ("### Limits", filter("limits: { bogus: 1 }")),
        (
            "### Canary",
            filter("canary: { module: m, percent: 1, bogus: 1 }"),
        ),
        ("## Cluster", cluster("bogus: 1")),
        ("### Health check", cluster("health_check: { bogus: 1 }")),
        (
            "### Outlier detection",
            cluster("outlier_detection: { bogus: 1 }"),
        ),
        ("### Cluster TLS", cluster("tls: { bogus: 1 }")),
    ];
    for (heading, yaml) in probes {
        let mut accepted = accepted_fields(&yaml);
        let mut documented = documented_fields(&page, heading);
        accepted.sort();
        documented.sort();
        assert_eq!(
            documented, accepted,
            "docs/configuration.md, section {heading:?}: its table must list exactly the fields the config accepts"
        );
    }
}

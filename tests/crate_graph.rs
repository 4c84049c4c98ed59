//! The workspace's crate graph as Cargo resolves it for this machine
//! (`cargo tree`): the scripted model provider (`kiln-mock-llm`) is test
//! tooling, so no production binary may link it, through any chain of
//! normal or build dependencies.

use std::collections::BTreeSet;
use std::process::Command;

const MOCK: &str = "kiln-mock-llm";
const PRODUCTION: [&str; 4] = ["kiln", "kiln-dispatcher", "kiln-worker", "kiln-cli"];

/// The names of the packages `package` depends on through `edges`
/// (`normal,build`, or with `dev` too), itself included.
fn linked(package: &str, edges: &str) -> BTreeSet<String> {
    // Offline and locked: the build already fetched everything this
    // machine's graph holds, and the lock file is the graph to check.
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "--prefix",
            "none",
            "-e",
            edges,
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_production_binary_links_the_mock_model_provider() {
    for package in PRODUCTION {
        let crates = linked(package, "normal,build");
        assert!(
            crates.contains(package),
            "{package} is not in the workspace: {crates:?}"
        );
        assert!(
            !crates.contains(MOCK),
            "{package} links {MOCK}: it must stay a dev-dependency (test tooling)"
        );
    }
}

#[test]
fn the_tests_reach_the_mock_model_provider_and_it_does_not_reach_kiln() {
    // The check above looks for the right name: the tests use the mock
    // through `kiln`'s dev-dependencies.
    assert!(linked("kiln", "normal,build,dev").contains(MOCK));
    let kiln_crates: Vec<String> = linked(MOCK, "normal,build")
        .into_iter()
        .filter(|c| c.starts_with("kiln") && c != MOCK)
        .collect();
    assert!(
        kiln_crates.is_empty(),
        "{MOCK} depends on {kiln_crates:?}; it speaks only the providers' wire protocols"
    );
}

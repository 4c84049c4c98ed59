use std::time::Duration;

use kiln::files::File;
use kiln::report::Outcome;
use kiln::sandbox::process::ProcessSandbox;
use kiln::sandbox::{Limits, harness};
use kiln::spec::Spec;
use serde_json::json;

fn sandbox() -> ProcessSandbox {
    let runtime = std::env::var("KILN_SANDBOX_RUNTIME").unwrap_or_else(|_| "/opt/kiln/sandbox".into());
    ProcessSandbox::new(std::path::Path::new(&runtime)).unwrap()
}

fn limits() -> Limits {
    Limits {
        timeout: Duration::from_secs(20),
        memory_mb: 512,
        pids: 64,
        tmpfs_mb: 32,
        output_bytes: 65536,
    }
}

#[tokio::test]
async fn smoke() {
    let sb = sandbox();
    let spec = Spec::from_value(
        json!({"kind": "function", "task_description": "add", "entry_point": "add",
        "test_cases": [{"input": [1, 2], "expected": 3}, {"input": {"a": 2, "b": 2}, "expected": 4}],
        "test_code": "from solution import add\n\ndef test_add():\n    assert add(1, 1) == 2\n"}),
        "s",
    )
    .unwrap();
    let good = vec![File::new(
        "solution.py",
        "def add(a, b):\n    print('hello')\n    return a + b\n",
    )];
    let r = harness::run_tests(&sb, &spec, &good, &limits()).await.unwrap();
    println!("{r:#?}");
    assert!(r.all_passed());
    let bad = vec![File::new("solution.py", "def add(a, b):\n    return a - b\n")];
    let r = harness::run_tests(&sb, &spec, &bad, &limits()).await.unwrap();
    println!("{r:#?}");
    assert!(!r.all_passed());
    assert!(r.cases.iter().any(|c| c.outcome == Outcome::Failed));
}

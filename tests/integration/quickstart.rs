//! docs/quickstart.md, run verbatim: its `sh`, `python` and `js` blocks,
//! in order, as one bash script against the test broker (the page's
//! `$KAFKA`), with kcat, a Python virtual environment holding
//! confluent-kafka and kafkajs from `make quickstart-deps`.

use std::path::Path;
use std::process::Command;

use crate::faults::{heavy, BIN};
use crate::helpers::bootstrap;

/// The page's runnable blocks as one bash script: shell verbatim, Python
/// and JavaScript fed verbatim to their interpreters.
fn script_of(page: &str) -> (String, usize) {
    let mut script =
        String::from("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n");
    let (mut block, mut lang, mut blocks) = (String::new(), None::<String>, 0);
    for line in page.lines() {
        match (&lang, line.strip_prefix("```")) {
            (None, Some(info)) => {
                lang = Some(info.trim().to_owned());
                block.clear();
            }
            (Some(l), Some("")) => {
                let run = match l.as_str() {
                    "sh" => Some(block.clone()),
                    "python" => Some(format!("python - <<'KD_EOF'\n{block}KD_EOF\n")),
                    "js" => Some(format!("node - <<'KD_EOF'\n{block}KD_EOF\n")),
                    _ => None,
                };
                if let Some(run) = run {
                    script += &run;
                    blocks += 1;
                }
                lang = None;
            }
            (Some(_), _) => {
                block += line;
                block.push('\n');
            }
            (None, None) => {}
        }
    }
    (script, blocks)
}

#[test]
fn the_quickstart_runs_verbatim() {
    let _heavy = heavy();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tools = root.join(".tools");
    let venv = tools.join("venv/bin");
    let node_modules = tools.join("node/node_modules");
    let missing: Vec<&str> = [
        ("kcat", Command::new("kcat").arg("-V").output().is_ok()),
        (
            "confluent-kafka",
            Command::new(venv.join("python"))
                .args(["-c", "import confluent_kafka"])
                .status()
                .is_ok_and(|s| s.success()),
        ),
        ("kafkajs", node_modules.join("kafkajs").is_dir()),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| name)
    .collect();
    assert!(
        missing.is_empty(),
        "missing {missing:?}: run `make quickstart-deps`"
    );
    let page = std::fs::read_to_string(root.join("docs/quickstart.md")).unwrap();
    let (script, blocks) = script_of(&page);
    assert!(blocks >= 8, "only {blocks} runnable blocks found");
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(root)
        .env("PATH", path)
        .env("NODE_PATH", &node_modules)
        .env("KAFKA", bootstrap())
        // Beside other tests: a port of its own for the service's probes.
        .env("KAFKA_DELAY__HTTP__BIND", http.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        out.status.success(),
        "the quickstart failed: {:?}",
        out.status
    );
    for key in ["order-42", "order-43", "order-44", "order-45"] {
        assert!(
            stdout.contains(&format!("{key}: due ")),
            "{key} not consumed on time"
        );
    }
    assert!(stdout.contains("cancelled: records with x-delay-id order-48-timeout"));
}

#[test]
fn the_script_takes_runnable_blocks_only() {
    let page = "text\n```sh\necho a\n```\n```java\nint x;\n```\n```python\nprint(1)\n```\n";
    let (script, blocks) = script_of(page);
    assert_eq!(blocks, 2);
    assert!(
        script.contains("echo a\n") && script.contains("python - <<'KD_EOF'\nprint(1)\nKD_EOF")
    );
    assert!(!script.contains("int x;"));
}

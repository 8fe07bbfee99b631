//! Tests of the `kafka-delay` binary: crash and restart, exit codes, and the
//! HTTP endpoints.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kafka_delay::config::Settings;
use rdkafka::Message;

use crate::faults::{heavy, wait_until, Instance};
use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_kafka-delay");

/// The service as a child process, configured through environment
/// overrides only (as a Helm chart or an operator would), serving its
/// probes on `settings.http.bind`.
fn spawn_service(settings: &Settings) -> Child {
    Command::new(BIN)
        .arg("run")
        .envs(settings.env_overrides())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn kafka-delay")
}

/// Waits (30 s) until the instance serving `settings.http.bind` is ready.
fn wait_ready_on(settings: &Settings) {
    let ready = wait_until(Duration::from_secs(30), || {
        http_get(&settings.http.bind, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert!(ready, "not ready within 30 s");
}

#[test]
fn killing_the_service_mid_run_loses_nothing() {
    // Service processes: not beside the timing-sensitive scenarios.
    let _heavy = heavy();
    let (settings, targets) = setup("restart", &["target"]);
    let target = &targets[0];
    let mut first = Instance::start("first", &settings);
    first.wait_ready(Duration::from_secs(30));
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let n = 200;
    publish_numbered(&producer, &settings, target, n, |i| (i * 53) % 10_000);
    std::thread::sleep(Duration::from_secs(3));
    first.kill();
    let second = Instance::start("second", &settings);
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(2));
    drop(second);
    let (_, duplicates) = assert_all_arrived_never_early(&arrivals, n);
    println!("restart: {n} records, {duplicates} duplicates (at-least-once)");
}

#[test]
fn bad_configuration_exits_64_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("kd-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[wheel]\nticks = [\"1s\", \"1500ms\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wheel.ticks") && stderr.contains("Fix:"),
        "{stderr}"
    );

    std::fs::write(&file, "[kafka.properties]\n\"no.such.property\" = \"1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no.such.property"));

    let out = Command::new(BIN)
        .args(["run", "--check", "--config", "config/example.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_and_probes_are_served_and_move() {
    // Service processes: not beside the timing-sensitive scenarios.
    let _heavy = heavy();
    let (mut settings, targets) = setup("metrics", &["target"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    settings.http.enabled = true;
    settings.http.bind = addr.clone();
    let service = Service::start(&settings);
    let producer = producer(&settings);
    for i in 0..5 {
        publish(
            &producer,
            &settings,
            None,
            &format!("m{i}"),
            &[("x-target-topic", targets[0].as_str())],
        );
    }
    publish(&producer, &settings, None, "bad", &[("x-delay", "x")]);
    publish(
        &producer,
        &settings,
        None,
        "later",
        &[("x-delay", "2000"), ("x-target-topic", targets[0].as_str())],
    );
    let arrived = read(
        &settings,
        &[&targets[0]],
        6,
        Duration::from_secs(20),
        Duration::ZERO,
    );
    assert_eq!(arrived.len(), 6);

    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let got = http_get(&addr, "/metrics");
        if let Some((200, body)) = &got {
            let committed = body.lines().any(|l| {
                l.starts_with("kafka_delay_commit_latency_seconds_count") && !l.ends_with(" 0")
            });
            if committed
                && body
                    .contains("kafka_delay_records_dead_lettered_total{reason=\"invalid_delay\"} 1")
            {
                break got.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "metrics never moved: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, 200);
    assert!(
        body.contains("kafka_delay_records_ingested_total{outcome=\"delivered\"} 5"),
        "{body}"
    );
    assert!(
        body.contains("kafka_delay_records_forwarded_total{from=\"ingress\"} 5"),
        "{body}"
    );
    assert!(
        body.contains("kafka_delay_tier_writes_total{tier=\"500ms\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("kafka_delay_delivery_lateness_seconds_count 6"),
        "{body}"
    );
    assert!(body.contains("kafka_delay_rebalances_total"), "{body}");
    assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(&addr, "/readyz").map(|r| r.0), Some(200));
    drop(service);
}

#[test]
fn produce_subcommand_publishes_delayed_records_and_sigterm_stops_cleanly() {
    // Service processes: not beside the timing-sensitive scenarios.
    let _heavy = heavy();
    let (mut settings, targets) = setup("produce", &["target"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    settings.http.enabled = true;
    settings.http.bind = format!("127.0.0.1:{port}");
    let target = &targets[0];
    let mut service = spawn_service(&settings);
    let reader = Reader::start(&settings, &[target]);
    wait_ready_on(&settings);
    let cli = |command: &str, args: &[&str], stdin: &str| {
        let mut child = Command::new(BIN)
            .arg(command)
            .args(args)
            .env(
                "KAFKA_DELAY__KAFKA__BOOTSTRAP_SERVERS",
                &settings.kafka.bootstrap_servers,
            )
            .env("KAFKA_DELAY__TOPICS__INGRESS", &settings.topics.ingress)
            .env("KAFKA_DELAY__TOPICS__CANCEL", &settings.topics.cancel)
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let produce = |args: &[&str], stdin: &str| {
        let args: Vec<&str> = ["--target", target.as_str()]
            .iter()
            .chain(args)
            .copied()
            .collect();
        let (code, out) = cli("produce", &args, stdin);
        assert_eq!(code, Some(0), "{out}");
        out
    };
    let started = kafka_delay::model::clock::wall_ms();
    assert!(produce(&["--delay", "3s", "--id", "cli-1", "to-cancel"], "").starts_with("1 records"));
    let (code, out) = cli("cancel", &["--id", "cli-1"], "");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("cancelled: records with x-delay-id cli-1"),
        "{out}"
    );
    let (code, out) = cli(
        "cancel",
        &["--id", "cli-2", "--due", "2020-01-01T00:00:00Z"],
        "",
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.starts_with("too late:"), "{out}");
    // Several ids in one call, from standard input.
    assert!(produce(&["--delay", "3s", "--id", "cli-3", "x"], "").starts_with("1 records"));
    assert!(produce(&["--delay", "3s", "--id", "cli-4", "y"], "").starts_with("1 records"));
    let (code, out) = cli("cancel", &["--json"], "cli-3\n\ncli-4\n");
    assert_eq!(code, Some(0), "{out}");
    let cancelled: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cancelled.as_array().map(Vec::len), Some(2), "{out}");
    assert!(produce(&["--delay", "1500ms", "--key", "k1", "hello"], "").starts_with("1 records"));
    assert!(produce(&["--delay", "1s"], "a\nb\nc\n").starts_with("3 records"));
    // Per-line keys (kcat -K) and headers.
    let out = produce(
        &["--delay", "1s", "-K", ":", "-H", "tenant=acme", "--json"],
        "k2:d\nk3:e:f\n",
    );
    assert!(out.contains("\"published\":2"), "{out}");
    // A header the service owns publishes nothing: exit 64.
    let (code, out) = cli(
        "produce",
        &["--target", target.as_str(), "-H", "X-Delay=5", "z"],
        "",
    );
    assert_eq!(code, Some(64), "{out}");
    // Long enough for the cancelled records, due 3 s after `started`, to
    // have arrived had they not been cancelled.
    let arrivals = reader.wait(6, Duration::from_secs(30), Duration::from_secs(3));
    let mut values: Vec<String> = arrivals.iter().map(|a| a.value()).collect();
    values.sort();
    assert_eq!(values, ["a", "b", "c", "d", "e:f", "hello"]);
    let hello = arrivals.iter().find(|a| a.value() == "hello").unwrap();
    assert_eq!(hello.msg.key(), Some(b"k1".as_slice()));
    assert!(hello.seen_ms >= started + 1_500);
    let ef = arrivals.iter().find(|a| a.value() == "e:f").unwrap();
    assert_eq!(ef.msg.key(), Some(b"k3".as_slice()));
    assert_eq!(ef.header("tenant").as_deref(), Some("acme"));

    // SIGTERM: flush, commit, leave the group, exit 0 within the deadline.
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(service.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(25);
    let status = loop {
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 25 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn two_instances_share_the_wheel_and_survive_losing_one() {
    // Service processes: not beside the timing-sensitive scenarios.
    let _heavy = heavy();
    let (settings, targets) = setup("failover", &["target"]);
    let target = &targets[0];
    let mut first = Instance::start("first", &settings);
    let second = Instance::start("second", &settings);
    first.wait_ready(Duration::from_secs(30));
    second.wait_ready(Duration::from_secs(30));
    let producer = producer(&settings);
    let reader = Reader::start(&settings, &[target]);
    let n = 300;
    publish_numbered(&producer, &settings, target, n, |i| (i * 37) % 12_000);
    std::thread::sleep(Duration::from_secs(3));
    first.kill();
    let arrivals = reader.wait(n, Duration::from_secs(60), Duration::from_secs(2));
    drop(second);
    let (worst, duplicates) = assert_all_arrived_never_early(&arrivals, n);
    // Outside failover lateness is milliseconds; records of the dead
    // instance's partitions wait for the session timeout (6 s) and the
    // rebalance.
    assert!(worst < 20_000, "worst lateness {worst} ms");
    println!("failover: {n} records, worst lateness {worst} ms, {duplicates} duplicates");
}

#[test]
fn startup_errors_name_the_key_and_never_print_secrets() {
    // A misspelt secret property: named, its value never printed.
    let dir = std::env::temp_dir().join(format!("kd-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret.toml");
    std::fs::write(
        &file,
        "[kafka.properties]\n\"sasl.passwrod\" = \"hunter2-do-not-print\"\n",
    )
    .unwrap();
    for args in [&["run", "--check"][..], &["run"], &["topics", "apply"]] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&file)
            .env("KAFKA_DELAY__SERVICE__STARTUP_TIMEOUT", "2s")
            .env("KAFKA_DELAY__HTTP__ENABLED", "false")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            !text.contains("hunter2"),
            "{args:?} printed the secret: {text}"
        );
        assert!(
            text.contains("sasl.passwrod"),
            "{args:?} does not name the key: {text}"
        );
    }

    // The metrics port is taken: start-up stops and says which key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .arg("run")
        .env("KAFKA_DELAY__HTTP__BIND", &addr)
        .env("KAFKA_DELAY__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("http.bind") && stderr.contains(&addr),
        "{stderr}"
    );

    // No broker: retried for service.startup_timeout, then named.
    let begun = Instant::now();
    let out = Command::new(BIN)
        .arg("run")
        .env("KAFKA_DELAY__HTTP__ENABLED", "false")
        .env("KAFKA_DELAY__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("KAFKA_DELAY__SERVICE__STARTUP_TIMEOUT", "3s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kafka.bootstrap_servers") && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
    assert!(
        begun.elapsed() < Duration::from_secs(30),
        "gave up after {:?}",
        begun.elapsed()
    );
}

/// Scripts can trust the exit codes: a bad `--deliver-at` publishes
/// nothing and exits 64; `pending --id` for an id no tier holds exits 3.
#[test]
fn cli_refuses_a_bad_deliver_at_and_reports_an_id_not_found() {
    let (settings, targets) = setup("cli", &["target"]);
    let out = Command::new(BIN)
        .args([
            "produce",
            "--target",
            &targets[0],
            "--deliver-at",
            "garbage",
            "v",
        ])
        .envs(settings.env_overrides())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("nothing was published"), "{stderr}");
    let published = crate::faults::read_all(&settings, &settings.topics.ingress);
    assert!(
        published.is_empty(),
        "{} records published",
        published.len()
    );
    let out = Command::new(BIN)
        .args(["pending", "--id", "nobody"])
        .envs(settings.env_overrides())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn topics_apply_plan_and_prune_print_json_for_scripts() {
    let (settings, _) = setup("topicsjson", &[]);
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .envs(settings.env_overrides())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"));
        json
    };
    let applied = run(&["topics", "apply", "--json"]);
    let applied = applied.as_array().unwrap();
    assert_eq!(
        applied.len(),
        7,
        "ingress, dead-letter, cancel, clock, 3 tiers"
    );
    assert!(
        applied.iter().all(|r| r["status"]["status"] == "ok"),
        "{applied:?}"
    );
    let planned = run(&["topics", "plan", "--json"]);
    assert!(
        planned
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["action"] == "keep"),
        "{planned}"
    );
    assert_eq!(run(&["topics", "prune", "--json"]), serde_json::json!([]));
}

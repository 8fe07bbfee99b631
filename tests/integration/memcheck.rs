//! The shutdown path under a memory checker: the service runs under
//! valgrind memcheck, delivers records and writes a dead letter (so its
//! producer holds topic handles), then stops on SIGTERM. Any invalid read,
//! write or free — e.g. a topic handle destroyed after its client — fails
//! the test. Slow (valgrind runs the service ~30× slower): `make memcheck`
//! runs it, and `.ci/run` runs `make memcheck`.

use std::time::Duration;

use crate::faults::*;
use crate::helpers::*;

/// Lines of a valgrind log that report an access to memory the process
/// does not own, or a bad free.
fn invalid_accesses(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            [
                "Invalid read",
                "Invalid write",
                "Invalid free",
                "Mismatched free",
            ]
            .iter()
            .any(|kind| l.contains(kind))
        })
        .collect()
}

#[test]
#[ignore = "slow: needs valgrind; run by `make memcheck`"]
fn graceful_shutdown_is_clean_under_memcheck() {
    let _heavy = heavy();
    let (settings, targets) = setup("memcheck", &["target"]);
    let target = &targets[0];
    let dir = std::env::temp_dir().join(format!("kd-memcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("valgrind.log");
    let log_arg = format!("--log-file={}", log.display());
    let mut instance = Instance::start_wrapped(
        "memcheck",
        &settings,
        &[
            "valgrind",
            "--tool=memcheck",
            "--leak-check=no",
            "--trace-children=no",
            &log_arg,
        ],
    );
    instance.wait_ready(Duration::from_secs(240));
    let dlq = Reader::start(&settings, &[settings.topics.dead_letter.as_str()]);
    let reader = Reader::start(&settings, &[target]);
    let p = producer(&settings);
    let n = 20;
    publish_numbered(&p, &settings, target, n, |i| i * 50);
    publish(
        &p,
        &settings,
        None,
        "bad",
        &[("x-delay", "soon"), ("x-target-topic", target)],
    );
    rdkafka::producer::Producer::flush(&p, Duration::from_secs(10)).unwrap();
    let arrivals = reader.wait(n, Duration::from_secs(120), Duration::from_secs(1));
    let (worst, _) = assert_all_arrived_never_early(&arrivals, n);
    let dead = dlq.wait(1, Duration::from_secs(60), Duration::ZERO);
    assert_eq!(dead.len(), 1, "one dead letter");
    let status = instance
        .terminate_within(Duration::from_secs(180))
        .expect("running");
    let text = std::fs::read_to_string(&log).unwrap();
    let invalid = invalid_accesses(&text);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR SUMMARY"))
        .collect();
    println!(
        "memcheck: {n} delivered (worst {worst} ms late under valgrind), 1 dead letter, \
         exit {status:?}; {summary:?}"
    );
    assert!(
        invalid.is_empty(),
        "valgrind found {} invalid accesses at shutdown:\n{}\n(full log: {})",
        invalid.len(),
        text,
        log.display()
    );
    assert!(status.success(), "exit status {status:?}");
    assert!(!summary.is_empty(), "valgrind wrote no summary: {text}");
}

//! kafka-delay: delayed delivery for Apache Kafka.
//!
//! A producer writes a record with an `x-delay` or `x-deliver-at` header to
//! the ingress topic; the service delivers it to its `x-target-topic` when it
//! is due, never early. Pending records live in tier topics arranged as a
//! hierarchical timing wheel; the service itself is stateless.
//!
//! The modules are layers; each depends only on the ones above it in this
//! list (docs/architecture.md draws the data path through them):
//!
//! 1. [`model`] — the header contract, cancellations, time; and [`wheel`] —
//!    the pure tier table: routing, release times, roll-over;
//! 2. [`config`] — settings, layering (file → environment), validation;
//! 3. [`kafka`] — client settings, the FFI module ([`kafka::native`], the
//!    only `unsafe` code), topic specs, target look-ups; [`ops`] — metrics,
//!    health, HTTP, logs, signals;
//! 4. [`delivery`] — produce, acknowledgements, retries, dead letters, the
//!    ledger of what may be committed, the exactly-once mode;
//! 5. [`engine`] — the consumer loop of one topic: ingress and tier
//!    records, partitions paused until due, the due-soon timer, backpressure,
//!    rebalances, cancellations;
//! 6. [`service`] — one loop per topic, the cancel reader, the HTTP server;
//! 7. [`cli`] — the client commands (`produce`, `cancel`, `pending`,
//!    `reschedule`); the binary's `main.rs` parses arguments.
//!
//! The demo, the benchmark and the local broker launcher live in the
//! `kafka-delay-tools` workspace member (`tools/`), outside this binary.

#![deny(missing_docs, unsafe_code, rustdoc::broken_intra_doc_links)]
// The documentation is built with private items (`make lint`): a newcomer
// reads the engine, which is crate-private.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod config;
pub(crate) mod delivery;
pub mod engine;
pub mod kafka;
pub mod model;
pub mod ops;
pub mod service;
#[cfg(test)]
mod test_support;
pub mod wheel;

/// The layers of docs/architecture.md ("The tree"), checked: code in a
/// layer names only its own layer and the layers above it. Tests may cross
/// (a model test may build headers through the FFI module).
#[cfg(test)]
mod layering {
    use std::path::Path;

    /// Each top-level module and its layer (1: depends on nothing of ours).
    const LAYERS: [(&str, u8); 10] = [
        ("model", 1),
        ("wheel", 1),
        ("test_support", 1),
        ("config", 2),
        ("kafka", 3),
        ("ops", 3),
        ("delivery", 4),
        ("engine", 5),
        ("service", 6),
        ("cli", 7),
    ];

    fn layer(module: &str) -> Option<u8> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    /// Every `crate::<module>` a line of code names (comments skipped).
    fn named_modules(line: &str) -> Vec<&str> {
        let code = line.trim_start();
        if code.starts_with("//") {
            return Vec::new();
        }
        let mut names = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                names.extend(group.split(',').map(|item| {
                    let item = item.trim();
                    &item[..item.find("::").unwrap_or(item.len())]
                }));
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                names.push(&rest[..end]);
            }
        }
        names
    }

    fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable source tree") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                visit(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    #[test]
    fn dependencies_point_one_way() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        visit(&src, &mut files);
        let mut upward = Vec::new();
        for file in &files {
            let relative = file.strip_prefix(&src).expect("under src");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a file name")
                .trim_end_matches(".rs");
            let Some(own) = layer(top) else {
                continue; // lib.rs, main.rs
            };
            if file.file_name().is_some_and(|f| f == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(file).expect("readable file");
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("mod tests") {
                    break; // the rest of the file is its tests
                }
                for name in named_modules(line) {
                    if layer(name).is_some_and(|l| l > own) {
                        upward.push(format!(
                            "{}:{}: {top} names {name}",
                            relative.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
        assert!(files.len() > 40, "found only {} files", files.len());
        assert!(
            upward.is_empty(),
            "upward dependencies:\n{}",
            upward.join("\n")
        );
    }

    #[test]
    fn module_names_are_read_from_paths_and_groups() {
        assert_eq!(named_modules("use crate::engine::Shared;"), ["engine"]);
        assert_eq!(
            named_modules("use crate::{cli::cancel, kafka};"),
            ["cli", "kafka"]
        );
        assert!(named_modules("// crate::cli in a comment").is_empty());
    }
}

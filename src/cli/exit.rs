//! The exit codes of every `kafka-delay` command, in one place (also in
//! `kafka-delay --help` and the README).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | a runtime failure: Kafka unreachable, a write refused, drift found by `topics apply` or `topics plan`, `topics prune` keeping a tier that holds records |
//! | 2 | a command line that does not parse (clap's own exit code) |
//! | 3 | not found or too late: `pending --id` and `reschedule` found no tier holding an id (`reschedule` moves the others); `cancel` named a due time already past |
//! | 64 | a bad flag value or configuration (EX_USAGE, as linkerd2-proxy uses) |

use std::process::ExitCode;

/// Runtime failure (Kafka, I/O).
pub const FAILURE: u8 = 1;
/// Not found, or too late to act (`pending --id`, `reschedule`, `cancel`).
pub const NOT_FOUND: u8 = 3;
/// Bad usage or configuration (EX_USAGE).
pub const CONFIG: u8 = 64;

/// Reports a runtime failure on standard error: exit 1.
pub(crate) fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("kafka-delay: {error}");
    ExitCode::from(FAILURE)
}

/// Reports bad usage or configuration on standard error: exit 64.
pub(crate) fn usage(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("kafka-delay: {error}");
    ExitCode::from(CONFIG)
}

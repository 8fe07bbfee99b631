//! `kafka-delay topics apply|plan|prune|acls`: create the service's topics
//! and report drift; say what apply would do; delete drained tier topics of
//! earlier layouts; print the ACLs the service's principal needs.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{exit, print_json};
use crate::config::Settings;
use crate::kafka::layout::{self, PlanLine, Pruned};
use crate::kafka::topics::{self, Spec, TopicsError};

/// `topics acls`: prints `kafka-acls.sh` commands; changes nothing.
pub(super) fn acls(settings: &Settings, principal: &str) -> ExitCode {
    match topics::acl_commands(settings, principal) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => exit::fail(error),
    }
}

/// `topics apply`: creates missing topics and reports each; exits 1 when a
/// topic drifted from its spec.
pub(super) fn apply(settings: &Settings, spec: Option<PathBuf>, json: bool) -> ExitCode {
    let spec_path = spec.or_else(|| settings.topics.spec_file.clone());
    let result = Spec::load(spec_path.as_deref()).and_then(|spec| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TopicsError::Runtime)?;
        runtime.block_on(topics::apply(settings, &spec))
    });
    match result {
        Ok(reports) => {
            if json {
                print_json(&reports);
            } else {
                for r in &reports {
                    println!("{r}");
                }
            }
            if topics::has_drift(&reports) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => exit::fail(error),
    }
}

/// `topics plan`: prints what `apply` would do; exits 1 on drift.
pub(super) fn plan(settings: &Settings, spec: Option<PathBuf>, json: bool) -> ExitCode {
    let spec_path = spec.or_else(|| settings.topics.spec_file.clone());
    let result = Spec::load(spec_path.as_deref()).and_then(|spec| layout::plan(settings, &spec));
    match result {
        Ok(lines) => {
            // The latest due time in each retired tier: at most how long
            // its drain can take (records move to the current tiers as
            // soon as they are read, so usually much less).
            let latest = (!json)
                .then(|| latest_due_in_retired(settings, &lines))
                .flatten();
            if json {
                print_json(&lines);
            }
            for line in lines.iter().filter(|_| !json) {
                match (line, &latest) {
                    (PlanLine::Retire(r), Some(scan)) if r.records > 0 => {
                        let due = scan
                            .tiers
                            .iter()
                            .find(|t| t.topic == r.topic)
                            .and_then(|t| t.latest_due_ms)
                            .map_or_else(|| "unknown".to_owned(), crate::model::clock::rfc3339_ms);
                        println!("{line}; latest due {due}");
                    }
                    _ => println!("{line}"),
                }
            }
            if lines.iter().any(|l| matches!(l, PlanLine::Drift { .. })) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => exit::fail(error),
    }
}

/// A `pending` scan when some retired tier holds records (None otherwise,
/// or when the scan fails: the plan is printed without due times).
fn latest_due_in_retired(settings: &Settings, lines: &[PlanLine]) -> Option<super::pending::Scan> {
    let holding = lines
        .iter()
        .any(|l| matches!(l, PlanLine::Retire(r) if r.records > 0));
    if !holding {
        return None;
    }
    super::pending::scan(settings, None, |_, _| {})
        .inspect_err(|error| eprintln!("latest due times not read: {error}"))
        .ok()
}

/// `topics prune`: deletes drained tier topics of earlier layouts; exits 1
/// when one still holds records (it is kept and named).
pub(super) fn prune(settings: &Settings, json: bool) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TopicsError::Runtime)
        .and_then(|runtime| runtime.block_on(layout::prune(settings)));
    match result {
        Ok(outcome) => {
            let kept = outcome.iter().any(|o| matches!(o, Pruned::Kept(_)));
            if json {
                print_json(&outcome);
            }
            for o in outcome.iter().filter(|_| !json) {
                match o {
                    Pruned::Deleted(topic) => println!("{topic:<28} deleted"),
                    Pruned::Kept(r) => {
                        println!(
                            "{:<28} kept: {} records past its committed offsets; the service drains them",
                            r.topic, r.records
                        );
                    }
                }
            }
            if outcome.is_empty() && !json {
                println!("no tier topic of an earlier layout");
            }
            if kept {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => exit::fail(error),
    }
}

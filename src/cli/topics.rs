//! `kafka-delay topics apply|acls`: create the service's topics and report
//! drift; print the ACLs its principal needs.

use std::path::PathBuf;
use std::process::ExitCode;

use super::exit;
use crate::config::Settings;
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
pub(super) fn apply(settings: &Settings, spec: Option<PathBuf>) -> ExitCode {
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
            for r in &reports {
                println!("{r}");
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

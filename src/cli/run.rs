//! `kafka-delay run`: validates the configuration and the librdkafka
//! properties, starts logging, runs the service until SIGTERM.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::exit;
use crate::config::{LogSettings, Settings};
use crate::kafka;
use crate::ops::telemetry;
use crate::service;

/// `run` (`check`: validate and exit).
pub(super) fn command(settings: &Settings, check: bool) -> ExitCode {
    if check {
        // Clients are created to validate their properties, not to
        // connect: keep their connection attempts out of the output.
        telemetry::init(&LogSettings {
            filter: "warn,librdkafka=off,rdkafka=off".into(),
            ..settings.log.clone()
        });
        return match check_clients(settings) {
            Ok(()) => {
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(error) => exit::usage(error),
        };
    }
    telemetry::init(&settings.log);
    if let Err(error) = check_clients(settings) {
        return exit::usage(error);
    }
    match service::run(settings, Arc::new(AtomicBool::new(false)), true) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => exit::fail(error),
    }
}

/// `run --check`: librdkafka rejects unknown or malformed properties when a
/// client is created (no connection is needed for that).
fn check_clients(settings: &Settings) -> Result<(), String> {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;
    kafka::consumer_config(settings, &settings.kafka.group_id, false)
        .create::<BaseConsumer>()
        .map_err(|e| {
            format!(
                "configuration key `kafka.consumer_properties`/`kafka.properties`: {}",
                kafka::describe(&e)
            )
        })?;
    kafka::producer_config(settings)
        .create::<BaseProducer>()
        .map_err(|e| {
            format!(
                "configuration key `kafka.producer_properties`/`kafka.properties`: {}",
                kafka::describe(&e)
            )
        })?;
    Ok(())
}

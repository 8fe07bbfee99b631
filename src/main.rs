//! The `kafka-delay` binary: parse the CLI, load and validate the
//! configuration before touching the network (exit 64 on bad
//! configuration), start telemetry, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kafka_delay::config::Settings;
use kafka_delay::{produce, service, telemetry, topics};

/// Delayed delivery for Apache Kafka: records with an `x-delay` or
/// `x-deliver-at` header on the ingress topic appear on their
/// `x-target-topic` when due.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// TOML configuration file (see config/example.toml); environment
    /// variables KAFKA_DELAY__SECTION__KEY override it.
    #[arg(long, short, env = "KAFKA_DELAY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (consumer group over the ingress and tier topics).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Validate the configuration (and librdkafka properties) and exit.
        #[arg(long)]
        check: bool,
    },
    /// Manage the service's topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Publish delayed records to the ingress topic: VALUE, or one record per
    /// line of standard input.
    Produce {
        #[command(flatten)]
        config: ConfigArg,
        /// Topic to deliver to.
        #[arg(long)]
        target: String,
        /// Delay after the record timestamp ("30s", "250ms", "2h").
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "deliver_at")]
        delay: Option<Duration>,
        /// Absolute due time: epoch ms or RFC 3339.
        #[arg(long)]
        deliver_at: Option<String>,
        /// Record key.
        #[arg(long)]
        key: Option<String>,
        /// `x-delay-id` of every record published (what `cancel` names).
        #[arg(long)]
        id: Option<String>,
        /// Record value; omit to read values from standard input.
        value: Option<String>,
    },
    /// Cancel the delayed records with an `x-delay-id`: records with that id
    /// published before now are not delivered. Exits 3, publishing
    /// nothing, when --due has passed (too late: already delivered).
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        /// The `x-delay-id` to cancel.
        #[arg(long)]
        id: String,
        /// Cancel only records for this target topic.
        #[arg(long)]
        target: Option<String>,
        /// Due time of the record (epoch ms or RFC 3339): the cancellation
        /// is kept in memory until then (default: now + wheel.max_delay).
        #[arg(long)]
        due: Option<String>,
    },
    /// Move a pending record to a new due time: finds it in the tiers by
    /// `x-delay-id`, cancels it and publishes its key, value and headers
    /// again with the new delay. Exits 3 when no tier holds it.
    Reschedule {
        #[command(flatten)]
        config: ConfigArg,
        /// The `x-delay-id` of the record.
        #[arg(long)]
        id: String,
        /// New delay from now ("30s", "2h").
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "deliver_at")]
        delay: Option<Duration>,
        /// New due time: epoch ms or RFC 3339.
        #[arg(long)]
        deliver_at: Option<String>,
    },
    /// Inspect what the tiers hold: pending records per tier and target,
    /// oldest and latest due time, a histogram of due times; `--id` finds
    /// one record. Reads the tier topics from the service's committed
    /// offsets to their ends (records still in the ingress topic or in an
    /// instance's due-soon timer are not seen).
    Pending {
        #[command(flatten)]
        config: ConfigArg,
        /// Find the record with this `x-delay-id`.
        #[arg(long)]
        id: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Print the Kafka ACLs the service's principal needs (kafka-acls.sh
    /// commands); nothing is changed.
    Acls {
        #[command(flatten)]
        config: ConfigArg,
        /// The service's principal, e.g. User:kafka-delay.
        #[arg(long)]
        principal: String,
    },
    /// Create missing topics, report drift (idempotent).
    Apply {
        #[command(flatten)]
        config: ConfigArg,
        /// Topic spec file (default: the built-in topics/topics.toml, or
        /// topics.spec_file from the configuration).
        #[arg(long)]
        spec: Option<PathBuf>,
    },
}

/// `cancel`: the record was due already; `pending --id`, `reschedule`: no
/// tier holds a record with that id.
const EXIT_TOO_LATE: u8 = 3;

/// `kafka-delay pending`: a progress bar on standard error while it reads.
fn pending(settings: &Settings, id: Option<&str>, json: bool) -> ExitCode {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tier records read ({eta})")
            .expect("valid template"),
    );
    let result = kafka_delay::pending::scan(settings, id, |read, total| {
        bar.set_length(total);
        bar.set_position(read);
    });
    bar.finish_and_clear();
    match result {
        Ok(scan) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&scan).expect("serializable")
                );
            } else {
                print!("{}", kafka_delay::pending::render(&scan, id));
            }
            // `--id` that no tier holds: not found (as reschedule reports it).
            if id.is_some() && scan.found.is_none() {
                ExitCode::from(EXIT_TOO_LATE)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => fail(kafka_delay::kafka::describe(&error)),
    }
}

/// `kafka-delay reschedule`.
fn reschedule(settings: &Settings, id: &str, when: &produce::When) -> ExitCode {
    use kafka_delay::reschedule::{self, Outcome};
    let at = kafka_delay::clock::rfc3339_ms;
    match reschedule::reschedule(settings, id, when) {
        Ok(Outcome::Moved { found, due_ms }) => {
            println!(
                "rescheduled: x-delay-id {id} for {} moved from {} to {}",
                found.target,
                at(found.due_ms),
                at(due_ms)
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::NotPending) => {
            println!(
                "not pending: no tier holds a record with x-delay-id {id} (delivered already, or still in the ingress topic or an instance's due-soon timer); nothing changed"
            );
            ExitCode::from(EXIT_TOO_LATE)
        }
        Err(error) => fail(error),
    }
}

/// `kafka-delay cancel`.
fn cancel(settings: &Settings, id: &str, target: Option<&str>, due: Option<&str>) -> ExitCode {
    use kafka_delay::{cancel, envelope};
    if cancel::parse_id(id.as_bytes()).is_none() {
        eprintln!(
            "kafka-delay: --id must be 1 to {} bytes",
            cancel::ID_MAX_BYTES
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let now = kafka_delay::clock::now_ms();
    let until = match due {
        Some(raw) => match envelope::parse_deliver_at(raw.as_bytes()) {
            Ok(due_ms) => due_ms,
            Err(error) => {
                eprintln!("kafka-delay: --due: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => now.saturating_add(settings.wheel.max_delay.as_millis() as i64),
    };
    if until <= now {
        println!(
            "too late: records with x-delay-id {id} due at {} were due {} ms ago and have been delivered; nothing was cancelled",
            kafka_delay::clock::rfc3339_ms(until),
            now - until
        );
        return ExitCode::from(EXIT_TOO_LATE);
    }
    match cancel::publish(settings, id, target, now, until) {
        Ok(()) => {
            let at = kafka_delay::clock::rfc3339_ms;
            println!(
                "cancelled: records with x-delay-id {id}{} published before {} and due by {} will not be delivered",
                target.map(|t| format!(" for {t}")).unwrap_or_default(),
                at(now),
                at(until)
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(kafka_delay::kafka::describe(&error)),
    }
}

/// EX_USAGE, as linkerd2-proxy uses for bad configuration.
const EXIT_CONFIG: u8 = 64;

fn load(config: &ConfigArg) -> Result<Settings, ExitCode> {
    Settings::load(config.config.as_deref()).map_err(|error| {
        eprintln!("kafka-delay: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// [`load`], then logging as configured (every command that connects).
fn load_logged(config: &ConfigArg) -> Result<Settings, ExitCode> {
    let settings = load(config)?;
    telemetry::init(&settings.log);
    Ok(settings)
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("kafka-delay: {error}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, check } => {
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            if check {
                // Clients are created to validate their properties, not to
                // connect: keep their connection attempts out of the output.
                telemetry::init(&kafka_delay::config::LogSettings {
                    filter: "warn,librdkafka=off,rdkafka=off".into(),
                    ..settings.log.clone()
                });
                return match check_clients(&settings) {
                    Ok(()) => {
                        println!("configuration OK");
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("kafka-delay: {error}");
                        ExitCode::from(EXIT_CONFIG)
                    }
                };
            }
            telemetry::init(&settings.log);
            if let Err(error) = check_clients(&settings) {
                eprintln!("kafka-delay: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            match service::run(&settings, Arc::new(AtomicBool::new(false)), true) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(error),
            }
        }
        Command::Topics {
            action: TopicsAction::Acls { config, principal },
        } => {
            let settings = match load(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match topics::acl_commands(&settings, &principal) {
                Ok(lines) => {
                    for line in lines {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => fail(error),
            }
        }
        Command::Topics {
            action: TopicsAction::Apply { config, spec },
        } => {
            let settings = match load_logged(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let spec_path = spec.or_else(|| settings.topics.spec_file.clone());
            let result = topics::Spec::load(spec_path.as_deref()).and_then(|spec| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| topics::TopicsError::Drift(e.to_string()))?;
                runtime.block_on(topics::apply(&settings, &spec))
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
                Err(error) => fail(error),
            }
        }
        Command::Pending { config, id, json } => {
            let settings = match load_logged(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            pending(&settings, id.as_deref(), json)
        }
        Command::Reschedule {
            config,
            id,
            delay,
            deliver_at,
        } => {
            let settings = match load_logged(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let when = match (delay, deliver_at) {
                (_, Some(at)) => produce::When::At(at),
                (Some(d), None) => produce::When::Delay(d),
                (None, None) => {
                    eprintln!("kafka-delay: give --delay or --deliver-at");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            reschedule(&settings, &id, &when)
        }
        Command::Cancel {
            config,
            id,
            target,
            due,
        } => {
            let settings = match load_logged(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            cancel(&settings, &id, target.as_deref(), due.as_deref())
        }
        Command::Produce {
            config,
            target,
            delay,
            deliver_at,
            key,
            id,
            value,
        } => {
            let settings = match load_logged(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let when = match (delay, deliver_at) {
                (_, Some(at)) => produce::When::At(at),
                (Some(d), None) => produce::When::Delay(d),
                (None, None) => produce::When::Delay(Duration::ZERO),
            };
            // Checked before anything is published: the service would
            // dead-letter every record of a bad --deliver-at.
            if let produce::When::At(at) = &when {
                if let Err(error) = kafka_delay::envelope::parse_deliver_at(at.as_bytes()) {
                    eprintln!("kafka-delay: --deliver-at: {error}; nothing was published");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            let values: Box<dyn Iterator<Item = String>> = match value {
                Some(v) => Box::new(std::iter::once(v)),
                None => Box::new(produce::stdin_lines()),
            };
            match produce::produce(
                &settings,
                &target,
                &when,
                key.as_deref(),
                id.as_deref(),
                values,
            ) {
                Ok(n) => {
                    println!("{n} records published to {}", settings.topics.ingress);
                    ExitCode::SUCCESS
                }
                Err(error) => fail(kafka_delay::kafka::describe(&error)),
            }
        }
    }
}

/// `run --check`: librdkafka rejects unknown or malformed properties when a
/// client is created (no connection is needed for that).
fn check_clients(settings: &Settings) -> Result<(), String> {
    use kafka_delay::kafka;
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

//! The `kafka-delay` command line: one file per command, one exit-code
//! table ([`exit`]). `main.rs` only calls [`main`].
//!
//! * `run` ([`run`]) — the service;
//! * `topics apply|acls` ([`topics`]);
//! * `produce` ([`produce`]), `cancel` ([`cancel`]), `pending`
//!   ([`pending`]), `reschedule` ([`reschedule`]) — client commands that
//!   publish to or read the service's topics;
//! * `dlq list|replay` ([`dlq`]) — the dead-letter topic.

pub mod cancel;
pub mod dlq;
pub mod exit;
pub mod pending;
pub mod produce;
pub mod reschedule;
mod run;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::ops::telemetry;

/// The exit-code table shown at the end of `--help` (see [`exit`]).
const EXIT_CODES: &str = "Exit codes: 0 done; 1 runtime failure (Kafka, I/O, topic drift, \
topics prune keeping a tier that holds records); 2 a command line that does not parse; 3 not found \
or too late (pending --id, reschedule, cancel); 64 a bad flag value or configuration.";

/// Delayed delivery for Apache Kafka: records with an `x-delay` or
/// `x-deliver-at` header on the ingress topic appear on their
/// `x-target-topic` when due.
#[derive(Parser)]
#[command(version, about, after_help = EXIT_CODES)]
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
    /// Bootstrap servers, `host:port[,host:port…]` (as kcat's -b):
    /// overrides kafka.bootstrap_servers.
    #[arg(short = 'b', long = "bootstrap-server")]
    bootstrap_server: Option<String>,
    /// A librdkafka property for every client, `key=value` (as kcat's -X);
    /// repeatable; overrides the same key of kafka.properties.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    property: Vec<(String, String)>,
}

/// `key=value` of `-X`; the key is not empty.
fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{raw:?} is not key=value")),
    }
}

impl ConfigArg {
    /// The command line's `-b` and `-X` over the loaded settings (the
    /// command line wins over the file and the environment).
    fn apply(&self, settings: &mut Settings) {
        if let Some(servers) = &self.bootstrap_server {
            settings.kafka.bootstrap_servers = servers.clone();
        }
        for (key, value) in &self.property {
            settings.kafka.properties.insert(key.clone(), value.clone());
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (consumer group over the ingress and tier topics).
    #[command(
        after_help = "Examples:\n  kafka-delay run --config config/local.toml\n  kafka-delay run -b broker:9092 -X security.protocol=SSL\n  kafka-delay run --config my.toml --check"
    )]
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
    #[command(after_help = "Examples:\n  \
kafka-delay produce -b localhost:9092 --target orders --delay 30s 'order 42 timed out'\n  \
kafka-delay produce --target reminders --deliver-at 2030-01-01T09:00:00Z --id r-7 --header tenant=acme hello\n  \
printf 'k1:v1\\nk2:v2\\n' | kafka-delay produce --target orders --delay 5m --key-delimiter :")]
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
        /// Record key (of every record).
        #[arg(long, conflicts_with = "key_delimiter")]
        key: Option<String>,
        /// Each line of standard input is `KEY<delimiter>VALUE` (as kcat's -K).
        #[arg(long, short = 'K')]
        key_delimiter: Option<String>,
        /// `x-delay-id` of every record published (what `cancel` names).
        #[arg(long)]
        id: Option<String>,
        /// A header of every record, `name=value`; repeatable.
        #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_property)]
        headers: Vec<(String, String)>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Record value; omit to read values from standard input.
        value: Option<String>,
    },
    /// Cancel the delayed records with an `x-delay-id`: records with that id
    /// published before now are not delivered. Exits 3, publishing
    /// nothing, when --due has passed (too late: already delivered).
    #[command(after_help = "Examples:\n  kafka-delay cancel --id order-42\n  \
kafka-delay cancel --id order-42 --id order-43 --target orders\n  \
cut -d, -f1 expired.csv | kafka-delay cancel   # one id per line")]
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        /// The `x-delay-id` to cancel; repeatable. None: one id per line of
        /// standard input.
        #[arg(long)]
        id: Vec<String>,
        /// Cancel only records for this target topic.
        #[arg(long)]
        target: Option<String>,
        /// Due time of the record (epoch ms or RFC 3339): the cancellation
        /// is kept in memory until then (default: now + wheel.max_delay).
        #[arg(long)]
        due: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move pending records to a new due time: finds them in the tiers by
    /// `x-delay-id` (one scan for all), cancels them and publishes their
    /// key, value and headers again with the new delay. Exits 3 when a tier
    /// holds none of an id (the others are moved).
    #[command(
        after_help = "Examples:\n  kafka-delay reschedule --id order-42 --delay 10m\n  \
kafka-delay reschedule --id a --id b --deliver-at 2030-01-01T09:00:00Z\n  \
kafka-delay reschedule --id weekly-report --schedule '0 9 * * MON' --zone Europe/Berlin\n  \
cat ids.txt | kafka-delay reschedule --delay 1h --json"
    )]
    Reschedule {
        #[command(flatten)]
        config: ConfigArg,
        /// The `x-delay-id` of the record; repeatable. None: one id per line
        /// of standard input.
        #[arg(long)]
        id: Vec<String>,
        /// New delay from now ("30s", "2h").
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "deliver_at")]
        delay: Option<Duration>,
        /// New due time: epoch ms or RFC 3339.
        #[arg(long)]
        deliver_at: Option<String>,
        /// A series: its new cron expression (`x-delay-schedule`); it starts
        /// again at the new due time, now by default.
        #[arg(long)]
        schedule: Option<String>,
        /// A series: its new IANA time zone (`x-delay-schedule-zone`).
        #[arg(long)]
        zone: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The dead-letter topic: count its records, publish them again.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Inspect what the tiers hold: pending records per tier and target,
    /// oldest and latest due time, a histogram of due times; `--id` finds
    /// one record. Reads the tier topics from the service's committed
    /// offsets to their ends (records still in the ingress topic or in an
    /// instance's due-soon timer are not seen).
    #[command(
        after_help = "Examples:\n  kafka-delay pending -b broker:9092\n  kafka-delay pending --id order-42\n  kafka-delay pending --json | jq .by_target"
    )]
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

/// The filters of `dlq list` and `dlq replay` (every one given must match).
#[derive(clap::Args)]
struct DlqFilter {
    /// Only this `x-delay-reason` (unknown_target, too_large, …; see
    /// `dlq list`).
    #[arg(long)]
    reason: Option<String>,
    /// Only records for this `x-target-topic`.
    #[arg(long)]
    target: Option<String>,
    /// Only records with this `x-delay-id`.
    #[arg(long)]
    id: Option<String>,
    /// Only records timestamped at or after: a duration ago ("2h"), epoch
    /// ms or RFC 3339.
    #[arg(long)]
    since: Option<String>,
    /// Only records timestamped before: a duration ago, epoch ms or RFC 3339.
    #[arg(long)]
    until: Option<String>,
}

impl DlqFilter {
    /// The filter, times resolved against now; a bad time is a usage error.
    fn resolve(self) -> Result<dlq::Filter, ExitCode> {
        let now = crate::model::clock::wall_ms();
        let time = |raw: Option<String>, flag: &str| {
            raw.map(|r| dlq::parse_time(&r, now))
                .transpose()
                .map_err(|e| exit::usage(format!("{flag}: {e}")))
        };
        Ok(dlq::Filter {
            since_ms: time(self.since, "--since")?,
            until_ms: time(self.until, "--until")?,
            reason: self.reason,
            target: self.target,
            id: self.id,
        })
    }
}

#[derive(Subcommand)]
enum DlqAction {
    /// Count the dead letters by reason, target and hour.
    #[command(after_help = "Examples:\n  kafka-delay dlq list -b localhost:9092\n  \
kafka-delay dlq list --since 24h --json")]
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: DlqFilter,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish matching dead letters to the ingress topic again (key, value,
    /// timestamp and headers as first published; a due time already past
    /// is delivered at once). The position passed is recorded: the same
    /// replay run twice publishes once.
    #[command(
        after_help = "Examples:\n  kafka-delay dlq replay --reason unknown_target --target orders --dry-run\n  \
kafka-delay dlq replay --reason unknown_target --target orders\n  \
kafka-delay dlq replay --since 2h --position after-outage"
    )]
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: DlqFilter,
        /// Name of the recorded position (consumer group
        /// `<group_id>.dlq.<position>`); a replay with other filters that
        /// must see records an earlier replay passed takes another name.
        #[arg(long, default_value = "replay")]
        position: String,
        /// Count what would be published; publish and record nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Print the Kafka ACLs the service's principal needs (kafka-acls.sh
    /// commands); nothing is changed.
    #[command(
        after_help = "Examples:\n  kafka-delay topics acls --config my.toml --principal User:kafka-delay"
    )]
    Acls {
        #[command(flatten)]
        config: ConfigArg,
        /// The service's principal, e.g. User:kafka-delay.
        #[arg(long)]
        principal: String,
    },
    /// What `apply` would do, changing nothing: create, keep or drift for
    /// every topic, and the tier topics of earlier layouts to retire with
    /// the records they still hold.
    #[command(after_help = "Examples:\n  kafka-delay topics plan --config my.toml")]
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Topic spec file (default: the built-in topics/topics.toml, or
        /// topics.spec_file from the configuration).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete the tier topics of earlier layouts that hold no record past
    /// their committed offsets; keep and name those that still do (exit 1).
    /// Run it once no instance of the old layout runs.
    #[command(after_help = "Examples:\n  kafka-delay topics prune --config my.toml")]
    Prune {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create missing topics, report drift (idempotent).
    #[command(
        after_help = "Examples:\n  kafka-delay topics apply --config config/local.toml -b localhost:9092"
    )]
    Apply {
        #[command(flatten)]
        config: ConfigArg,
        /// Topic spec file (default: the built-in topics/topics.toml, or
        /// topics.spec_file from the configuration).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command line and runs the command; the process exits with
/// the code returned (see [`exit`]).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, check } => match load(&config) {
            Ok(settings) => run::command(&settings, check),
            Err(code) => code,
        },
        Command::Topics {
            action: TopicsAction::Acls { config, principal },
        } => match load(&config) {
            Ok(settings) => topics::acls(&settings, &principal),
            Err(code) => code,
        },
        Command::Topics {
            action: TopicsAction::Apply { config, spec, json },
        } => match load_logged(&config) {
            Ok(settings) => topics::apply(&settings, spec, json),
            Err(code) => code,
        },
        Command::Topics {
            action: TopicsAction::Plan { config, spec, json },
        } => match load_logged(&config) {
            Ok(settings) => topics::plan(&settings, spec, json),
            Err(code) => code,
        },
        Command::Topics {
            action: TopicsAction::Prune { config, json },
        } => match load_logged(&config) {
            Ok(settings) => topics::prune(&settings, json),
            Err(code) => code,
        },
        Command::Dlq {
            action:
                DlqAction::List {
                    config,
                    filter,
                    json,
                },
        } => match (load_logged(&config), filter.resolve()) {
            (Ok(settings), Ok(filter)) => dlq::list_command(&settings, &filter, json),
            (Err(code), _) | (_, Err(code)) => code,
        },
        Command::Dlq {
            action:
                DlqAction::Replay {
                    config,
                    filter,
                    position,
                    dry_run,
                    json,
                },
        } => match (load_logged(&config), filter.resolve()) {
            (Ok(settings), Ok(filter)) => {
                dlq::replay_command(&settings, &filter, &position, dry_run, json)
            }
            (Err(code), _) | (_, Err(code)) => code,
        },
        Command::Pending { config, id, json } => match load_logged(&config) {
            Ok(settings) => pending::command(&settings, id.as_deref(), json),
            Err(code) => code,
        },
        Command::Reschedule {
            config,
            id,
            delay,
            deliver_at,
            schedule,
            zone,
            json,
        } => {
            let settings = match load_logged(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let edit = reschedule::SeriesEdit { schedule, zone };
            let series = edit.schedule.is_some() || edit.zone.is_some();
            match when(delay, deliver_at) {
                Some(when) => {
                    reschedule::command(&settings, &ids_or_stdin(id), (&when, &edit), json)
                }
                None if series => {
                    let now = produce::When::Delay(Duration::ZERO);
                    reschedule::command(&settings, &ids_or_stdin(id), (&now, &edit), json)
                }
                None => exit::usage("give --delay or --deliver-at (or, for a series, --schedule)"),
            }
        }
        Command::Cancel {
            config,
            id,
            target,
            due,
            json,
        } => match load_logged(&config) {
            Ok(settings) => cancel::command(
                &settings,
                &ids_or_stdin(id),
                target.as_deref(),
                due.as_deref(),
                json,
            ),
            Err(code) => code,
        },
        Command::Produce {
            config,
            target,
            delay,
            deliver_at,
            key,
            key_delimiter,
            id,
            headers,
            json,
            value,
        } => {
            let settings = match load_logged(&config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let when = when(delay, deliver_at).unwrap_or(produce::When::Delay(Duration::ZERO));
            let request = produce::Request {
                target,
                when,
                key,
                key_delimiter,
                id,
                headers,
                value,
                json,
            };
            produce::command(&settings, request)
        }
    }
}

/// Prints `value` as pretty JSON on standard output (`--json`).
fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

/// The ids given, or (none given) the non-empty lines of standard input
/// (none when it is a terminal: the command then reports a usage error).
fn ids_or_stdin(ids: Vec<String>) -> Vec<String> {
    use std::io::IsTerminal;
    if !ids.is_empty() || std::io::stdin().is_terminal() {
        return ids;
    }
    produce::stdin_lines()
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

/// The due time `--delay` or `--deliver-at` give (`--deliver-at` wins;
/// clap keeps them exclusive); None when neither is given.
fn when(delay: Option<Duration>, deliver_at: Option<String>) -> Option<produce::When> {
    match (delay, deliver_at) {
        (_, Some(at)) => Some(produce::When::At(at)),
        (Some(d), None) => Some(produce::When::Delay(d)),
        (None, None) => None,
    }
}

/// Loads the configuration; a bad one exits 64.
fn load(config: &ConfigArg) -> Result<Settings, ExitCode> {
    let mut settings = Settings::load(config.config.as_deref()).map_err(exit::usage)?;
    config.apply(&mut settings);
    settings.validate().map_err(exit::usage)?;
    Ok(settings)
}

/// [`load`], then logging as configured (every command that connects).
fn load_logged(config: &ConfigArg) -> Result<Settings, ExitCode> {
    let settings = load(config)?;
    telemetry::init(&settings.log);
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_of(args: &[&str]) -> ConfigArg {
        match Cli::try_parse_from(args).expect("parses").command {
            Command::Pending { config, .. } => config,
            _ => unreachable!("a pending command"),
        }
    }

    #[test]
    fn bootstrap_server_and_properties_from_the_command_line_win() {
        let config = config_of(&[
            "kafka-delay",
            "pending",
            "-b",
            "broker-1:9092,broker-2:9092",
            "-X",
            "socket.timeout.ms=5000",
            "-X",
            "sasl.password=007",
        ]);
        let mut settings = Settings::default();
        settings
            .kafka
            .properties
            .insert("socket.timeout.ms".into(), "60000".into());
        config.apply(&mut settings);
        assert_eq!(
            settings.kafka.bootstrap_servers,
            "broker-1:9092,broker-2:9092"
        );
        assert_eq!(settings.kafka.properties["socket.timeout.ms"], "5000");
        assert_eq!(settings.kafka.properties["sasl.password"], "007");
    }

    #[test]
    fn a_property_without_a_key_or_an_equals_sign_is_refused() {
        for bad in ["novalue", "=5", " =5"] {
            assert!(
                Cli::try_parse_from(["kafka-delay", "pending", "-X", bad]).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(parse_property("a.b=c=d"), Ok(("a.b".into(), "c=d".into())));
        assert_eq!(
            parse_property("empty="),
            Ok(("empty".into(), String::new()))
        );
    }
}

//! Loading the settings: compiled defaults → TOML file → environment
//! overrides (`KAFKA_DELAY__SECTION__KEY`), and back to environment
//! overrides for child processes and containers.
//!
//! Environment values are strings as written: the `config` crate's type
//! guessing is off, and each typed field converts its own string.

use std::path::Path;
use std::time::Duration;

use humantime_serde::Serde;
use serde::Deserialize;

use super::{ConfigError, Settings};

impl Settings {
    /// Loads defaults, then `path` (TOML) if given, then environment
    /// overrides `KAFKA_DELAY__SECTION__KEY` (lists comma-separated), and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(path, None)
    }

    /// [`Settings::load`] with the environment given as a map (`None`: the
    /// process environment).
    ///
    /// Environment values stay strings as written (`007` is not `7`,
    /// `True` is not `true`): a field converts its own string when it is a
    /// number, a flag or a duration, and free text — topic names, client
    /// properties, passwords — reaches the service verbatim. A TOML syntax
    /// error is reported by line and column without quoting the line, which
    /// may hold a secret.
    pub fn load_from(
        path: Option<&Path>,
        env: Option<config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::File {
                path: path.to_owned(),
                problem: error.to_string(),
            })?;
            if let Err(error) = text.parse::<toml::Table>() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    problem: toml_syntax_error(&text, &error),
                });
            }
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("KAFKA_DELAY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(false)
                .source(env),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.normalize_properties();
        settings.validate()?;
        Ok(settings)
    }

    /// Environment overrides (`KAFKA_DELAY__…`) that reproduce these
    /// settings' connection, topics, wheel and HTTP keys and the consumer
    /// properties: how a child process or a container is configured without
    /// a file.
    pub fn env_overrides(&self) -> Vec<(String, String)> {
        let ticks: Vec<String> = self
            .wheel
            .ticks
            .iter()
            .map(|t| format!("{}ms", t.as_millis()))
            .collect();
        let mut env = vec![
            (
                "KAFKA__BOOTSTRAP_SERVERS",
                self.kafka.bootstrap_servers.clone(),
            ),
            ("KAFKA__GROUP_ID", self.kafka.group_id.clone()),
            ("TOPICS__INGRESS", self.topics.ingress.clone()),
            ("TOPICS__DEAD_LETTER", self.topics.dead_letter.clone()),
            ("TOPICS__CANCEL", self.topics.cancel.clone()),
            ("TOPICS__CLOCK", self.topics.clock.clone()),
            ("TOPICS__TIER_PREFIX", self.topics.tier_prefix.clone()),
            (
                "TOPICS__PREVIOUS_TIER_PREFIXES",
                self.topics.previous_tier_prefixes.join(","),
            ),
            ("WHEEL__TICKS", ticks.join(",")),
            ("WHEEL__TOP_SLOTS", self.wheel.top_slots.to_string()),
            (
                "WHEEL__PARTITIONS_PER_SLOT",
                self.wheel.partitions_per_slot.to_string(),
            ),
            (
                "WHEEL__MAX_CLOCK_SKEW",
                format!("{}ms", self.wheel.max_clock_skew.as_millis()),
            ),
            (
                "WHEEL__CLOCK",
                match self.wheel.clock {
                    super::ClockSource::Broker => "broker",
                    super::ClockSource::Host => "host",
                }
                .to_owned(),
            ),
            (
                "WHEEL__SLOT_ORDER",
                match self.wheel.slot_order {
                    super::SlotOrder::Spread => "spread",
                    super::SlotOrder::Sequential => "sequential",
                }
                .to_owned(),
            ),
            (
                "WHEEL__REPLICATION_FACTOR",
                self.wheel.replication_factor.to_string(),
            ),
            (
                "DELIVERY__MODE",
                if self.delivery.exactly_once() {
                    "exactly_once"
                } else {
                    "at_least_once"
                }
                .to_owned(),
            ),
            (
                "SERVICE__STARTUP_TIMEOUT",
                format!("{}ms", self.service.startup_timeout.as_millis()),
            ),
            ("HTTP__ENABLED", self.http.enabled.to_string()),
            ("HTTP__BIND", self.http.bind.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("KAFKA_DELAY__{k}"), v))
        .collect::<Vec<_>>();
        if let Some(id) = &self.delivery.instance_id {
            env.push(("KAFKA_DELAY__DELIVERY__INSTANCE_ID".to_owned(), id.clone()));
        }
        for (section, map) in [
            ("PROPERTIES", &self.kafka.properties),
            ("CONSUMER_PROPERTIES", &self.kafka.consumer_properties),
            ("PRODUCER_PROPERTIES", &self.kafka.producer_properties),
        ] {
            for (k, v) in map {
                let key = k.replace('.', "_").to_uppercase();
                env.push((format!("KAFKA_DELAY__KAFKA__{section}__{key}"), v.clone()));
            }
        }
        env
    }

    /// Environment overrides cannot spell `.` in a key: read `_` as `.`.
    fn normalize_properties(&mut self) {
        for map in [
            &mut self.kafka.properties,
            &mut self.kafka.consumer_properties,
            &mut self.kafka.producer_properties,
        ] {
            *map = std::mem::take(map)
                .into_iter()
                .map(|(k, v)| (k.replace('_', "."), v))
                .collect();
        }
    }
}

/// A list of durations from a TOML array or from one comma-separated
/// string (an environment override).
pub(super) fn durations_or_list<'de, D>(deserializer: D) -> Result<Vec<Serde<Duration>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ticks {
        List(Vec<Serde<Duration>>),
        Text(String),
    }
    match Ticks::deserialize(deserializer)? {
        Ticks::List(list) => Ok(list),
        Ticks::Text(text) => text
            .split(',')
            .map(|part| {
                humantime::parse_duration(part.trim())
                    .map(Serde::from)
                    .map_err(|e| serde::de::Error::custom(format!("tick {part:?}: {e}")))
            })
            .collect(),
    }
}

/// A list of strings, or one comma-separated string (an environment
/// override: `a.,b.`).
pub(super) fn strings_or_list<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Strings {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Strings::deserialize(deserializer)? {
        Strings::List(list) => list,
        Strings::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// The position and message of a TOML syntax error, without the text of
/// the line (it may hold a password).
fn toml_syntax_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("TOML syntax error at line {line}, column {column}: {message}")
        }
        None => format!("TOML syntax error: {message}"),
    }
}

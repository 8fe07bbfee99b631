//! Configuration loading and validation tests.

use super::*;
use std::io::Write;
use std::path::Path;

fn write_toml(text: &str) -> tempfile_path::TempToml {
    tempfile_path::TempToml::new(text)
}

/// A TOML file in the target directory, removed on drop.
mod tempfile_path {
    use std::path::PathBuf;

    pub struct TempToml(pub PathBuf);

    impl TempToml {
        pub fn new(text: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("kafka-delay-config-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{}.toml", fastrand::u64(..)));
            let mut f = std::fs::File::create(&path).unwrap();
            super::Write::write_all(&mut f, text.as_bytes()).unwrap();
            Self(path)
        }
    }

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Loading reads the process environment, which one test changes: every
/// load holds this lock.
static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn load(text: &str) -> Result<Settings, ConfigError> {
    let _env = ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let file = write_toml(text);
    Settings::load(Some(&file.0))
}

fn key_of(err: ConfigError) -> &'static str {
    match err {
        ConfigError::Invalid { key, .. } => key,
        other => panic!("expected a validation error, got {other}"),
    }
}

#[test]
fn example_file_is_the_defaults() {
    let example = {
        let _env = ENV
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Settings::load(Some(Path::new("config/example.toml"))).unwrap()
    };
    let defaults = Settings::default();
    assert_eq!(
        example.kafka.bootstrap_servers,
        defaults.kafka.bootstrap_servers
    );
    assert_eq!(example.wheel.ticks, defaults.wheel.ticks);
    assert_eq!(example.wheel.max_delay, defaults.wheel.max_delay);
    assert_eq!(example.topics.tier_prefix, defaults.topics.tier_prefix);
    let table = example.tier_table().unwrap();
    assert_eq!(
        example.tier_topics(&table),
        vec![
            "delay.1s.s64",
            "delay.1m.s64",
            "delay.1h.s28",
            "delay.1d.s32"
        ]
    );
}

#[test]
fn millisecond_ticks_and_passthrough_properties() {
    let s = load(
        r#"
        [kafka.properties]
        "fetch.wait.max.ms" = 10
        [wheel]
        ticks = ["50ms", "500ms", "5s"]
        "#,
    )
    .unwrap();
    assert_eq!(
        s.kafka
            .properties
            .get("fetch.wait.max.ms")
            .map(String::as_str),
        Some("10")
    );
    let table = s.tier_table().unwrap();
    assert_eq!(
        s.tier_topics(&table),
        vec!["delay.50ms.s23", "delay.500ms.s15", "delay.5s.s32"]
    );
}

#[test]
fn unknown_keys_are_rejected() {
    let err = load("[wheel]\ntick = [\"1s\"]\n").unwrap_err();
    assert!(err.to_string().contains("tick"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    assert_eq!(
        key_of(load("[wheel]\nticks = [\"1s\", \"2s\"]\n").unwrap_err()),
        "wheel.ticks"
    );
    assert_eq!(
        key_of(load("[wheel]\ntop_slots = 2\n").unwrap_err()),
        "wheel.top_slots"
    );
    assert_eq!(
        key_of(load("[topics]\ningress = \"a b\"\n").unwrap_err()),
        "topics.ingress"
    );
    assert_eq!(
        key_of(load("[topics]\nallowed_targets = \"(\"\n").unwrap_err()),
        "topics.allowed_targets"
    );
    assert_eq!(
        key_of(load("[topics]\ndefault_target = \"delay.dlq\"\n").unwrap_err()),
        "topics.default_target"
    );
    assert_eq!(
        key_of(load("[http]\nbind = \"nowhere\"\n").unwrap_err()),
        "http.bind"
    );
    let err = load("[wheel]\nticks = [\"1s\", \"2s\"]\n").unwrap_err();
    assert!(err.to_string().contains("Fix:"), "{err}");
}

#[test]
fn environment_overrides_the_file() {
    // The only test that touches these variables, under the ENV lock.
    let file = write_toml("[wheel]\nticks = [\"1s\"]\n");
    let s = {
        let _env = ENV
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::env::set_var("KAFKA_DELAY__WHEEL__TICKS", "100ms,1s");
        std::env::set_var(
            "KAFKA_DELAY__KAFKA__PROPERTIES__STATISTICS_INTERVAL_MS",
            "5000",
        );
        let s = Settings::load(Some(&file.0));
        std::env::remove_var("KAFKA_DELAY__WHEEL__TICKS");
        std::env::remove_var("KAFKA_DELAY__KAFKA__PROPERTIES__STATISTICS_INTERVAL_MS");
        s
    };
    let s = s.unwrap();
    let table = s.tier_table().unwrap();
    let partitions = s.tier_partitions(&table);
    assert_eq!(
        s.tier_topics(&table),
        vec![
            format!("delay.100ms.s{}", partitions[0]),
            format!("delay.1s.s{}", partitions[1])
        ]
    );
    let interval = s.kafka.properties.get("statistics.interval.ms");
    assert_eq!(interval.map(String::as_str), Some("5000"));
}

#[test]
fn tick_labels() {
    assert_eq!(tick_label(1_000), "1s");
    assert_eq!(tick_label(60_000), "1m");
    assert_eq!(tick_label(86_400_000), "1d");
    assert_eq!(tick_label(90_000), "90s");
    assert_eq!(tick_label(50), "50ms");
}

#[test]
fn delivery_mode_and_transaction_settings_are_checked_by_key() {
    let s = load(
        r#"
        [delivery]
        mode = "exactly_once"
        transaction_interval = "50ms"
        instance_id = "kafka-delay-0"
        "#,
    )
    .unwrap();
    assert!(s.delivery.exactly_once());
    assert_eq!(
        s.transactional_id("1s"),
        "kafka-delay.1s.kafka-delay-0",
        "<group_id>.<loop>.<instance_id>"
    );
    assert!(!Settings::default().delivery.exactly_once());
    for (text, key) in [
        ("mode = \"twice\"", ""),
        (
            "transaction_max_records = 0",
            "delivery.transaction_max_records",
        ),
        (
            "transaction_interval = \"0s\"",
            "delivery.transaction_interval",
        ),
        (
            "transaction_interval = \"1s\"\ntransaction_timeout = \"5s\"",
            "delivery.transaction_timeout",
        ),
        ("instance_id = \"has space\"", "delivery.instance_id"),
        ("instance_id = \"\"", "delivery.instance_id"),
    ] {
        let result = load(&format!("[delivery]\n{text}\n"));
        match (result, key) {
            (Err(ConfigError::Load(e)), "") => assert!(e.to_string().contains("twice"), "{e}"),
            (Err(e), key) => assert_eq!(key_of(e), key, "{text}"),
            (Ok(_), _) => panic!("{text} accepted"),
        }
    }
}

#[test]
fn the_default_instance_id_is_host_and_http_port() {
    let mut s = Settings::default();
    s.http.bind = "127.0.0.1:9123".into();
    let id = s.transactional_id("ingress");
    assert!(id.starts_with("kafka-delay.ingress."), "{id}");
    assert!(id.ends_with("-9123"), "{id}");
}

/// Settings from `text` (a TOML file, may be empty) and `env` as the
/// environment (never the process's own).
fn load_with_env(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let file = write_toml(text);
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load_from(Some(&file.0), Some(env))
}

#[test]
fn environment_values_stay_strings_as_written() {
    let s = load_with_env(
        "",
        &[
            ("KAFKA_DELAY__TOPICS__INGRESS", "007"),
            ("KAFKA_DELAY__TOPICS__DEAD_LETTER", "1e3"),
            ("KAFKA_DELAY__TOPICS__CANCEL", "True"),
            ("KAFKA_DELAY__KAFKA__PROPERTIES__SASL_PASSWORD", "007"),
            ("KAFKA_DELAY__KAFKA__PRODUCER_PROPERTIES__CLIENT_ID", "1.50"),
            ("KAFKA_DELAY__KAFKA__GROUP_ID", "0123"),
        ],
    )
    .unwrap();
    assert_eq!(s.topics.ingress, "007");
    assert_eq!(s.topics.dead_letter, "1e3");
    assert_eq!(s.topics.cancel, "True");
    assert_eq!(s.kafka.group_id, "0123");
    assert_eq!(
        s.kafka.properties.get("sasl.password").map(String::as_str),
        Some("007")
    );
    assert_eq!(
        s.kafka
            .producer_properties
            .get("client.id")
            .map(String::as_str),
        Some("1.50")
    );
}

#[test]
fn environment_numbers_flags_durations_and_ticks_still_convert() {
    let s = load_with_env(
        "",
        &[
            ("KAFKA_DELAY__WHEEL__TICKS", "100ms, 1s,10s"),
            ("KAFKA_DELAY__WHEEL__TOP_SLOTS", "40"),
            ("KAFKA_DELAY__WHEEL__REPLICATION_FACTOR", "1"),
            ("KAFKA_DELAY__WHEEL__MIN_INSYNC_REPLICAS", "1"),
            ("KAFKA_DELAY__HTTP__ENABLED", "false"),
            ("KAFKA_DELAY__SERVICE__COMMIT_INTERVAL", "250ms"),
        ],
    )
    .unwrap();
    let ticks: Vec<u128> = s.wheel.ticks.iter().map(|t| t.as_millis()).collect();
    assert_eq!(ticks, vec![100, 1_000, 10_000]);
    assert_eq!(s.wheel.top_slots, 40);
    assert_eq!(s.wheel.replication_factor, 1);
    assert_eq!(s.wheel.min_insync_replicas, Some(1));
    assert!(!s.http.enabled);
    assert_eq!(s.service.commit_interval.as_millis(), 250);
    let err = load_with_env("", &[("KAFKA_DELAY__WHEEL__TICKS", "1s,soon")]).unwrap_err();
    assert!(err.to_string().contains("soon"), "{err}");
}

#[test]
fn a_toml_syntax_error_names_the_line_but_never_prints_it() {
    let text =
        "[kafka.properties]\n\"sasl.username\" = \"svc\"\n\"sasl.password\" = \"hunter2-s3cret\n";
    for result in [load_with_env(text, &[]), load(text)] {
        let err = result.unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
    }
}

#[test]
fn debug_output_of_settings_redacts_secret_properties() {
    let s = load_with_env(
        "[kafka.properties]\n\"sasl.password\" = \"hunter2-s3cret\"\n\"ssl.key.password\" = \"k3y-s3cret\"\n\"client.id\" = \"visible-client\"\n",
        &[("KAFKA_DELAY__KAFKA__CONSUMER_PROPERTIES__SASL_OAUTHBEARER_CLIENT_SECRET", "env-s3cret")],
    )
    .unwrap();
    let shown = format!("{s:?} {s:#?}");
    for secret in ["hunter2", "k3y-s3cret", "env-s3cret"] {
        assert!(!shown.contains(secret), "{secret} leaked in {shown}");
    }
    assert!(shown.contains("visible-client") && shown.contains("<redacted>"));
}

#[test]
fn tick_labels_parse_back_and_retired_tiers_are_recognised() {
    for tick_ms in [
        50, 100, 500, 1_000, 5_000, 60_000, 3_600_000, 86_400_000, 1_500,
    ] {
        assert_eq!(parse_tick_label(&tick_label(tick_ms)), Some(tick_ms));
    }
    for label in [
        "",
        "s",
        "60s",
        "0s",
        "1x",
        "1.5s",
        "ingress",
        "dead-letter",
        "-1s",
    ] {
        assert_eq!(parse_tick_label(label), None, "{label:?}");
    }
    let settings = Settings::default();
    let table = settings.tier_table().unwrap();
    let current = settings.tier_topics(&table);
    let prefix = &settings.topics.tier_prefix;
    assert_eq!(
        settings.retired_tier_label(&format!("{prefix}50ms"), &current),
        Some("50ms".to_owned())
    );
    assert_eq!(settings.retired_tier_label(&current[0], &current), None);
    assert_eq!(
        settings.retired_tier_label(&settings.topics.ingress, &current),
        None
    );
    assert_eq!(
        settings.retired_tier_label(&settings.topics.cancel, &current),
        None
    );
    assert_eq!(settings.retired_tier_label("other.1s", &current), None);
    // A re-partitioned tier's topic (`.p<partitions>`) is a tier too, and
    // so is the plain name of the sequential order.
    assert_eq!(
        settings.retired_tier_label(&format!("{prefix}50ms.p46"), &current),
        Some("50ms.p46".to_owned())
    );
    assert_eq!(
        settings.retired_tier_label(&format!("{prefix}1s"), &current),
        Some("1s".to_owned())
    );
    // Under a previous tier_prefix: found only when listed.
    let mut moved = settings.clone();
    moved.topics.tier_prefix = format!("{prefix}v2.");
    let now = moved.tier_topics(&table);
    assert_eq!(moved.previous_prefix_tier(&current[0], &now), None);
    moved.topics.previous_tier_prefixes = vec![prefix.clone()];
    assert_eq!(
        moved.previous_prefix_tier(&current[0], &now).as_deref(),
        current[0].strip_prefix(prefix.as_str())
    );
    assert_eq!(moved.previous_prefix_tier(&now[0], &now), None);
    assert_eq!(
        moved.previous_prefix_tier(&moved.topics.ingress, &now),
        None
    );
    for not_tier in ["50ms.p", "50ms.px", "50ms.q46", "clock"] {
        assert_eq!(
            settings.retired_tier_label(&format!("{prefix}{not_tier}"), &current),
            None,
            "{not_tier}"
        );
    }
}

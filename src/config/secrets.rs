//! Secret-looking client properties: never printed, in `Debug` output of
//! the settings or in errors librdkafka reports about them.

use std::collections::BTreeMap;

use super::KafkaSettings;

/// Keys whose values must never be printed: librdkafka's passwords, keys,
/// secrets and tokens, however they are spelt.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "pass",
        "secret",
        "token",
        "jaas",
        "key",
        "credential",
        "pem",
        "cert",
    ]
    .iter()
    .any(|word| key.contains(word))
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Redacted<'a>(&'a BTreeMap<String, String>);
        impl std::fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(k, v)| {
                        let shown = if is_secret_key(k) {
                            "<redacted>"
                        } else {
                            v.as_str()
                        };
                        (k, shown)
                    }))
                    .finish()
            }
        }
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("group_id", &self.group_id)
            .field("properties", &Redacted(&self.properties))
            .field("consumer_properties", &Redacted(&self.consumer_properties))
            .field("producer_properties", &Redacted(&self.producer_properties))
            .finish()
    }
}

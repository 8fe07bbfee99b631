//! `kafka-delay produce`: publish delayed records from the shell.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::config::Settings;
use crate::kafka;
use crate::model::envelope;

use super::exit;

/// When the records are due.
#[derive(Debug, Clone)]
pub enum When {
    /// `x-delay`: this long after the record timestamp.
    Delay(Duration),
    /// `x-deliver-at`: epoch ms or RFC 3339, passed through verbatim.
    At(String),
}

/// One record to publish: its key (None: no key) and value.
pub type Line = (Option<String>, String);

/// Publishes one record per `(key, value)` to the ingress topic with
/// routing headers for `target` and `when`, `x-delay-id` when `id` is set,
/// and `headers` (name, value) in order. Returns the number of records
/// acknowledged.
pub fn produce(
    settings: &Settings,
    target: &str,
    when: &When,
    id: Option<&str>,
    headers: &[(String, String)],
    records: impl Iterator<Item = Line>,
) -> Result<usize, KafkaError> {
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka::producer_config(settings).create()?;
    let (name, value) = match when {
        When::Delay(d) => (envelope::DELAY, d.as_millis().to_string()),
        When::At(at) => (envelope::DELIVER_AT, at.clone()),
    };
    let mut count = 0;
    let user = headers;
    for (key, payload) in records {
        let mut headers = OwnedHeaders::new_with_capacity(user.len() + 3);
        for (name, value) in user {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let headers = headers
            .insert(Header {
                key: name,
                value: Some(&value),
            })
            .insert(Header {
                key: envelope::TARGET_TOPIC,
                value: Some(target),
            });
        let headers = match id {
            Some(id) => headers.insert(Header {
                key: envelope::ID,
                value: Some(id),
            }),
            None => headers,
        };
        let mut record = BaseRecord::<str, str>::to(&settings.topics.ingress)
            .payload(&payload)
            .headers(headers);
        if let Some(key) = &key {
            record = record.key(key);
        }
        send(&producer, record)?;
        count += 1;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(count)
}

/// Sends `record`, waiting while librdkafka's queue is full. Errors: any
/// other refusal.
pub fn send<K, P>(
    producer: &ThreadedProducer<DefaultProducerContext>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    while let Err((error, back)) = producer.send(record) {
        if !matches!(
            error,
            KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
        ) {
            return Err(error);
        }
        record = back;
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Values from standard input, one per line.
pub fn stdin_lines() -> impl Iterator<Item = String> {
    std::io::stdin().lock().lines().map_while(Result::ok)
}

/// The records of standard input, one per line: with `delimiter`, the key
/// is the text before its first occurrence and the value the rest (kcat's
/// `-K`); a line without it has no key. Without `delimiter` every line is
/// a value with key `key`.
pub fn split_lines(
    lines: impl Iterator<Item = String>,
    key: Option<String>,
    delimiter: Option<String>,
) -> impl Iterator<Item = Line> {
    lines.map(move |line| match &delimiter {
        Some(d) => match line.split_once(d.as_str()) {
            Some((k, v)) => (Some(k.to_owned()), v.to_owned()),
            None => (None, line),
        },
        None => (key.clone(), line),
    })
}

/// What `kafka-delay produce` was asked to publish.
pub(crate) struct Request {
    pub(crate) target: String,
    pub(crate) when: When,
    pub(crate) key: Option<String>,
    pub(crate) key_delimiter: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) value: Option<String>,
    pub(crate) json: bool,
}

/// `kafka-delay produce`: publishes the value, or one record per line of
/// standard input. A bad `--deliver-at` or header publishes nothing
/// (exit 64): the service would dead-letter every record of it.
pub(crate) fn command(settings: &Settings, request: Request) -> ExitCode {
    if let When::At(at) = &request.when {
        if let Err(error) = envelope::parse_deliver_at(at.as_bytes()) {
            return exit::usage(format!("--deliver-at: {error}; nothing was published"));
        }
    }
    if let Some((name, _)) = request.headers.iter().find(|(name, _)| {
        envelope::is_owned_header(name.as_bytes())
            || envelope::ROUTING_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name.trim()))
    }) {
        return exit::usage(format!(
            "--header {name}: a header the service owns (give --target, --delay, --deliver-at, --id instead); nothing was published"
        ));
    }
    let records: Box<dyn Iterator<Item = Line>> = match request.value {
        Some(v) => Box::new(std::iter::once((request.key, v))),
        None => Box::new(split_lines(
            stdin_lines(),
            request.key,
            request.key_delimiter,
        )),
    };
    let id = request.id.as_deref();
    match produce(
        settings,
        &request.target,
        &request.when,
        id,
        &request.headers,
        records,
    ) {
        Ok(n) if request.json => {
            let report = serde_json::json!({"published": n, "topic": settings.topics.ingress});
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(n) => {
            println!("{n} records published to {}", settings.topics.ingress);
            ExitCode::SUCCESS
        }
        Err(error) => exit::fail(kafka::describe(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_delimiter_splits_each_line_at_its_first_occurrence() {
        let lines = ["k1:v1", "k2:a:b", "no-key", ":empty-key"].map(String::from);
        let got: Vec<Line> = split_lines(lines.into_iter(), None, Some(":".into())).collect();
        assert_eq!(
            got,
            [
                (Some("k1".into()), "v1".into()),
                (Some("k2".into()), "a:b".into()),
                (None, "no-key".into()),
                (Some(String::new()), "empty-key".into()),
            ]
        );
        let keyed: Vec<Line> =
            split_lines(["x:y".to_owned()].into_iter(), Some("k".into()), None).collect();
        assert_eq!(keyed, [(Some("k".into()), "x:y".into())]);
    }
}

//! `kafka-delay pending` (and the look-up behind `reschedule`): what the
//! tiers hold — pending records per tier and per target, the oldest and
//! latest due time, a histogram of due times — and one record by its
//! `x-delay-id`.
//!
//! Every tier topic is read from its consumer group's committed offsets
//! (the tier loops' `<group_id>.<tick>`) to the end offsets taken when the
//! scan starts, by a consumer of its own that joins no group: the service
//! is not disturbed. Not seen: records still in the ingress topic (the
//! ingress group's lag) and records in an instance's due-soon timer (due
//! within `2 × tick₀ + lead`). A record that has just moved to a lower
//! tier may be counted twice until the upper tier's offsets are committed
//! (`service.commit_interval`).

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use super::exit;
use crate::config::{tick_label, Settings};
use crate::kafka;
use crate::kafka::native::RecordHeaders;
use crate::model::{envelope, series};

/// Timeout of each offset query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bounds (seconds from now) and labels of the due-time histogram.
const HISTOGRAM: [(i64, &str); 7] = [
    (0, "overdue"),
    (60, "< 1 min"),
    (600, "< 10 min"),
    (3_600, "< 1 h"),
    (86_400, "< 1 day"),
    (7 * 86_400, "< 7 days"),
    (i64::MAX, ">= 7 days"),
];

/// Pending records of one tier.
#[derive(Debug, Clone, Serialize)]
pub struct TierCount {
    /// Tier label (`1s`, `1m`, …).
    pub tier: String,
    /// The tier's topic.
    pub topic: String,
    /// Records between the service's committed offsets and the end.
    pub records: u64,
    /// The latest due time among them, epoch ms (None: no record).
    pub latest_due_ms: Option<i64>,
}

/// A record found by id: where it is, when it is due, and what it holds
/// (for `reschedule`).
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// Tier label (`1s`, `1m`, …).
    pub tier: String,
    /// Partition of the tier topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// Due time, epoch ms.
    pub due_ms: i64,
    /// `x-target-topic`: where it will be delivered.
    pub target: String,
    /// Ingress timestamp, epoch ms.
    pub original_timestamp_ms: i64,
    /// For a series: its `x-delay-schedule` expression…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// …its `x-delay-schedule-zone`, when set…
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// …and the number of the occurrence this record delivers at `due_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<u64>,
    #[serde(skip)]
    /// Record key, as published.
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    /// Record value, as published.
    pub value: Option<Vec<u8>>,
    /// The record's own headers (not the service's), raw bytes.
    #[serde(skip)]
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What a scan found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scan {
    /// When the scan started, epoch ms.
    pub scanned_at_ms: i64,
    /// Pending records, all tiers.
    pub total: u64,
    /// Pending records per tier, finest first.
    pub tiers: Vec<TierCount>,
    /// Pending records per target topic.
    pub by_target: BTreeMap<String, u64>,
    /// Earliest due time, epoch ms.
    pub oldest_due_ms: Option<i64>,
    /// Latest due time, epoch ms.
    pub latest_due_ms: Option<i64>,
    /// (bucket label, records), from overdue to ≥ 7 days.
    pub histogram: Vec<(String, u64)>,
    /// Tier records without the service's headers (not counted above).
    pub unreadable: u64,
    /// The record with the `--id` asked for, if any (the copy in the lowest
    /// tier: the newest).
    pub found: Option<Found>,
    /// Of [`scan_ids`]: the record found per id asked for (as `found`).
    #[serde(skip)]
    pub found_by_id: HashMap<String, Found>,
}

/// Reads every tier — and every tier topic of an earlier layout still
/// found in the cluster, labelled `<tick> (retired)` — from its committed
/// offsets to its end. `id`: also find that record. `progress(read, total)` is called as records are read.
pub fn scan(
    settings: &Settings,
    id: Option<&str>,
    progress: impl FnMut(u64, u64),
) -> Result<Scan, KafkaError> {
    let ids: Vec<&str> = id.into_iter().collect();
    let mut scan = scan_ids(settings, &ids, progress)?;
    scan.found = id.and_then(|id| scan.found_by_id.remove(id));
    Ok(scan)
}

/// [`scan`] finding every record of `ids` in one read (in
/// [`Scan::found_by_id`]; `found` stays None).
pub fn scan_ids(
    settings: &Settings,
    ids: &[&str],
    mut progress: impl FnMut(u64, u64),
) -> Result<Scan, KafkaError> {
    let ids: std::collections::HashSet<&str> = ids.iter().copied().collect();
    let table = settings
        .tier_table()
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
    let settings = &crate::kafka::layout::resolve(settings)
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
    let mut labels: Vec<String> = table
        .tiers()
        .iter()
        .map(|t| tick_label(t.tick_ms))
        .collect();
    let mut topics = settings.tier_topics(&table);
    // Tier topics of earlier layouts still being drained count too.
    let retired = crate::kafka::layout::retired_tiers(settings)
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
    let groups: Vec<String> = settings
        .tier_group_labels(&table)
        .iter()
        .map(|label| settings.group_of(label))
        .chain(retired.iter().map(|r| r.group.clone()))
        .collect();
    for r in retired {
        labels.push(format!("{} (retired)", r.label));
        topics.push(r.topic);
    }
    let now = crate::model::clock::now_ms();
    let mut scan = Scan {
        scanned_at_ms: now,
        histogram: HISTOGRAM.iter().map(|(_, l)| (l.to_string(), 0)).collect(),
        ..Default::default()
    };
    // (topic, partition) → (start, end)
    let mut ranges: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    for ((label, topic), group) in labels.iter().zip(&topics).zip(&groups) {
        let reader: BaseConsumer =
            crate::kafka::consumer_config(settings, group, false).create()?;
        let metadata = reader.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                tpl.add_partition(topic, p.id());
            }
        }
        let committed = reader.committed_offsets(tpl.clone(), QUERY_TIMEOUT)?;
        let mut ends = TopicPartitionList::new();
        for e in tpl.elements() {
            ends.add_partition_offset(topic, e.partition(), Offset::End)?;
        }
        let ends = reader.offsets_for_times(ends, QUERY_TIMEOUT)?;
        for e in ends.elements() {
            let Offset::Offset(end) = e.offset() else {
                continue;
            };
            let start = match committed
                .find_partition(topic, e.partition())
                .map(|c| c.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => {
                    let (low, _) = reader.fetch_watermarks(topic, e.partition(), QUERY_TIMEOUT)?;
                    low
                }
            };
            if start < end {
                ranges.insert((topic.clone(), e.partition()), (start, end));
            }
        }
        scan.tiers.push(TierCount {
            tier: label.clone(),
            topic: topic.clone(),
            records: 0,
            latest_due_ms: None,
        });
    }
    let total: u64 = ranges.values().map(|(s, e)| (e - s) as u64).sum();
    progress(0, total);
    if ranges.is_empty() {
        return Ok(scan);
    }
    let group = format!("{}.pending-scan", settings.kafka.group_id);
    let consumer: BaseConsumer = crate::kafka::consumer_config(settings, &group, true).create()?;
    let mut tpl = TopicPartitionList::new();
    for ((topic, p), (start, _)) in &ranges {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*start))?;
    }
    consumer.assign(&tpl)?;
    let tier_of: HashMap<&str, usize> = topics
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut done: std::collections::HashSet<(String, i32)> = std::collections::HashSet::new();
    let mut read = 0_u64;
    let mut last_progress = Instant::now();
    let mut idle_since = Instant::now();
    while done.len() < ranges.len() {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            if idle_since.elapsed() > QUERY_TIMEOUT {
                return Err(KafkaError::ClientCreation(
                    "no records for 10 s before the end of the tier topics".into(),
                ));
            }
            continue;
        };
        idle_since = Instant::now();
        let msg = match result {
            Ok(msg) => msg,
            // The end of a partition (offsets may have gaps): it is done.
            // (It names no topic: every tier's partition `p` is checked.)
            Err(KafkaError::PartitionEOF(p)) => {
                for (key, (_, end)) in &ranges {
                    if key.1 == p {
                        let position = consumer
                            .position()
                            .ok()
                            .and_then(|tpl| tpl.find_partition(&key.0, p).map(|e| e.offset()));
                        if matches!(position, Some(Offset::Offset(o)) if o >= *end) {
                            done.insert(key.clone());
                        }
                    }
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        let key = (msg.topic().to_owned(), msg.partition());
        let Some(&(_, end)) = ranges.get(&key) else {
            continue;
        };
        if msg.offset() >= end {
            done.insert(key);
            continue;
        }
        if msg.offset() == end - 1 {
            done.insert(key);
        }
        read += 1;
        let tier = tier_of[msg.topic()];
        count(&mut scan, &msg, tier, &labels[tier], &ids, now);
        if last_progress.elapsed() > Duration::from_millis(100) {
            last_progress = Instant::now();
            progress(read, total);
        }
    }
    progress(read, total);
    Ok(scan)
}

fn count(
    scan: &mut Scan,
    msg: &rdkafka::message::BorrowedMessage<'_>,
    tier: usize,
    label: &str,
    ids: &std::collections::HashSet<&str>,
    now: i64,
) {
    let view = msg.header_view();
    let text = |name: &str| {
        view.iter()
            .find(|(k, _)| *k == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v?).ok())
    };
    let number = |name: &str| text(name).and_then(|t| t.parse::<i64>().ok());
    let (Some(due), Some(target)) = (number(envelope::DUE_AT), text(envelope::TARGET)) else {
        scan.unreadable += 1;
        return;
    };
    scan.total += 1;
    scan.tiers[tier].records += 1;
    let latest = &mut scan.tiers[tier].latest_due_ms;
    *latest = Some(latest.map_or(due, |d| d.max(due)));
    *scan.by_target.entry(target.to_owned()).or_default() += 1;
    scan.oldest_due_ms = Some(scan.oldest_due_ms.map_or(due, |d| d.min(due)));
    scan.latest_due_ms = Some(scan.latest_due_ms.map_or(due, |d| d.max(due)));
    let in_s = (due - now).div_euclid(1000);
    let bucket = HISTOGRAM
        .iter()
        .position(|(bound, _)| {
            if *bound == 0 {
                due <= now
            } else {
                in_s < *bound
            }
        })
        .unwrap_or(HISTOGRAM.len() - 1);
    scan.histogram[bucket].1 += 1;
    let Some(id) = text(envelope::ID).filter(|id| ids.contains(id)) else {
        return;
    };
    let occurrence = number(series::OCCURRENCE).map(|n| n as u64);
    let newer = scan.found_by_id.get(id).is_none_or(|f| {
        // A series: the record of its latest occurrence (the one before
        // may still be uncommitted, in another partition).
        if let (Some(mine), Some(theirs)) = (occurrence, f.occurrence) {
            if mine != theirs {
                return mine > theirs;
            }
        }
        let f_tier = scan
            .tiers
            .iter()
            .position(|t| t.tier == f.tier)
            .unwrap_or(usize::MAX);
        tier < f_tier || (tier == f_tier && msg.offset() > f.offset)
    });
    if newer {
        let found = Found {
            tier: label.to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            due_ms: due,
            target: target.to_owned(),
            original_timestamp_ms: number(envelope::ORIGINAL_TIMESTAMP).unwrap_or_default(),
            schedule: text(series::SCHEDULE).map(str::to_owned),
            zone: text(series::ZONE).map(str::to_owned),
            occurrence,
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers: view
                .iter()
                .filter(|(k, _)| !envelope::is_owned_header(k))
                .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                .collect(),
        };
        scan.found_by_id.insert(id.to_owned(), found);
    }
}

/// The scan as text: totals per tier and target, due-time range and
/// histogram, and the record found by id.
pub fn render(scan: &Scan, id: Option<&str>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "pending records in the tiers: {}", scan.total);
    for t in &scan.tiers {
        let _ = writeln!(
            out,
            "  tier {:<6} {:<32} {:>10}",
            t.tier, t.topic, t.records
        );
    }
    if !scan.by_target.is_empty() {
        let _ = writeln!(out, "by target:");
        for (target, n) in &scan.by_target {
            let _ = writeln!(out, "  {target:<40} {n:>10}");
        }
    }
    if let (Some(oldest), Some(latest)) = (scan.oldest_due_ms, scan.latest_due_ms) {
        let _ = writeln!(
            out,
            "due from {} to {}",
            crate::model::clock::rfc3339_ms(oldest),
            crate::model::clock::rfc3339_ms(latest)
        );
        let _ = writeln!(out, "due in:");
        let widest = scan
            .histogram
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(1)
            .max(1);
        for (label, n) in &scan.histogram {
            let bar = "#".repeat(((n * 40).div_ceil(widest)) as usize);
            let _ = writeln!(out, "  {label:<10} {n:>10} {bar}");
        }
    }
    if scan.unreadable > 0 {
        let _ = writeln!(
            out,
            "tier records without the service's headers: {}",
            scan.unreadable
        );
    }
    if let Some(id) = id {
        match &scan.found {
            Some(f) => {
                let _ = writeln!(
                    out,
                    "x-delay-id {id}: pending in tier {} (partition {}, offset {}), due {} for {}",
                    f.tier,
                    f.partition,
                    f.offset,
                    crate::model::clock::rfc3339_ms(f.due_ms),
                    f.target
                );
                if let Some(schedule) = &f.schedule {
                    let _ = writeln!(
                        out,
                        "  a series: {schedule:?} in {}; that is its occurrence {}",
                        f.zone.as_deref().unwrap_or("UTC"),
                        f.occurrence.unwrap_or(1)
                    );
                }
            }
            None => {
                let _ = writeln!(
                    out,
                    "x-delay-id {id}: not in the tiers (delivered, or still in the ingress topic or an instance's due-soon timer)"
                );
            }
        }
    }
    out
}

/// `kafka-delay pending`: a progress bar on standard error while it reads.
pub(crate) fn command(settings: &Settings, id: Option<&str>, json: bool) -> ExitCode {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} tier records read ({eta})")
            .expect("valid template"),
    );
    let result = scan(settings, id, |read, total| {
        bar.set_length(total);
        bar.set_position(read);
    });
    bar.finish_and_clear();
    match result {
        Ok(scan) => {
            if json {
                super::print_json(&scan);
            } else {
                print!("{}", render(&scan, id));
            }
            // `--id` that no tier holds: not found (as reschedule reports it).
            if id.is_some() && scan.found.is_none() {
                ExitCode::from(exit::NOT_FOUND)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => exit::fail(kafka::describe(&error)),
    }
}

//! Series: occurrences of recurring schedules by outcome.

use super::*;

/// What became of each due record of a series (`model::series`).
pub struct SeriesMetrics {
    occurrences: [IntCounter; 4],
}

/// The outcome of a series' record that came due.
#[derive(Debug, Clone, Copy)]
pub enum SeriesOutcome {
    /// Its occurrence was delivered.
    Delivered = 0,
    /// Skipped by the missed-occurrence policy (`skip`, or `latest`'s older ones).
    Skipped = 1,
    /// A twin of an occurrence this instance handled already (a re-read
    /// after a crash): dropped, so the series does not run twice.
    Twin = 2,
    /// The series ended: its count or end reached, or its next occurrence
    /// beyond the maximum delay.
    Ended = 3,
}

impl SeriesMetrics {
    /// Registers this domain's metrics in `r`.
    pub(super) fn new(r: &Registry) -> Self {
        let occurrences = counter_vec(
            r,
            "kafka_delay_series_occurrences_total",
            "Due records of recurring series by outcome: delivered, skipped (missed-occurrence \
             policy), twin (a copy re-read after a crash, dropped), ended (the series' last).",
            "outcome",
        );
        Self {
            occurrences: ["delivered", "skipped", "twin", "ended"]
                .map(|o| occurrences.with_label_values(&[o])),
        }
    }

    /// Counts one due record of a series.
    pub fn counted(&self, outcome: SeriesOutcome) {
        self.occurrences[outcome as usize].inc();
    }
}

//! The partition state machine, with a client that never connects (pause
//! and resume only set local flags there); the integration tests drive the
//! same code against a real broker.

use super::*;
use crate::delivery::ledger::Book;

/// A table and what it asked librdkafka to do.
struct Fixture {
    requests: Receiver<PauseRequest>,
}

impl Fixture {
    fn requests(&self) -> Vec<PauseRequest> {
        self.requests.try_iter().collect()
    }
}

fn record(offset: i64) -> OwnedMessage {
    crate::test_support::bare_record(0, offset)
}

fn table(now: i64) -> (PartitionTable, Fixture) {
    let mut book = Book::default();
    let list: Vec<(i32, Assignment)> = (0..3).map(|p| (p, book.register("t", p))).collect();
    let (pauser, requests) = Pauser::channel();
    let mut t = PartitionTable::new(pauser);
    t.assign(&list, now);
    (t, Fixture { requests })
}

#[test]
fn a_held_head_pauses_until_its_release_then_fetching_resumes() {
    let (mut t, f) = table(0);
    assert_eq!(
        f.requests(),
        vec![PauseRequest::Resume(vec![0, 1, 2])],
        "assignment resumes explicitly"
    );
    t.note_record(1, 10, 5);
    t.hold(1, record(10), 1_000, 1_200, 5);
    assert_eq!(
        t.get(1).unwrap().phase,
        Phase::Holding { release_ms: 1_000 }
    );
    assert!(t.get(1).unwrap().paused);
    assert_eq!(f.requests(), vec![PauseRequest::Pause(vec![1])]);
    t.defer(1, record(11));
    assert_eq!(t.due(999), Vec::<i32>::new());
    assert_eq!(t.due(1_000), vec![1]);
    assert_eq!(t.next_deadline(), Some(1_000));
    assert_eq!(t.oldest_held_due(), Some(1_200));
    t.wake(1);
    assert_eq!(
        t.pop_held(1).map(|m| rdkafka::Message::offset(&m)),
        Some(10)
    );
    assert_eq!(
        t.pop_held(1).map(|m| rdkafka::Message::offset(&m)),
        Some(11)
    );
    t.settle(1, 1_000);
    assert_eq!(f.requests(), vec![PauseRequest::Resume(vec![1])]);
    let part = t.get(1).unwrap();
    assert!(!part.paused && part.phase == Phase::Fetching);
    assert_eq!(part.resumed_at_ms, 1_000);
}

#[test]
fn only_a_fresh_end_of_partition_lets_a_partition_sleep() {
    let (mut t, _f) = table(0);
    let next_turn = |_| (60_000, 0);
    // No EOF since the resume: stays awake however long it is quiet.
    t.sleep_drained(10_000, 1_000, next_turn);
    assert_eq!(t.get(0).unwrap().phase, Phase::Fetching);
    t.note_record(0, 3, 9_000);
    t.note_eof(0, None, 10_000);
    t.sleep_drained(10_500, 1_000, next_turn);
    assert_eq!(t.get(0).unwrap().phase, Phase::Fetching, "grace not over");
    t.sleep_drained(11_000, 1_000, next_turn);
    assert_eq!(
        t.get(0).unwrap().phase,
        Phase::Sleeping { until_ms: 60_000 }
    );
    assert!(t.get(0).unwrap().paused);
    // Woken for its turn: the old EOF no longer counts.
    t.wake(0);
    t.settle(0, 60_000);
    t.sleep_drained(70_000, 1_000, next_turn);
    assert_eq!(t.get(0).unwrap().phase, Phase::Fetching);
    // An EOF of a paused partition is stale and ignored.
    t.set_throttled(0, true, 70_000);
    t.note_eof(0, None, 70_001);
    t.set_throttled(0, false, 70_002);
    t.sleep_drained(80_000, 1_000, next_turn);
    assert_eq!(t.get(0).unwrap().phase, Phase::Fetching);
}

#[test]
fn a_drained_partition_stays_awake_until_the_bucket_it_released_ends() {
    let (mut t, _f) = table(0);
    t.note_record(0, 3, 1_000);
    t.note_eof(0, None, 1_000);
    // Grace is over at 2 000, but records of the released bucket may still
    // be appended (late) until it ends at 2 500: keep fetching them.
    t.sleep_drained(2_000, 1_000, |_| (60_000, 2_500));
    assert_eq!(t.get(0).unwrap().phase, Phase::Fetching);
    t.sleep_drained(2_500, 1_000, |_| (60_000, 2_500));
    assert_eq!(
        t.get(0).unwrap().phase,
        Phase::Sleeping { until_ms: 60_000 }
    );
}

#[test]
fn the_watcher_wakes_sleepers_with_new_records_and_resumes_stalled_partitions() {
    let (mut t, _f) = table(0);
    for p in 0..3 {
        t.note_record(p, 9, 100);
        t.note_eof(p, None, 100);
    }
    t.sleep_drained(2_000, 1_000, |_| (60_000, 0));
    assert_eq!(t.counts(), (3, 0));
    // Partition 0 had a record appended, 1 did not.
    let report = WatchReport {
        issued_at_ms: 3_000,
        ends: vec![(0, 11), (1, 10)],
        committed: vec![(0, 5)],
    };
    let outcome = t.apply_watch(&report, 3_100, 5_000);
    assert_eq!(outcome.woken, vec![0]);
    assert_eq!(t.get(0).unwrap().phase, Phase::Fetching);
    assert!(!t.get(0).unwrap().paused);
    assert_eq!(
        t.get(1).unwrap().phase,
        Phase::Sleeping { until_ms: 60_000 }
    );
    // Partition 0 now fetches (resumed at 3 100) but nothing arrives while
    // its end is ahead.
    let soon = WatchReport {
        issued_at_ms: 7_000,
        ends: vec![(0, 11)],
        committed: vec![],
    };
    assert!(t.apply_watch(&soon, 7_000, 5_000).stalled.is_empty());
    let later = WatchReport {
        issued_at_ms: 8_101,
        ..soon
    };
    assert_eq!(t.apply_watch(&later, 8_101, 5_000).stalled, vec![0]);
    assert_eq!(t.counts().1, 1);
    t.note_record(0, 10, 8_200);
    assert_eq!(t.counts().1, 0, "progress clears the stall");
}

#[test]
fn an_empty_partition_sleeps_only_once_its_end_offset_is_known() {
    let (mut t, _f) = table(0);
    // Drained without a single record: librdkafka's EOF gives no offset.
    t.note_eof(0, None, 100);
    t.sleep_drained(5_000, 1_000, |_| (60_000, 0));
    assert_eq!(t.get(0).unwrap().phase, Phase::Fetching, "position unknown");
    let before = WatchReport {
        issued_at_ms: 50,
        ends: vec![(0, 7)],
        committed: vec![],
    };
    t.apply_watch(&before, 5_000, 60_000);
    t.sleep_drained(5_000, 1_000, |_| (60_000, 0));
    assert_eq!(
        t.get(0).unwrap().phase,
        Phase::Fetching,
        "that end predates the drain"
    );
    let after = WatchReport {
        issued_at_ms: 200,
        ..before
    };
    t.apply_watch(&after, 5_000, 60_000);
    t.sleep_drained(5_000, 1_000, |_| (60_000, 0));
    assert_eq!(
        t.get(0).unwrap().phase,
        Phase::Sleeping { until_ms: 60_000 }
    );
    // A record appended later wakes it.
    let appended = WatchReport {
        issued_at_ms: 6_000,
        ends: vec![(0, 8)],
        committed: vec![],
    };
    assert_eq!(t.apply_watch(&appended, 6_000, 60_000).woken, vec![0]);
}

#[test]
fn a_fresh_end_offset_counts_as_drained_only_after_the_resume() {
    let (mut t, _f) = table(1_000);
    t.note_record(2, 4, 1_100);
    let before_resume = WatchReport {
        issued_at_ms: 900,
        ends: vec![(2, 5)],
        committed: vec![],
    };
    t.apply_watch(&before_resume, 1_200, 5_000);
    assert!(!t.get(2).unwrap().drained);
    let after = WatchReport {
        issued_at_ms: 1_150,
        ..before_resume
    };
    t.apply_watch(&after, 1_200, 5_000);
    assert!(t.get(2).unwrap().drained);
    assert!(t.get(2).unwrap().drained_since(1_150));
    assert!(!t.get(2).unwrap().drained_since(1_151));
}

#[test]
fn revoked_partitions_are_forgotten_and_reassignment_starts_fresh() {
    let (mut t, _f) = table(0);
    t.hold(2, record(1), 5_000, 5_100, 0);
    t.revoke(&[2]);
    assert_eq!(t.len(), 2);
    assert!(t.get(2).is_none());
    let mut book = Book::default();
    t.assign(&[(2, book.register("t", 2))], 10);
    let part = t.get(2).unwrap();
    assert_eq!(part.phase, Phase::Fetching);
    assert!(part.held.is_empty() && !part.paused);
    assert_eq!(t.len(), 3);
}

#[test]
fn records_queued_behind_a_sleep_are_handled_once_the_watcher_wakes_the_partition() {
    // Exactly-once mode hands a sleeping partition records that waited in
    // its write order (read before it slept): they queue in `held`. When
    // the watcher then wakes it for an appended record, it fetches with
    // records still held; those must be handed back at once, or every
    // later record queues behind them for good.
    let (mut t, _f) = table(0);
    t.note_record(0, 9, 100);
    t.note_eof(0, None, 100);
    t.sleep_drained(2_000, 1_000, |_| (60_000, 0));
    t.defer(0, record(8));
    let report = WatchReport {
        issued_at_ms: 3_000,
        ends: vec![(0, 11)],
        committed: vec![],
    };
    assert_eq!(t.apply_watch(&report, 3_000, 5_000).woken, vec![0]);
    assert_eq!(t.get(0).unwrap().phase, Phase::Fetching);
    assert_eq!(
        t.due(3_001),
        vec![0],
        "held records of a fetching partition"
    );
    assert!(t.next_deadline().is_some_and(|d| d <= 3_001));
    t.wake(0);
    assert_eq!(t.pop_held(0).map(|m| rdkafka::Message::offset(&m)), Some(8));
    assert_eq!(t.due(3_002), Vec::<i32>::new());
}

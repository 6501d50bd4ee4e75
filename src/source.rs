//! The Kafka side of the loader: one thread owns the consumer, polls it, and hands records and
//! rebalance events, in order, to the loader task that owns all pipeline state.
//!
//! Rebalance callbacks run on this thread inside `poll`. They do not decide anything themselves:
//! an assignment asks the loader where each partition starts (the table's ledger), a revocation
//! waits until the loader has committed or dropped the partitions' buffered records, so nothing
//! is released while floe still holds uncommitted data for it.
//!
//! Every partition has an *epoch*, chosen by the loader and bumped at every assignment and seek.
//! This thread tags each record, position and seek confirmation with the epoch the partition had
//! when it was read, so the loader can drop anything that was read before a fence or a rebalance
//! (DESIGN.md §7) instead of guessing from offsets.
//!
//! Nothing here moves a partition silently: `auto.offset.reset` is `error`, so a position outside
//! the log (retention deleted what the ledger points at, the topic was recreated) is reported to
//! the loader as [`Event::OutOfRange`] with the log's bounds, and the loader decides (DESIGN.md §1).

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, Timestamp};
use tokio::sync::mpsc;

use bytes::{Bytes, BytesMut};

use crate::decode::{RawRecord, TimestampType};
use crate::ledger::TopicPartition;

/// A partition's generation as the loader sees it: bumped at every assignment and seek.
pub type Epoch = u64;

/// One Kafka record, owned (it crosses from the consumer thread to the loader task). Key and
/// value are slices of one buffer per handed-over batch of records (one allocation per batch, not
/// three per record); [`Record::detached`] copies them out for a record kept longer.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The partition's epoch when this record was read.
    pub epoch: Epoch,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
    /// Who set `timestamp` (None when the record has none).
    pub timestamp_type: Option<TimestampType>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// The record with its own copy of key and value, so that keeping it (a dead letter) does not
    /// keep the whole batch's buffer alive.
    pub fn detached(&self) -> Record {
        Record {
            key: self.key.as_deref().map(Bytes::copy_from_slice),
            value: self.value.as_deref().map(Bytes::copy_from_slice),
            ..self.clone()
        }
    }

    /// The record as the decoder sees it.
    pub fn raw(&self) -> RawRecord<'_> {
        RawRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            timestamp: self.timestamp_type.zip(self.timestamp),
            headers: &self.headers,
        }
    }
}

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Offset(i64),
    Beginning,
    End,
}

/// A partition the group assigned to this process, with what is known about it.
#[derive(Debug, Clone)]
pub struct AssignedPartition {
    pub tp: TopicPartition,
    /// The group's committed offset, the fallback when the table's ledger does not know the
    /// partition.
    pub committed: Option<i64>,
    /// The log's bounds (first offset still held, next offset to be written), if the broker
    /// answered in time.
    pub watermarks: Option<(i64, i64)>,
}

/// A partition whose position is outside its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    pub tp: TopicPartition,
    pub epoch: Epoch,
    /// The next offset the partition was to be read from.
    pub position: i64,
    /// The log's first offset and its end.
    pub low: i64,
    pub high: i64,
}

/// What the consumer thread tells the loader, in the order it happened.
pub enum Event {
    Records(Vec<Record>),
    /// Partitions were assigned; the loader answers where each starts and with which epoch.
    Assigned {
        partitions: Vec<AssignedPartition>,
        reply: std_mpsc::SyncSender<Vec<(TopicPartition, StartAt, Epoch)>>,
    },
    /// Partitions are being taken away; the loader answers once it no longer holds their records.
    Revoked {
        partitions: Vec<TopicPartition>,
        done: std_mpsc::SyncSender<()>,
    },
    /// The seeks the loader asked for have been made: records of these epochs come from there.
    Seeked(Vec<(TopicPartition, Epoch)>),
    /// The consumer's position moved past offsets that hold no record for floe (transaction
    /// markers, aborted transactions): every record below `position` of this epoch has been
    /// handed over already.
    Positions(Vec<(TopicPartition, Epoch, i64)>),
    /// These partitions' positions are outside their logs; nothing more is read from them until
    /// the loader seeks them.
    OutOfRange(Vec<OutOfRange>),
    /// A consumer error (the client retries by itself; the loader logs and reports health).
    Error(String),
    /// The logs' ends (last stable offsets) of assigned partitions, from the client's
    /// statistics (every `statistics.interval.ms`), for lag.
    LogEnds(Vec<(TopicPartition, i64)>),
}

/// What the loader tells the consumer thread.
#[derive(Debug)]
pub enum Command {
    /// Re-read these partitions from these offsets, as these epochs.
    Seek(Vec<(TopicPartition, i64, Epoch)>),
    /// Commit these next-offsets to the consumer group (for lag monitoring only).
    CommitOffsets(Vec<(TopicPartition, i64)>),
    /// Stop fetching every assigned partition (and those assigned later) until `Resume`; the
    /// consumer keeps polling, so it stays in the group and answers rebalances.
    Pause,
    Resume,
    /// Leave the group and end the thread.
    Stop,
}

/// How long a rebalance callback waits for the loader (a commit may be in progress).
const REBALANCE_WAIT: Duration = Duration::from_secs(600);
/// Records handed over per event at most.
const MAX_RECORDS_PER_EVENT: usize = 2048;

/// Where a record's key or value lies in its batch's buffer: [start, end).
type Span = (usize, usize);

/// The smallest initial size of a batch's key-and-value buffer (it grows as needed).
const BATCH_BUFFER: usize = 64 << 10;
/// How often positions are compared with what was handed over.
const POSITION_EVERY: Duration = Duration::from_millis(250);
/// How often the client reports its statistics (the partitions' log ends), in ms.
const STATS_EVERY_MS: &str = "1000";
/// How long a watermark query may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// What this thread knows of one assigned partition.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    epoch: Epoch,
    /// The next offset the fetcher reads in this epoch (None: a logical start not resolved yet).
    next: Option<i64>,
}

/// Partitions by topic, then number (looked up per record by `&str`, without allocating).
#[derive(Default)]
struct TrackedPartitions(HashMap<String, HashMap<i32, Tracked>>);

impl TrackedPartitions {
    fn set(&mut self, tp: &TopicPartition, t: Tracked) {
        self.0.entry(tp.topic.clone()).or_default().insert(tp.partition, t);
    }
    fn remove(&mut self, tp: &TopicPartition) {
        if let Some(ps) = self.0.get_mut(&tp.topic) {
            ps.remove(&tp.partition);
        }
    }
    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Tracked> {
        self.0.get_mut(topic)?.get_mut(&partition)
    }
    fn iter(&self) -> impl Iterator<Item = (TopicPartition, Tracked)> + '_ {
        self.0
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(move |(p, tr)| (TopicPartition::new(t.clone(), *p), *tr)))
    }
}

struct LoaderContext {
    events: mpsc::Sender<Event>,
    tracked: Mutex<TrackedPartitions>,
    /// Whether the loader asked to pause: partitions assigned meanwhile start paused too.
    paused: std::sync::atomic::AtomicBool,
}

impl LoaderContext {
    fn tracked(&self) -> std::sync::MutexGuard<'_, TrackedPartitions> {
        self.tracked.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientContext for LoaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let _ = self.events.try_send(Event::Error(format!("{error}: {reason}")));
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = Vec::new();
        {
            let mut tracked = self.tracked();
            for (topic, t) in &statistics.topics {
                for (&p, part) in &t.partitions {
                    // Under read_committed the last stable offset is where the readable log ends.
                    let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
                    if p >= 0 && end >= 0 && tracked.get_mut(topic, p).is_some() {
                        ends.push((TopicPartition::new(topic.clone(), p), end));
                    }
                }
            }
        }
        // Only for lag: when the loader is busy, this round is skipped.
        if !ends.is_empty() {
            let _ = self.events.try_send(Event::LogEnds(ends));
        }
    }
}

impl ConsumerContext for LoaderContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let committed = consumer
                    .committed_offsets(tpl.clone(), Duration::from_secs(30))
                    .ok();
                let partitions = partitions_of(tpl)
                    .into_iter()
                    .map(|tp| {
                        let committed = committed.as_ref().and_then(|list| {
                            match list.find_partition(&tp.topic, tp.partition).map(|e| e.offset()) {
                                Some(Offset::Offset(o)) => Some(o),
                                _ => None,
                            }
                        });
                        let watermarks = consumer
                            .fetch_watermarks(&tp.topic, tp.partition, WATERMARK_TIMEOUT)
                            .ok();
                        AssignedPartition {
                            tp,
                            committed,
                            watermarks,
                        }
                    })
                    .collect();
                let (reply, answer) = std_mpsc::sync_channel(1);
                let starts = self
                    .events
                    .blocking_send(Event::Assigned { partitions, reply })
                    .ok()
                    .and_then(|()| answer.recv_timeout(REBALANCE_WAIT).ok());
                let Some(starts) = starts else {
                    // The loader is gone (shutting down) or refused: take nothing.
                    return;
                };
                let mut assign = TopicPartitionList::new();
                {
                    let mut tracked = self.tracked();
                    for (tp, start, epoch) in starts {
                        let offset = match start {
                            StartAt::Offset(o) => Offset::Offset(o),
                            StartAt::Beginning => Offset::Beginning,
                            StartAt::End => Offset::End,
                        };
                        let next = match start {
                            StartAt::Offset(o) => Some(o),
                            _ => None,
                        };
                        tracked.set(&tp, Tracked { epoch, next });
                        let _ = assign.add_partition_offset(&tp.topic, tp.partition, offset);
                    }
                }
                let result = if cooperative {
                    consumer.incremental_assign(&assign)
                } else {
                    consumer.assign(&assign)
                };
                if let Err(e) = result {
                    let _ = self.events.try_send(Event::Error(format!("assigning partitions: {e}")));
                } else if self.paused.load(std::sync::atomic::Ordering::SeqCst)
                    && let Err(e) = consumer.pause(&assign)
                {
                    let _ = self.events.try_send(Event::Error(format!("pausing assigned partitions: {e}")));
                }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = partitions_of(tpl);
                {
                    let mut tracked = self.tracked();
                    for tp in &partitions {
                        tracked.remove(tp);
                    }
                }
                let (done, finished) = std_mpsc::sync_channel(1);
                if self
                    .events
                    .blocking_send(Event::Revoked { partitions, done })
                    .is_ok()
                {
                    let _ = finished.recv_timeout(REBALANCE_WAIT);
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    let _ = self.events.try_send(Event::Error(format!("revoking partitions: {e}")));
                }
            }
            other => {
                let _ = self.events.try_send(Event::Error(format!("rebalance error: {other:?}")));
                let _ = consumer.unassign();
            }
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

/// Consumer properties floe sets itself, whatever the configuration says (the configuration
/// refuses them, with the reason): floe decides every start position, commits group offsets
/// itself (DESIGN.md §1) and never lets the client jump over records.
pub const FORCED_CONSUMER_PROPERTIES: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("enable.partition.eof", "false"),
    // A position outside the log is an error the loader handles, never a silent jump.
    ("auto.offset.reset", "error"),
];

/// Starts the consumer thread. Returns the command sender and the thread handle; events arrive
/// on `events`.
pub fn spawn(
    mut config: rdkafka::ClientConfig,
    topics: Vec<String>,
    events: mpsc::Sender<Event>,
) -> KafkaResult<(std_mpsc::Sender<Command>, std::thread::JoinHandle<()>)> {
    for (key, value) in FORCED_CONSUMER_PROPERTIES {
        config.set(*key, *value);
    }
    // Only committed records of transactional producers (the configuration refuses
    // read_uncommitted): an aborted record must never reach the table.
    config.set("isolation.level", "read_committed");
    // What librdkafka prefetches is bounded (8 MiB queued, fetches of at most 8 MiB, 2 MiB per
    // partition), and a fetcher that hit the bound asks again after 5 ms, not librdkafka's 1 s:
    // with its defaults (64 MiB queued, 1 s backoff) and 16/64 MiB fetches the prefetched records
    // took ~130 MiB of a ~400 MiB peak RSS, and bounding the queue alone left the loader waiting a
    // second per fetch (43-81k rows/s). Measured on the seed table: 190k rows/s at 411 MiB peak
    // with these, against 120k at 415 MiB before (docs/benchmarks.md).
    for (key, value) in [
        ("max.partition.fetch.bytes", "2097152"),
        ("fetch.max.bytes", "8388608"),
        ("queued.max.messages.kbytes", "8192"),
        ("fetch.queue.backoff.ms", "5"),
    ] {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    // The client's statistics carry each fetched partition's log end, for lag (no extra request).
    if config.get("statistics.interval.ms").is_none() {
        config.set("statistics.interval.ms", STATS_EVERY_MS);
    }
    let consumer: BaseConsumer<LoaderContext> = config.create_with_context(LoaderContext {
        events: events.clone(),
        tracked: Mutex::new(TrackedPartitions::default()),
        paused: std::sync::atomic::AtomicBool::new(false),
    })?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    let (commands, inbox) = std_mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("floe-consumer".into())
        .spawn(move || poll_loop(consumer, inbox, events))
        .expect("spawning the consumer thread");
    Ok((commands, handle))
}

fn poll_loop(
    consumer: BaseConsumer<LoaderContext>,
    inbox: std_mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) {
    // Seeks not yet made, with how often they failed.
    let mut pending_seeks: Vec<((TopicPartition, i64, Epoch), u32)> = Vec::new();
    let mut last_positions = Instant::now();
    // The topic names handed out, so that a record does not allocate its topic's name.
    let mut topic_names: HashMap<String, Arc<str>> = HashMap::new();
    // The size of the last batch handed over, to size the next one's buffers.
    let (mut last_records, mut last_bytes) = (0usize, 0usize);
    loop {
        loop {
            match inbox.try_recv() {
                Ok(Command::Stop) | Err(std_mpsc::TryRecvError::Disconnected) => {
                    // Leaving the group runs the revoke callback, which the loader still answers.
                    consumer.unsubscribe();
                    let _ = consumer.poll(Duration::from_millis(100));
                    return;
                }
                Ok(Command::Seek(positions)) => {
                    // A newer seek of the same partition replaces an older one not made yet.
                    pending_seeks.retain(|((tp, _, _), _)| !positions.iter().any(|(p, _, _)| p == tp));
                    pending_seeks.extend(positions.into_iter().map(|p| (p, 0u32)));
                }
                Ok(Command::CommitOffsets(offsets)) => {
                    let mut tpl = TopicPartitionList::new();
                    for (tp, next) in offsets {
                        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next));
                    }
                    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                        // Group offsets are only for lag monitoring; the table's ledger is the truth.
                        tracing::debug!(error = %e, "committing group offsets failed");
                    }
                }
                Ok(command @ (Command::Pause | Command::Resume)) => {
                    let pause = matches!(command, Command::Pause);
                    consumer.context().paused.store(pause, std::sync::atomic::Ordering::SeqCst);
                    let result = consumer.assignment().and_then(|assigned| {
                        if pause { consumer.pause(&assigned) } else { consumer.resume(&assigned) }
                    });
                    if let Err(e) = result {
                        let _ = events.blocking_send(Event::Error(format!("pausing or resuming consumption: {e}")));
                    }
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
            }
        }
        if !pending_seeks.is_empty() && !seek_all(&consumer, &mut pending_seeks, &events) {
            return;
        }
        let mut batch: Vec<Record> = Vec::with_capacity(last_records);
        // Keys and values of this batch, copied once into one buffer; records slice it after. It
        // starts as large as the last one grew (no copy on growing while a backlog is read).
        let mut buf = BytesMut::with_capacity(last_bytes.max(BATCH_BUFFER));
        let mut spans: Vec<(Option<Span>, Option<Span>)> = Vec::new();
        let mut out_of_range = false;
        let mut timeout = Duration::from_millis(100);
        while batch.len() < MAX_RECORDS_PER_EVENT {
            match consumer.poll(timeout) {
                Some(Ok(m)) => {
                    let name = m.topic();
                    let topic = match topic_names.get(name) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = Arc::from(name);
                            topic_names.insert(name.to_owned(), t.clone());
                            t
                        }
                    };
                    let epoch = match consumer.context().tracked().get_mut(name, m.partition()) {
                        Some(t) => {
                            t.next = Some(m.offset() + 1);
                            t.epoch
                        }
                        // Not (or no longer) assigned: epoch 0 is never a live one.
                        None => 0,
                    };
                    let mut span = |bytes: Option<&[u8]>| {
                        bytes.map(|b| {
                            let start = buf.len();
                            buf.extend_from_slice(b);
                            (start, buf.len())
                        })
                    };
                    spans.push((span(m.key()), span(m.payload())));
                    let stamp = m.timestamp();
                    batch.push(Record {
                        topic,
                        partition: m.partition(),
                        offset: m.offset(),
                        epoch,
                        key: None,
                        value: None,
                        timestamp: stamp.to_millis(),
                        timestamp_type: match stamp {
                            Timestamp::NotAvailable => None,
                            Timestamp::CreateTime(_) => Some(TimestampType::CreateTime),
                            Timestamp::LogAppendTime(_) => Some(TimestampType::LogAppendTime),
                        },
                        headers: m
                            .headers()
                            .map(|hs| {
                                hs.iter()
                                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    });
                    timeout = Duration::ZERO;
                }
                Some(Err(e)) => {
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) {
                        out_of_range = true;
                    } else if events.blocking_send(Event::Error(e.to_string())).is_err() {
                        return;
                    }
                    break;
                }
                None => break,
            }
        }
        (last_records, last_bytes) = (batch.len(), buf.len());
        let frozen = buf.freeze();
        for (r, (key, value)) in batch.iter_mut().zip(spans) {
            r.key = key.map(|(a, b)| frozen.slice(a..b));
            r.value = value.map(|(a, b)| frozen.slice(a..b));
        }
        let caught_up = batch.len() < MAX_RECORDS_PER_EVENT;
        if !batch.is_empty() && events.blocking_send(Event::Records(batch)).is_err() {
            return;
        }
        if out_of_range {
            let found = find_out_of_range(&consumer);
            if !found.is_empty() && events.blocking_send(Event::OutOfRange(found)).is_err() {
                return;
            }
        }
        if caught_up && last_positions.elapsed() >= POSITION_EVERY {
            last_positions = Instant::now();
            let moved = positions_moved(&consumer);
            if !moved.is_empty() && events.blocking_send(Event::Positions(moved)).is_err() {
                return;
            }
        }
    }
}

/// Partitions whose consumer position is past the last record handed over (transaction markers,
/// aborted records), in their current epoch. librdkafka resets a partition's position when it is
/// assigned or seeked and advances it only as records and markers of that epoch are consumed, so a
/// position reported here never comes from before a seek.
fn positions_moved(consumer: &BaseConsumer<LoaderContext>) -> Vec<(TopicPartition, Epoch, i64)> {
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    let mut tracked = consumer.context().tracked();
    let mut moved = Vec::new();
    for e in positions.elements() {
        let Offset::Offset(at) = e.offset() else { continue };
        if let Some(t) = tracked.get_mut(e.topic(), e.partition())
            && t.next.is_none_or(|n| at > n)
        {
            t.next = Some(at);
            moved.push((TopicPartition::new(e.topic(), e.partition()), t.epoch, at));
        }
    }
    moved
}

/// After the client reported that a position is outside its log (it does not say which
/// partition's), compares each assigned partition's next offset with its log's bounds.
fn find_out_of_range(consumer: &BaseConsumer<LoaderContext>) -> Vec<OutOfRange> {
    let tracked: Vec<(TopicPartition, Tracked)> = consumer.context().tracked().iter().collect();
    let mut found = Vec::new();
    for (tp, t) in tracked {
        let Some(position) = t.next else { continue };
        match consumer.fetch_watermarks(&tp.topic, tp.partition, WATERMARK_TIMEOUT) {
            Ok((low, high)) if position < low || position > high => found.push(OutOfRange {
                tp,
                epoch: t.epoch,
                position,
                low,
                high,
            }),
            Ok(_) => {}
            Err(e) => tracing::warn!(partition = %tp, error = %e, "cannot read the log's bounds"),
        }
    }
    found
}

/// How often a seek is retried (once per poll round) before the partition is given up on.
const MAX_SEEK_ATTEMPTS: u32 = 600;

/// Makes the pending seeks; a seek can fail right after an assignment, before fetching has
/// started ("Erroneous state"), so failures stay pending and are retried on the next round.
/// Only seeks that happened are confirmed to the loader: a partition that reported a seek it did
/// not make would read on from the wrong place. Returns false when the loader is gone.
fn seek_all(
    consumer: &BaseConsumer<LoaderContext>,
    pending: &mut Vec<((TopicPartition, i64, Epoch), u32)>,
    events: &mpsc::Sender<Event>,
) -> bool {
    let mut done = Vec::new();
    let mut still = Vec::new();
    for ((tp, offset, epoch), attempts) in pending.drain(..) {
        // A seek asked for before the partition was revoked, or assigned again since, belongs to
        // a past epoch: making it now would move the partition away from where its new epoch
        // starts.
        let current = consumer.context().tracked().get_mut(&tp.topic, tp.partition).map(|t| t.epoch);
        if current.is_none_or(|c| c > epoch) {
            continue;
        }
        match consumer.seek(&tp.topic, tp.partition, Offset::Offset(offset), Duration::from_secs(10)) {
            Ok(()) => {
                let mut tracked = consumer.context().tracked();
                if let Some(t) = tracked.get_mut(&tp.topic, tp.partition) {
                    *t = Tracked {
                        epoch,
                        next: Some(offset),
                    };
                }
                done.push((tp, epoch));
            }
            Err(e) if attempts + 1 >= MAX_SEEK_ATTEMPTS => {
                // Not assigned to us any more, most likely; the loader keeps ignoring its records.
                let _ = events.blocking_send(Event::Error(format!(
                    "giving up seeking {tp} to {offset} after {MAX_SEEK_ATTEMPTS} attempts: {e}"
                )));
            }
            Err(_) => still.push(((tp, offset, epoch), attempts + 1)),
        }
    }
    *pending = still;
    done.is_empty() || events.blocking_send(Event::Seeked(done)).is_ok()
}

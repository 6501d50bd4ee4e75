//! The Kafka side of the loader: one thread owns the consumer, polls it, and hands records and
//! rebalance events, in order, to the loader task that owns all pipeline state.
//!
//! Rebalance callbacks run on this thread inside `poll`. They do not decide anything themselves:
//! an assignment asks the loader where each partition starts (the table's ledger), a revocation
//! waits until the loader has committed or dropped the partitions' buffered records, so nothing
//! is released while floe still holds uncommitted data for it.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::{ClientContext, Offset};
use tokio::sync::mpsc;

use crate::ledger::TopicPartition;

/// One Kafka record, owned (it crosses from the consumer thread to the loader task).
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Offset(i64),
    Beginning,
    End,
}

/// What the consumer thread tells the loader, in the order it happened.
pub enum Event {
    Records(Vec<Record>),
    /// Partitions were assigned; the loader answers where each starts. `committed` is the
    /// group's committed offset, the fallback when the table's ledger does not know the partition.
    Assigned {
        partitions: Vec<(TopicPartition, Option<i64>)>,
        reply: std_mpsc::SyncSender<Vec<(TopicPartition, StartAt)>>,
    },
    /// Partitions are being taken away; the loader answers once it no longer holds their records.
    Revoked {
        partitions: Vec<TopicPartition>,
        done: std_mpsc::SyncSender<()>,
    },
    /// The seeks the loader asked for have been made: records after this event come from there.
    Seeked(Vec<TopicPartition>),
    /// A consumer error (the client retries by itself; the loader logs and reports health).
    Error(String),
}

/// What the loader tells the consumer thread.
#[derive(Debug)]
pub enum Command {
    /// Re-read these partitions from these offsets (after a fenced commit).
    Seek(Vec<(TopicPartition, i64)>),
    /// Commit these next-offsets to the consumer group (for lag monitoring only).
    CommitOffsets(Vec<(TopicPartition, i64)>),
    /// Leave the group and end the thread.
    Stop,
}

/// How long a rebalance callback waits for the loader (a commit may be in progress).
const REBALANCE_WAIT: Duration = Duration::from_secs(600);
/// Records handed over per event at most.
const MAX_RECORDS_PER_EVENT: usize = 2048;

struct LoaderContext {
    events: mpsc::Sender<Event>,
}

impl ClientContext for LoaderContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let _ = self.events.try_send(Event::Error(format!("{error}: {reason}")));
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
                let partitions = partitions_of(tpl);
                let committed = consumer
                    .committed_offsets(tpl.clone(), Duration::from_secs(30))
                    .ok();
                let with_committed = partitions
                    .into_iter()
                    .map(|tp| {
                        let c = committed.as_ref().and_then(|list| {
                            match list.find_partition(&tp.topic, tp.partition).map(|e| e.offset()) {
                                Some(Offset::Offset(o)) => Some(o),
                                _ => None,
                            }
                        });
                        (tp, c)
                    })
                    .collect();
                let (reply, answer) = std_mpsc::sync_channel(1);
                let starts = self
                    .events
                    .blocking_send(Event::Assigned {
                        partitions: with_committed,
                        reply,
                    })
                    .ok()
                    .and_then(|()| answer.recv_timeout(REBALANCE_WAIT).ok());
                let Some(starts) = starts else {
                    // The loader is gone (shutting down): take nothing.
                    return;
                };
                let mut assign = TopicPartitionList::new();
                for (tp, start) in starts {
                    let offset = match start {
                        StartAt::Offset(o) => Offset::Offset(o),
                        StartAt::Beginning => Offset::Beginning,
                        StartAt::End => Offset::End,
                    };
                    let _ = assign.add_partition_offset(&tp.topic, tp.partition, offset);
                }
                let result = if cooperative {
                    consumer.incremental_assign(&assign)
                } else {
                    consumer.assign(&assign)
                };
                if let Err(e) = result {
                    let _ = self.events.try_send(Event::Error(format!("assigning partitions: {e}")));
                }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let (done, finished) = std_mpsc::sync_channel(1);
                if self
                    .events
                    .blocking_send(Event::Revoked {
                        partitions: partitions_of(tpl),
                        done,
                    })
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

/// Starts the consumer thread. Returns the command sender and the thread handle; events arrive
/// on `events`.
pub fn spawn(
    mut config: rdkafka::ClientConfig,
    topics: Vec<String>,
    events: mpsc::Sender<Event>,
) -> KafkaResult<(std_mpsc::Sender<Command>, std::thread::JoinHandle<()>)> {
    // floe decides every start position and commits group offsets itself (DESIGN.md §1).
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    // Bigger fetches than librdkafka's 1 MiB per partition: a bulk loader is throughput-bound by
    // fetch round trips otherwise (measured: ~120k rows/s at 0.6 cores with the defaults).
    for (key, value) in [("max.partition.fetch.bytes", "16777216"), ("fetch.max.bytes", "67108864")] {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    let consumer: BaseConsumer<LoaderContext> = config.create_with_context(LoaderContext {
        events: events.clone(),
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
    let mut pending_seeks: Vec<((TopicPartition, i64), u32)> = Vec::new();
    loop {
        loop {
            match inbox.try_recv() {
                Ok(Command::Stop) | Err(std_mpsc::TryRecvError::Disconnected) => {
                    // Leaving the group runs the revoke callback, which the loader still answers.
                    consumer.unsubscribe();
                    let _ = consumer.poll(Duration::from_millis(100));
                    return;
                }
                Ok(Command::Seek(positions)) => pending_seeks.extend(positions.into_iter().map(|p| (p, 0u32))),
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
                Err(std_mpsc::TryRecvError::Empty) => break,
            }
        }
        if !pending_seeks.is_empty() && !seek_all(&consumer, &mut pending_seeks, &events) {
            return;
        }
        let mut batch = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while batch.len() < MAX_RECORDS_PER_EVENT {
            match consumer.poll(timeout) {
                Some(Ok(m)) => {
                    batch.push(Record {
                        topic: Arc::from(m.topic()),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        timestamp: m.timestamp().to_millis(),
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
                    if events.blocking_send(Event::Error(e.to_string())).is_err() {
                        return;
                    }
                    break;
                }
                None => break,
            }
        }
        if !batch.is_empty() && events.blocking_send(Event::Records(batch)).is_err() {
            return;
        }
    }
}

/// How often a seek is retried (once per poll round) before the partition is given up on.
const MAX_SEEK_ATTEMPTS: u32 = 600;

/// Makes the pending seeks; a seek can fail right after an assignment, before fetching has
/// started ("Erroneous state"), so failures stay pending and are retried on the next round.
/// Only seeks that happened are confirmed to the loader: a partition that reported a seek it did
/// not make would read on from the wrong place. Returns false when the loader is gone.
fn seek_all(
    consumer: &BaseConsumer<LoaderContext>,
    pending: &mut Vec<((TopicPartition, i64), u32)>,
    events: &mpsc::Sender<Event>,
) -> bool {
    let mut done = Vec::new();
    let mut still = Vec::new();
    for ((tp, offset), attempts) in pending.drain(..) {
        match consumer.seek(&tp.topic, tp.partition, Offset::Offset(offset), Duration::from_secs(10)) {
            Ok(()) => done.push(tp),
            Err(e) if attempts + 1 >= MAX_SEEK_ATTEMPTS => {
                // Not assigned to us any more, most likely; the loader keeps ignoring its records.
                let _ = events.blocking_send(Event::Error(format!(
                    "giving up seeking {tp} to {offset} after {MAX_SEEK_ATTEMPTS} attempts: {e}"
                )));
            }
            Err(_) => still.push(((tp, offset), attempts + 1)),
        }
    }
    *pending = still;
    done.is_empty() || events.blocking_send(Event::Seeked(done)).is_ok()
}

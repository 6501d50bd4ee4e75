//! Decoding one run of records on several threads.
//!
//! The records are cut into consecutive chunks, each decoded by a decoder of its own (all built
//! for the same schema and options), on a scoped thread. Each chunk comes back as the rows it
//! produced and, for every record in it, what became of it, in order. Nothing is decided here:
//! the caller walks the outcomes in record order and keeps the rows of a chunk up to the first
//! record it wants to treat differently (see [`Chunk::rows_before`]).

use arrow_array::RecordBatch;

use super::{Decoder, RawRecord, RecordError};

/// Records per chunk at least: below this, a thread costs more than it saves.
pub const MIN_CHUNK: usize = 256;

/// What decoding did with one record.
#[derive(Debug)]
pub enum Outcome {
    /// It became a row. `new_top_level_fields`: it had a top-level field the schema lacks.
    Row { new_top_level_fields: bool },
    /// It cannot be a row; nothing of it was kept.
    Failed(RecordError),
}

/// One chunk's rows and its records' outcomes (one per record, in order).
pub struct Chunk {
    pub rows: RecordBatch,
    pub outcomes: Vec<Outcome>,
}

impl Chunk {
    /// The chunk's rows that came from its first `records` records.
    pub fn rows_before(&self, records: usize) -> RecordBatch {
        let n = self.outcomes[..records].iter().filter(|o| matches!(o, Outcome::Row { .. })).count();
        self.rows.slice(0, n)
    }
}

/// Decoders for one schema, one per worker.
pub struct Pool {
    decoders: Vec<Decoder>,
}

impl Pool {
    /// `decoders` must all read the same schema with the same options.
    pub fn new(decoders: Vec<Decoder>) -> Pool {
        assert!(!decoders.is_empty(), "a pool has at least one decoder");
        Pool { decoders }
    }

    /// Decodes `records` in consecutive chunks (at most one per decoder, at least [`MIN_CHUNK`]
    /// records each, the first on the calling thread). Blocks until all are done.
    pub fn decode(&mut self, records: &[RawRecord<'_>]) -> Vec<Chunk> {
        let chunks = (records.len() / MIN_CHUNK).clamp(1, self.decoders.len());
        let size = records.len().div_ceil(chunks);
        let mut work = records.chunks(size.max(1)).zip(self.decoders.iter_mut());
        let Some((first, first_decoder)) = work.next() else {
            return Vec::new();
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = work
                .map(|(part, decoder)| {
                    std::thread::Builder::new()
                        .name("floe-decode".into())
                        .spawn_scoped(scope, move || decode_chunk(decoder, part))
                        .expect("spawning a decoding thread")
                })
                .collect();
            let mut out = vec![decode_chunk(first_decoder, first)];
            out.extend(others.into_iter().map(|h| h.join().expect("a decoding thread panicked")));
            out
        })
    }
}

fn decode_chunk(decoder: &mut Decoder, records: &[RawRecord<'_>]) -> Chunk {
    let mut outcomes = Vec::with_capacity(records.len());
    for r in records {
        let before = decoder.ignored_top_level_fields();
        outcomes.push(match decoder.append_record(r) {
            Ok(()) => Outcome::Row { new_top_level_fields: decoder.ignored_top_level_fields() > before },
            Err(e) => Outcome::Failed(e),
        });
    }
    Chunk { rows: decoder.finish(), outcomes }
}

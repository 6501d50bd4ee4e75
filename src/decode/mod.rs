//! Decoding: JSON records to Arrow record batches, the way the table's schema says.
//!
//! The table's current schema decides how each record is read (DESIGN.md §5): a [`Decoder`] is
//! built from it, and its batches carry exactly the Arrow schema the iceberg crate derives from it
//! (field ids included), so they go to the Parquet writer as they are.
//!
//! One pass over each record's bytes writes values straight into column builders; there is no
//! intermediate JSON tree. A record that cannot be read is rolled back (the builders are truncated
//! to where the record started) and reported as a [`RecordError`]: it never affects its neighbours,
//! and it becomes a dead letter upstream.
//!
//! Reading rules (in short; the tests spell out every case):
//! - boolean: `true`/`false`, and the strings `"true"`/`"false"`.
//! - int, long: numbers and numeric strings; exact (`1e3` is 1000, `1.5` is an error); out of range
//!   is an error, never a wrap.
//! - float, double: numbers, numeric strings, `"NaN"`, `"Infinity"`, `"-Infinity"`.
//! - decimal(p, s): numbers or strings, read exactly (never through a float); more than `s`
//!   non-zero fraction digits or more than `p` digits in all is an error.
//! - string: a JSON string; any other value is stored as its compact JSON text.
//! - date `YYYY-MM-DD`; time `HH:MM[:SS[.fffffffff]]`; timestamps ISO-8601 (`T` or space), with an
//!   offset or `Z` and optionally a bracketed zone id as Java writes it, or an epoch number in the
//!   configured unit. Fractions beyond the column's precision are truncated (floor).
//!   A timestamptz value without offset is read in the configured zone (UTC by default); a
//!   timestamp (without zone) value with an offset is converted to UTC wall-clock time.
//! - uuid: its text form; binary and fixed: base64 (standard or URL-safe, padding optional).
//! - list: an array; map: an object whose keys are converted to the key type; struct: an object.
//! - missing or null: NULL, or an error for a required column. Fields not in the table are skipped
//!   and counted ([`Decoder::ignored_fields`]). A repeated field name: the last value wins; a
//!   repeated map key (after conversion to the key type) is an error.

mod build;
mod fail;
mod json;
#[cfg(test)]
mod roundtrip;
mod scalar;
#[cfg(test)]
mod tests;

use std::ops::Range;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;

pub use fail::{RecordError, RecordErrorKind, RecordOrigin};
pub use scalar::EpochUnit;

use build::{Cx, StructCols};
use fail::Fail;
use json::Cursor;
use scalar::ZoneRule;

/// Where a record came from (for error messages and dead letters).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// How field names in the JSON are written, when they differ from the table's lower_underscore
/// column names. Conversion applies to field names at every depth (not to map keys, which are data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldCase {
    /// `fieldName`
    LowerCamel,
    /// `FieldName`
    UpperCamel,
    /// `field-name`
    LowerHyphen,
    /// `FIELD_NAME`
    UpperUnderscore,
}

impl std::str::FromStr for FieldCase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lowerCamel" | "lower-camel" => Ok(Self::LowerCamel),
            "UpperCamel" | "upper-camel" => Ok(Self::UpperCamel),
            "lower-hyphen" => Ok(Self::LowerHyphen),
            "UPPER_UNDERSCORE" | "upper-underscore" => Ok(Self::UpperUnderscore),
            _ => Err(format!(
                "unknown field-name case {s:?}; use lowerCamel, UpperCamel, lower-hyphen or UPPER_UNDERSCORE"
            )),
        }
    }
}

/// A top-level column whose value is taken from elsewhere in the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    /// The column name (exactly as in the table).
    pub column: String,
    /// A JSON pointer (RFC 6901) into the original record, before any unnesting: `/meta/id`.
    pub pointer: String,
}

/// How records are reshaped and typed. `Default` reshapes nothing and reads offset-less timestamps
/// with zone as UTC and epoch numbers as milliseconds.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// A JSON pointer to the object that holds the row (`/payload/after`); the whole record when
    /// `None`. A record where it leads nowhere, or not to an object, is a record error.
    pub unnest: Option<String>,
    /// Columns read from a pointer into the original record, overriding a field of the same name.
    pub projections: Vec<Projection>,
    /// Converts JSON field names from this convention to lower_underscore before matching.
    pub field_case: Option<FieldCase>,
    /// Matches field names to columns ignoring ASCII case (after an exact match fails).
    pub case_insensitive: bool,
    /// The zone for timestamptz values written without an offset; UTC when `None`.
    pub timestamp_zone: Option<chrono_tz::Tz>,
    /// The unit of epoch numbers in timestamp columns.
    pub epoch_unit: EpochUnit,
}

/// Why a decoder cannot be built for a schema and options. These are configuration errors: fatal.
#[derive(Debug, thiserror::Error)]
pub enum DecodeSetupError {
    #[error("column {column}: {message} cannot be decoded from JSON")]
    UnsupportedType { column: String, message: String },
    #[error("the table schema has no Arrow form: {0}")]
    Arrow(String),
    #[error("projection onto column {column:?}: the table has no such top-level column")]
    UnknownColumn { column: String },
    #[error("{what} {pointer:?} is not a JSON pointer (it must be empty or start with '/')")]
    InvalidPointer { what: &'static str, pointer: String },
}

/// Decodes JSON records into Arrow record batches of one table schema.
pub struct Decoder {
    schema: SchemaRef,
    schema_id: i32,
    root: StructCols,
    cx: Cx,
    rows: usize,
    /// Unnest pointer, split into reference tokens.
    unnest: Option<Vec<String>>,
    /// (column index, pointer tokens)
    projections: Vec<(usize, Vec<String>)>,
    /// `overridden[i]`: column `i` comes from a projection.
    overridden: Vec<bool>,
}

impl Decoder {
    /// Built from the table's current schema, matched by field id.
    pub fn new(
        schema: &iceberg::spec::Schema,
        options: DecodeOptions,
    ) -> Result<Decoder, DecodeSetupError> {
        let arrow = iceberg::arrow::schema_to_arrow_schema(schema)
            .map_err(|e| DecodeSetupError::Arrow(e.to_string()))?;
        let root = StructCols::new(schema.as_struct().fields(), arrow.fields(), "")?;
        let unnest = options
            .unnest
            .as_deref()
            .map(|p| pointer_tokens(p, "unnest pointer"))
            .transpose()?;
        let mut overridden = vec![false; root.cols.len()];
        let mut projections = Vec::new();
        for p in &options.projections {
            let i = root
                .position(&p.column)
                .ok_or_else(|| DecodeSetupError::UnknownColumn {
                    column: p.column.clone(),
                })?;
            overridden[i] = true;
            projections.push((i, pointer_tokens(&p.pointer, "projection pointer")?));
        }
        let zone = options
            .timestamp_zone
            .map_or(ZoneRule::Fixed(0), ZoneRule::Region);
        Ok(Decoder {
            schema: std::sync::Arc::new(arrow),
            schema_id: schema.schema_id(),
            root,
            cx: Cx::new(
                options.epoch_unit,
                zone,
                options.field_case,
                options.case_insensitive,
            ),
            rows: 0,
            unnest,
            projections,
            overridden,
        })
    }

    /// The Arrow schema of the batches it produces: `iceberg::arrow::schema_to_arrow_schema` of the
    /// table schema, field-id metadata included.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The id of the Iceberg schema this decoder reads by (to notice a schema change).
    pub fn schema_id(&self) -> i32 {
        self.schema_id
    }

    /// Decodes one record and appends it. On error nothing of this record is kept.
    pub fn append(&mut self, value: &[u8], origin: &Origin) -> Result<(), RecordError> {
        let ignored = self.cx.ignored;
        match self.append_row(value) {
            Ok(()) => {
                self.rows += 1;
                Ok(())
            }
            Err(fail) => {
                self.root.truncate(self.rows);
                self.cx.ignored = ignored;
                Err(fail.into_record_error(origin))
            }
        }
    }

    fn append_row(&mut self, value: &[u8]) -> Result<(), Box<Fail>> {
        // UTF-8 is checked by the reader, in strings (the only place JSON allows non-ASCII).
        let mut cur = Cursor::new(value);
        if self.unnest.is_none() && self.projections.is_empty() {
            if cur.peek()? != b'{' {
                return Err(not_an_object(&mut cur, "the record"));
            }
            self.root.begin();
            self.root
                .members(&mut cur, &mut self.cx, 0, self.rows, &[])?;
            cur.end()?;
            return self.root.finish_object();
        }
        // Reshaping: check the whole record first, then read the parts the pointers name.
        cur.skip(None, 0)?;
        cur.end()?;
        let row = match &self.unnest {
            None => 0..value.len(),
            Some(tokens) => locate(value, tokens)?.ok_or_else(|| {
                Fail::new(
                    RecordErrorKind::NotAnObject,
                    format!(
                        "the unnest pointer {} leads nowhere in this record",
                        pointer_text(tokens)
                    ),
                )
            })?,
        };
        self.root.begin();
        for (i, tokens) in &self.projections {
            let col = &mut self.root.cols[*i];
            match locate(value, tokens)? {
                Some(range) => {
                    let mut sub = Cursor {
                        b: &value[..range.end],
                        i: range.start,
                    };
                    if let Err(e) = build::decode(col, &mut sub, &mut self.cx, 1) {
                        return Err(e.within(col.name.clone()));
                    }
                }
                None if col.nullable => col.append_null(),
                None => {
                    return Err(Fail::new(
                        RecordErrorKind::MissingRequired,
                        format!(
                            "required column is missing: {} leads nowhere",
                            pointer_text(tokens)
                        ),
                    )
                    .within(col.name.clone()));
                }
            }
            self.root.mark_seen(*i);
        }
        let mut sub = Cursor {
            b: &value[..row.end],
            i: row.start,
        };
        if sub.peek()? != b'{' {
            return Err(not_an_object(&mut sub, "the unnested row"));
        }
        self.root
            .members(&mut sub, &mut self.cx, 0, self.rows, &self.overridden)?;
        self.root.finish_object()
    }

    /// Removes the last appended row (the loader reads a record again after adding columns).
    pub fn pop_last(&mut self) {
        if self.rows > 0 {
            self.rows -= 1;
            self.root.truncate(self.rows);
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Approximate memory held by the buffered rows. Walks the column builders: O(columns).
    pub fn buffered_bytes(&self) -> usize {
        self.root.buffered_bytes()
    }

    /// JSON fields not in the table, skipped since this decoder was made (never reset).
    pub fn ignored_fields(&self) -> u64 {
        self.cx.ignored
    }

    /// Takes the rows appended so far as one record batch and resets.
    pub fn finish(&mut self) -> RecordBatch {
        let columns = self.root.finish();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .expect("the builders produce arrays of the schema's exact types")
    }
}

fn not_an_object(cur: &mut Cursor, what: &str) -> Box<Fail> {
    let start = cur.i;
    if let Err(e) = cur.skip(None, 0) {
        return e;
    }
    let text = json::utf8(&cur.b[start..cur.i]);
    Fail::new(
        RecordErrorKind::NotAnObject,
        format!("{what} is not a JSON object: {}", fail::truncated(text, 80)),
    )
}

/// Splits an RFC 6901 JSON pointer into its unescaped reference tokens.
fn pointer_tokens(pointer: &str, what: &'static str) -> Result<Vec<String>, DecodeSetupError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(DecodeSetupError::InvalidPointer {
            what,
            pointer: pointer.to_owned(),
        });
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_text(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// The byte range of the value a JSON pointer names, if it exists. The record is valid JSON.
fn locate(b: &[u8], tokens: &[String]) -> Result<Option<Range<usize>>, Box<Fail>> {
    let mut cur = Cursor::new(b);
    let mut scratch = Vec::new();
    'tokens: for token in tokens {
        match cur.peek()? {
            b'{' => {
                cur.i += 1;
                if cur.peek()? == b'}' {
                    return Ok(None);
                }
                loop {
                    if cur.peek()? != b'"' {
                        return Err(cur.syntax("expected a string key"));
                    }
                    let at = cur.i;
                    let key = cur.string()?;
                    cur.eat(b':', "':'")?;
                    if key.text(&mut scratch, at)? == token {
                        continue 'tokens;
                    }
                    cur.skip(None, 1)?;
                    if !cur.next_or_close(b'}')? {
                        return Ok(None);
                    }
                }
            }
            b'[' => {
                let Ok(index) = token.parse::<usize>() else {
                    return Ok(None);
                };
                cur.i += 1;
                if cur.peek()? == b']' {
                    return Ok(None);
                }
                for _ in 0..index {
                    cur.skip(None, 1)?;
                    if !cur.next_or_close(b']')? {
                        return Ok(None);
                    }
                }
            }
            _ => return Ok(None),
        }
    }
    cur.ws();
    let start = cur.i;
    cur.skip(None, 0)?;
    Ok(Some(start..cur.i))
}

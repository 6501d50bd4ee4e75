//! Record errors: what went wrong with one record, said so a person can act on it.

use std::fmt;

use super::Origin;

/// Why a record cannot be written. Every kind is dead-letter material: the record will never parse
/// under this schema, and retrying does not help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordErrorKind {
    /// The bytes are not JSON.
    NotJson,
    /// The bytes are not UTF-8 (JSON text must be).
    InvalidUtf8,
    /// The record (or the object the unnest pointer names) is JSON but not an object.
    NotAnObject,
    /// A value cannot be read as its column's type.
    WrongType,
    /// A number or date that has the right form but does not fit the column's type.
    OutOfRange,
    /// A required (NOT NULL) column is missing or null.
    MissingRequired,
    /// The record has fields, but none of them is a column of the table.
    NoMatchingFields,
    /// The record decoded, but its row failed a `[[checks]]` data check with action
    /// `dead_letter`.
    CheckFailed,
}

impl RecordErrorKind {
    /// Every kind.
    pub const ALL: [RecordErrorKind; 8] = [
        Self::NotJson,
        Self::InvalidUtf8,
        Self::NotAnObject,
        Self::WrongType,
        Self::OutOfRange,
        Self::MissingRequired,
        Self::NoMatchingFields,
        Self::CheckFailed,
    ];

    /// A stable name for dead-letter headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotJson => "not-json",
            Self::InvalidUtf8 => "invalid-utf8",
            Self::NotAnObject => "not-an-object",
            Self::WrongType => "wrong-type",
            Self::OutOfRange => "out-of-range",
            Self::MissingRequired => "missing-required",
            Self::NoMatchingFields => "no-matching-fields",
            Self::CheckFailed => "check-failed",
        }
    }
}

impl fmt::Display for RecordErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a record came from, owned (it outlives the batch it was read in).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordOrigin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for RecordOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic {}, partition {}, offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

/// One record that cannot be decoded. Nothing of it was kept; the records around it are unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    kind: RecordErrorKind,
    column: String,
    message: String,
    origin: RecordOrigin,
}

impl RecordError {
    /// A row that failed a data check: `message` names the check and the value.
    pub fn check_failed(column: &str, message: String, origin: RecordOrigin) -> RecordError {
        RecordError {
            kind: RecordErrorKind::CheckFailed,
            column: column.to_owned(),
            message,
            origin,
        }
    }

    pub fn kind(&self) -> RecordErrorKind {
        self.kind
    }

    /// The column path (`nested.key`, `integers[2]`, `string_map["k1"]`), empty when the record as a
    /// whole is at fault (not JSON, not an object).
    pub fn column(&self) -> &str {
        &self.column
    }

    /// What is wrong, without the column and origin (`expected a long, got "abc"`).
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn origin(&self) -> &RecordOrigin {
        &self.origin
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.column.is_empty() {
            write!(f, "{} ({})", self.message, self.origin)
        } else {
            write!(
                f,
                "column \"{}\": {} ({})",
                self.column, self.message, self.origin
            )
        }
    }
}

impl std::error::Error for RecordError {}

/// A failure while decoding, before the origin is attached. The column path is collected while the
/// error travels up through the nested decoders (innermost segment first).
#[derive(Debug)]
pub(crate) struct Fail {
    pub kind: RecordErrorKind,
    pub message: String,
    path: Vec<String>,
}

impl Fail {
    pub fn new(kind: RecordErrorKind, message: String) -> Box<Fail> {
        Box::new(Fail {
            kind,
            message,
            path: Vec::new(),
        })
    }

    pub fn not_json(message: String) -> Box<Fail> {
        Fail::new(RecordErrorKind::NotJson, format!("not JSON: {message}"))
    }

    /// Adds the enclosing path segment: a field name, or `[3]`/`["key"]` for list and map entries.
    pub fn within(mut self: Box<Self>, segment: impl Into<String>) -> Box<Self> {
        if self.kind != RecordErrorKind::NotJson {
            self.path.push(segment.into());
        }
        self
    }

    pub fn into_record_error(self, origin: &Origin) -> RecordError {
        let mut column = String::new();
        for seg in self.path.iter().rev() {
            if !column.is_empty() && !seg.starts_with('[') {
                column.push('.');
            }
            column.push_str(seg);
        }
        RecordError {
            kind: self.kind,
            column,
            message: self.message,
            origin: RecordOrigin {
                topic: origin.topic.to_owned(),
                partition: origin.partition,
                offset: origin.offset,
            },
        }
    }
}

/// At most `max` characters of a value for an error message, marked when cut.
pub(crate) fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
    }
}

//! Parser for the Trino `CREATE TABLE` and `ALTER TABLE` statements that
//! describe the Iceberg tables floe writes to.
//!
//! Users define a table in the SQL they would give Trino's Iceberg connector, so
//! a definition can move between Trino and floe unchanged. This module turns
//! that text into floe's own syntax tree ([`CreateTable`], [`AlterTable`]) and
//! rejects, with a line, a column and a reason, everything floe cannot honour:
//! types Iceberg lacks or the connector refuses (`TINYINT`, `VARCHAR(n)`,
//! `TIMESTAMP(3)`), table properties other than the few floe implements, and
//! Trino syntax that builds a table some other way (`AS SELECT`, `LIKE`).
//!
//! Scope: one statement per call. The grammar follows Trino's documentation of
//! `CREATE TABLE`, `ALTER TABLE` and the Iceberg connector (type mapping, table
//! properties, partition transforms). The module uses only `std` so it can be
//! built and tested in isolation.
//!
//! The parser checks what the statement alone can tell: syntax, types and their
//! parameters, duplicate column and ROW field names, table properties and, for
//! `CREATE TABLE`, that each partition field names a top-level column whose type
//! suits the transform. Checks that need the existing table (does an `ALTER`
//! path exist, is a type change a legal Iceberg promotion, may a `NOT NULL`
//! column be added) are left to the caller.

use std::collections::HashSet;
use std::fmt;

/// Deepest ARRAY/MAP/ROW nesting accepted. Real schemas stay far below it; the
/// limit keeps the recursive type parser's stack use bounded on hostile input.
const MAX_TYPE_DEPTH: usize = 64;

/// How deep a column's type may nest JSON containers in the table's metadata file. floe parses
/// metadata with serde_json, which stops at 128 nested containers; the metadata itself takes 5
/// above a column's type (document, `schemas`, schema, `fields`, field) and one is the limit's own.
/// A ROW takes 3 (its type object, `fields`, each field), an ARRAY or a MAP 1: 40 nested ROWs fit,
/// 41 do not. Deeper types would make a table that floe itself cannot open again.
pub const MAX_TYPE_JSON_DEPTH: usize = 122;
/// JSON containers a ROW opens in Iceberg's schema JSON beneath the field that holds it.
pub const ROW_JSON_DEPTH: usize = 3;

/// Largest bucket count or truncate width: Iceberg stores both as a 32-bit int.
const MAX_TRANSFORM_ARGUMENT: u32 = 2_147_483_647;

/// Listed in every "unsupported type" error so the user sees the alternatives.
const SUPPORTED_TYPES: &str = "BOOLEAN, INTEGER, BIGINT, REAL, DOUBLE, DECIMAL(p,s), VARCHAR, \
     VARBINARY, DATE, TIME(6), TIMESTAMP(6), TIMESTAMP(6) WITH TIME ZONE, UUID, ARRAY(..), \
     MAP(..,..), ROW(..)";

/// Table properties `CREATE TABLE ... WITH (...)` accepts.
const CREATE_PROPERTIES: &[&str] = &["format", "format_version", "location", "partitioning"];

/// Table properties `ALTER TABLE ... SET PROPERTIES` accepts; Trino cannot move
/// an existing table, so `location` is missing here.
const ALTER_PROPERTIES: &[&str] = &["format", "format_version", "partitioning"];

const ALTER_ACTIONS: &str = "ADD COLUMN, DROP COLUMN, RENAME COLUMN, \
     ALTER COLUMN ... SET DATA TYPE, ALTER COLUMN ... DROP NOT NULL, SET PROPERTIES";

// ---------------------------------------------------------------------------
// Syntax tree
// ---------------------------------------------------------------------------

/// A place in the SQL text: 1-based line and column, columns counted in
/// characters (not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// 1-based line number.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

/// A parsed `CREATE TABLE` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTable {
    /// `IF NOT EXISTS` was given: an existing table is not an error.
    pub if_not_exists: bool,
    /// The table name split at dots, e.g. `["default", "t"]` or `["t"]`.
    pub name: Vec<String>,
    /// The columns in declaration order; never empty.
    pub columns: Vec<ColumnDef>,
    /// The table `COMMENT '...'`, if given.
    pub comment: Option<String>,
    /// The `WITH (...)` table properties in the order written, with normalised
    /// names. Only supported properties with valid values get this far.
    pub properties: Vec<(String, PropertyValue)>,
}

/// One column of a `CREATE TABLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    /// Normalised name: lowercased unless it was double-quoted.
    pub name: String,
    /// The column type.
    pub data_type: DataType,
    /// `NOT NULL` was given (an Iceberg "required" field).
    pub not_null: bool,
    /// The column `COMMENT '...'`, if given.
    pub comment: Option<String>,
}

/// A column type: the Trino types that Trino's Iceberg connector maps to
/// Iceberg types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataType {
    /// `BOOLEAN` (Iceberg `boolean`).
    Boolean,
    /// `INTEGER` or `INT` (Iceberg `int`).
    Integer,
    /// `BIGINT` (Iceberg `long`).
    Bigint,
    /// `REAL` (Iceberg `float`).
    Real,
    /// `DOUBLE` (Iceberg `double`).
    Double,
    /// `DECIMAL(p, s)`; a bare `DECIMAL` is Trino's default `DECIMAL(38, 0)`.
    Decimal {
        /// Total digits, 1 to 38.
        precision: u32,
        /// Digits after the point, at most `precision`.
        scale: u32,
    },
    /// Unbounded `VARCHAR` (Iceberg `string`).
    Varchar,
    /// `VARBINARY` (Iceberg `binary`).
    Varbinary,
    /// `DATE`.
    Date,
    /// `TIME(6)`, microseconds, no zone.
    Time,
    /// `TIMESTAMP(6)`, microseconds, no zone (Iceberg `timestamp`).
    Timestamp,
    /// `TIMESTAMP(6) WITH TIME ZONE` (Iceberg `timestamptz`).
    TimestampTz,
    /// `UUID`.
    Uuid,
    /// `ARRAY(element)`.
    Array(Box<DataType>),
    /// `MAP(key, value)`.
    Map(Box<DataType>, Box<DataType>),
    /// `ROW(name type, ...)` (Iceberg `struct`); never empty.
    Row(Vec<RowField>),
}

/// A named field of a `ROW` type. Trino cannot mark ROW fields `NOT NULL`, so
/// they are always optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowField {
    /// Normalised name: lowercased unless it was double-quoted.
    pub name: String,
    /// The field type.
    pub data_type: DataType,
}

/// The value of a table property together with where it was written, so that
/// checks made after parsing (like [`CreateTable::partitioning`]) can still
/// point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// A string literal, unescaped.
    String(String, Position),
    /// A whole number, possibly negative.
    Integer(i64, Position),
    /// `TRUE` or `FALSE`.
    Boolean(bool, Position),
    /// `ARRAY[...]` of non-array values.
    Array(Vec<PropertyValue>, Position),
    /// `DEFAULT`: the property's default value, as if it were left out.
    Default(Position),
}

/// One entry of the `partitioning` table property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    /// How the column's values become partition values.
    pub transform: Transform,
    /// The top-level source column, normalised like any identifier.
    pub column: String,
}

/// An Iceberg partition transform as Trino writes it in `partitioning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// `'col'`: the value itself.
    Identity,
    /// `'year(col)'`.
    Year,
    /// `'month(col)'`.
    Month,
    /// `'day(col)'`.
    Day,
    /// `'hour(col)'`.
    Hour,
    /// `'bucket(col, n)'`: hash into `n` buckets.
    Bucket(u32),
    /// `'truncate(col, w)'`: truncate to width `w`.
    Truncate(u32),
}

/// A parsed `ALTER TABLE` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterTable {
    /// `ALTER TABLE IF EXISTS`: a missing table is not an error.
    pub if_exists: bool,
    /// The table name split at dots.
    pub name: Vec<String>,
    /// What to change.
    pub action: AlterAction,
}

/// The change an `ALTER TABLE` makes. Column paths have one part for a
/// top-level column and more for a field nested in ROW columns
/// (`nested.newfield`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterAction {
    /// `ADD COLUMN [IF NOT EXISTS] path type [NOT NULL] [COMMENT '...'] [LAST]`.
    AddColumn {
        /// Adding an existing column is not an error.
        if_not_exists: bool,
        /// The new column or nested field.
        path: Vec<String>,
        /// Its type.
        data_type: DataType,
        /// `NOT NULL` was given. Iceberg refuses new required columns on tables
        /// with data; the caller decides.
        not_null: bool,
        /// `COMMENT '...'`, if given.
        comment: Option<String>,
    },
    /// `DROP COLUMN [IF EXISTS] path`.
    DropColumn {
        /// Dropping a missing column is not an error.
        if_exists: bool,
        /// The column or nested field to drop.
        path: Vec<String>,
    },
    /// `RENAME COLUMN [IF EXISTS] path TO name`.
    RenameColumn {
        /// Renaming a missing column is not an error.
        if_exists: bool,
        /// The column or nested field to rename.
        path: Vec<String>,
        /// Its new name (the last path part only).
        new_name: String,
    },
    /// `ALTER COLUMN path SET DATA TYPE type`.
    SetDataType {
        /// The column or nested field to change.
        path: Vec<String>,
        /// The new type; whether Iceberg can promote to it is for the caller.
        data_type: DataType,
    },
    /// `ALTER COLUMN path DROP NOT NULL`: make a required column optional.
    DropNotNull {
        /// The column or nested field to relax.
        path: Vec<String>,
    },
    /// `SET PROPERTIES name = value, ...`, in the order written.
    SetProperties(Vec<(String, PropertyValue)>),
}

/// Why a statement was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdlError {
    /// What is wrong, and what would be accepted instead.
    pub message: String,
    /// 1-based line of the offending token.
    pub line: u32,
    /// 1-based column (in characters) of the offending token.
    pub column: u32,
    /// The offending token as written; empty at the end of the input.
    pub token: String,
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Parses one Trino `CREATE TABLE` statement (an optional trailing `;` is
/// allowed) and checks that floe can create and write the table it describes.
///
/// # Errors
///
/// A [`DdlError`] at the first token that is malformed, unsupported (a type,
/// a property, `AS SELECT`, ...) or invalid (a duplicate column, a partition
/// field naming a missing column or a transform unfit for its type).
pub fn parse_create_table(sql: &str) -> Result<CreateTable, DdlError> {
    Parser::new(tokenize(sql)?).create_table()
}

/// Parses one Trino `ALTER TABLE` statement of the kinds floe applies: add,
/// drop, rename or retype a column (nested fields by dotted path), drop a
/// `NOT NULL`, or set table properties.
///
/// # Errors
///
/// A [`DdlError`] at the first token that is malformed or names something
/// floe does not support (another ALTER action, a type, a property).
pub fn parse_alter_table(sql: &str) -> Result<AlterTable, DdlError> {
    Parser::new(tokenize(sql)?).alter_table()
}

/// Interprets a `partitioning` property value against a table's columns:
/// each entry must parse as a transform of a top-level column whose type the
/// transform accepts, and no entry may repeat another. `DEFAULT` means
/// unpartitioned. Used by [`CreateTable::partitioning`], and by callers that
/// apply an `ALTER TABLE ... SET PROPERTIES partitioning = ...`.
///
/// # Errors
///
/// A [`DdlError`] pointing at the offending string (or at the value when it is
/// not an array of strings).
pub fn parse_partitioning(
    value: &PropertyValue,
    columns: &[ColumnDef],
) -> Result<Vec<PartitionField>, DdlError> {
    let items = match value {
        PropertyValue::Default(_) => return Ok(Vec::new()),
        PropertyValue::Array(items, _) => items,
        _ => return Err(partitioning_shape_error(value)),
    };
    let mut fields: Vec<PartitionField> = Vec::new();
    for item in items {
        let field = partition_field(item)?;
        check_partition_source(&field, item, columns)?;
        check_not_redundant(&field, item, &fields)?;
        fields.push(field);
    }
    Ok(fields)
}

impl CreateTable {
    /// The partition spec from the `partitioning` property; empty when the
    /// table is unpartitioned.
    ///
    /// # Errors
    ///
    /// As for [`parse_partitioning`]; never for a table that came from
    /// [`parse_create_table`], which already made this check.
    pub fn partitioning(&self) -> Result<Vec<PartitionField>, DdlError> {
        match self.property("partitioning") {
            Some(value) => parse_partitioning(value, &self.columns),
            None => Ok(Vec::new()),
        }
    }

    /// The `location` property, if given (and not `DEFAULT`).
    #[must_use]
    pub fn location(&self) -> Option<&str> {
        self.property("location").and_then(PropertyValue::as_str)
    }

    /// The value of the named property (normalised name), if given.
    #[must_use]
    pub fn property(&self, name: &str) -> Option<&PropertyValue> {
        self.properties
            .iter()
            .find(|(candidate, _)| candidate == name)
            .map(|(_, value)| value)
    }
}

impl PropertyValue {
    /// Where the value starts in the SQL text.
    #[must_use]
    pub fn position(&self) -> Position {
        match self {
            Self::String(_, at)
            | Self::Integer(_, at)
            | Self::Boolean(_, at)
            | Self::Array(_, at)
            | Self::Default(at) => *at,
        }
    }

    /// The string, if this is a string literal.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(value, _) => Some(value),
            _ => None,
        }
    }

    /// The text an error about this value underlines. For an array only the
    /// `ARRAY` keyword, so the caret stays on one line.
    fn token(&self) -> String {
        match self {
            Self::Array(..) => "ARRAY".to_owned(),
            other => other.to_string(),
        }
    }
}

impl DataType {
    /// True for every type except ARRAY, MAP and ROW.
    #[must_use]
    pub fn is_primitive(&self) -> bool {
        !matches!(self, Self::Array(_) | Self::Map(..) | Self::Row(_))
    }
}

impl Transform {
    /// Whether Iceberg can apply this transform to a column of type `ty`.
    #[must_use]
    pub fn applies_to(self, ty: &DataType) -> bool {
        use DataType as T;
        match self {
            Self::Identity => ty.is_primitive(),
            Self::Year | Self::Month | Self::Day => {
                matches!(ty, T::Date | T::Timestamp | T::TimestampTz)
            }
            Self::Hour => matches!(ty, T::Timestamp | T::TimestampTz),
            Self::Bucket(_) => matches!(
                ty,
                T::Integer
                    | T::Bigint
                    | T::Decimal { .. }
                    | T::Date
                    | T::Time
                    | T::Timestamp
                    | T::TimestampTz
                    | T::Varchar
                    | T::Varbinary
                    | T::Uuid
            ),
            Self::Truncate(_) => matches!(
                ty,
                T::Integer | T::Bigint | T::Decimal { .. } | T::Varchar | T::Varbinary
            ),
        }
    }

    /// How the transform is named in messages.
    fn label(self) -> &'static str {
        match self {
            Self::Identity => "identity partitioning",
            Self::Year => "year()",
            Self::Month => "month()",
            Self::Day => "day()",
            Self::Hour => "hour()",
            Self::Bucket(_) => "bucket()",
            Self::Truncate(_) => "truncate()",
        }
    }

    /// The column types the transform accepts, for messages.
    fn accepted_types(self) -> &'static str {
        match self {
            Self::Identity => "any type except ARRAY, MAP and ROW",
            Self::Year | Self::Month | Self::Day => {
                "DATE, TIMESTAMP(6) and TIMESTAMP(6) WITH TIME ZONE"
            }
            Self::Hour => "TIMESTAMP(6) and TIMESTAMP(6) WITH TIME ZONE",
            Self::Bucket(_) => {
                "INTEGER, BIGINT, DECIMAL, DATE, TIME(6), TIMESTAMP(6), \
                 TIMESTAMP(6) WITH TIME ZONE, VARCHAR, VARBINARY and UUID"
            }
            Self::Truncate(_) => "INTEGER, BIGINT, DECIMAL, VARCHAR and VARBINARY",
        }
    }

    /// Iceberg allows one partition field per column and family: the time
    /// transforms would produce overlapping partitions, and two buckets (or two
    /// truncates) of one column would get the same partition field name.
    fn family(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Year | Self::Month | Self::Day | Self::Hour => "year/month/day/hour",
            Self::Bucket(_) => "bucket",
            Self::Truncate(_) => "truncate",
        }
    }
}

impl DdlError {
    fn new(message: impl Into<String>, at: Position, token: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            line: at.line,
            column: at.column,
            token: token.into(),
        }
    }

    /// The error followed by the offending source line and a caret under the
    /// token, like a compiler diagnostic:
    ///
    /// ```text
    /// line 2, column 5: unsupported type "TINYINT" (supported: ...)
    /// 2 |   a TINYINT)
    ///   |     ^^^^^^^
    /// ```
    #[must_use]
    pub fn render(&self, sql: &str) -> String {
        let line_index = usize::try_from(self.line.saturating_sub(1)).unwrap_or(usize::MAX);
        let source = sql.lines().nth(line_index).unwrap_or("");
        let before = usize::try_from(self.column.saturating_sub(1)).unwrap_or(usize::MAX);
        // Copy tabs from the source line so the caret lines up whatever the
        // terminal's tab width.
        let mut pad: String = source
            .chars()
            .take(before)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let line_chars = source.chars().count();
        pad.extend(std::iter::repeat_n(' ', before.saturating_sub(line_chars)));
        let token_width = self.token.chars().take_while(|&c| c != '\n').count();
        let room = line_chars.saturating_sub(before);
        let carets = "^".repeat(token_width.min(room).max(1));
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        format!("{self}\n{number} | {source}\n{gutter} | {pad}{carets}")
    }
}

impl fmt::Display for DdlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for DdlError {}

/// Formats the type as Trino spells it, e.g. `MAP(VARCHAR, ROW(a BIGINT))`.
impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Boolean => f.write_str("BOOLEAN"),
            Self::Integer => f.write_str("INTEGER"),
            Self::Bigint => f.write_str("BIGINT"),
            Self::Real => f.write_str("REAL"),
            Self::Double => f.write_str("DOUBLE"),
            Self::Decimal { precision, scale } => write!(f, "DECIMAL({precision},{scale})"),
            Self::Varchar => f.write_str("VARCHAR"),
            Self::Varbinary => f.write_str("VARBINARY"),
            Self::Date => f.write_str("DATE"),
            Self::Time => f.write_str("TIME(6)"),
            Self::Timestamp => f.write_str("TIMESTAMP(6)"),
            Self::TimestampTz => f.write_str("TIMESTAMP(6) WITH TIME ZONE"),
            Self::Uuid => f.write_str("UUID"),
            Self::Array(element) => write!(f, "ARRAY({element})"),
            Self::Map(key, value) => write!(f, "MAP({key}, {value})"),
            Self::Row(fields) => {
                f.write_str("ROW(")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{} {}", quote_identifier(&field.name), field.data_type)?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Formats the value as SQL, e.g. `'PARQUET'` or `ARRAY['day(ts)']`.
impl fmt::Display for PropertyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(value, _) => write!(f, "'{}'", value.replace('\'', "''")),
            Self::Integer(value, _) => write!(f, "{value}"),
            Self::Boolean(value, _) => f.write_str(if *value { "TRUE" } else { "FALSE" }),
            Self::Array(items, _) => {
                f.write_str("ARRAY[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Self::Default(_) => f.write_str("DEFAULT"),
        }
    }
}

/// Formats the field as an entry of Trino's `partitioning` array (without the
/// surrounding quotes), e.g. `bucket(id, 16)`.
impl fmt::Display for PartitionField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let column = quote_identifier(&self.column);
        match self.transform {
            Transform::Identity => f.write_str(&column),
            Transform::Year => write!(f, "year({column})"),
            Transform::Month => write!(f, "month({column})"),
            Transform::Day => write!(f, "day({column})"),
            Transform::Hour => write!(f, "hour({column})"),
            Transform::Bucket(count) => write!(f, "bucket({column}, {count})"),
            Transform::Truncate(width) => write!(f, "truncate({column}, {width})"),
        }
    }
}

/// Double-quotes a name unless it reads back unchanged as a plain identifier.
fn quote_identifier(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// An unquoted identifier or keyword; the token text is its spelling.
    Word,
    /// A double-quoted identifier, `""` already unescaped.
    Quoted(String),
    /// A single-quoted string literal, `''` already unescaped.
    Str(String),
    /// An unsigned number as written: digits with an optional fraction.
    Number,
    /// Any other single character; the parser decides whether it fits.
    Punct(char),
    /// The end of the input; always the last token.
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// The source text of the token, quotes included.
    text: String,
    at: Position,
}

struct Lexer {
    chars: Vec<char>,
    index: usize,
    line: u32,
    column: u32,
}

/// Splits the SQL into tokens, dropping whitespace and comments. The result
/// always ends with an `Eof` token placed just after the last real token, so
/// "unexpected end of input" errors point where something is missing.
fn tokenize(sql: &str) -> Result<Vec<Token>, DdlError> {
    let mut lexer = Lexer {
        chars: sql.chars().collect(),
        index: 0,
        line: 1,
        column: 1,
    };
    let mut tokens = Vec::new();
    let mut end = lexer.here();
    loop {
        lexer.skip_trivia()?;
        match lexer.token()? {
            Some(token) => {
                tokens.push(token);
                end = lexer.here();
            }
            None => break,
        }
    }
    tokens.push(Token {
        kind: Kind::Eof,
        text: String::new(),
        at: end,
    });
    Ok(tokens)
}

fn is_identifier_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Lexer {
    fn here(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.index + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.index += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn bump_while(&mut self, keep: impl Fn(char) -> bool) {
        while self.peek(0).is_some_and(&keep) {
            self.bump();
        }
    }

    fn text_from(&self, start: usize) -> String {
        self.chars[start..self.index].iter().collect()
    }

    /// Skips whitespace, `-- line` comments and `/* block */` comments.
    fn skip_trivia(&mut self) -> Result<(), DdlError> {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(c), _) if c.is_whitespace() => {
                    self.bump();
                }
                (Some('-'), Some('-')) => self.bump_while(|c| c != '\n'),
                (Some('/'), Some('*')) => self.block_comment()?,
                _ => return Ok(()),
            }
        }
    }

    fn block_comment(&mut self) -> Result<(), DdlError> {
        let start = self.here();
        self.bump();
        self.bump();
        loop {
            match self.bump() {
                Some('*') if self.peek(0) == Some('/') => {
                    self.bump();
                    return Ok(());
                }
                Some(_) => {}
                None => {
                    return Err(DdlError::new(
                        "unterminated comment: \"/*\" has no closing \"*/\"",
                        start,
                        "/*",
                    ));
                }
            }
        }
    }

    /// Reads the next token, or `None` at the end of the input.
    fn token(&mut self) -> Result<Option<Token>, DdlError> {
        let start = self.index;
        let at = self.here();
        let Some(c) = self.peek(0) else {
            return Ok(None);
        };
        let kind = match c {
            '\'' => Kind::Str(self.quoted('\'', at, "string literal")?),
            '"' => {
                let name = self.quoted('"', at, "quoted identifier")?;
                if name.is_empty() {
                    return Err(DdlError::new("empty quoted identifier", at, "\"\""));
                }
                Kind::Quoted(name)
            }
            '`' => {
                return Err(DdlError::new(
                    "backquoted identifiers are not supported: use double quotes",
                    at,
                    "`",
                ));
            }
            c if c.is_alphabetic() || c == '_' => {
                self.bump_while(is_identifier_char);
                Kind::Word
            }
            c if c.is_ascii_digit() => self.number(start, at)?,
            c => {
                self.bump();
                Kind::Punct(c)
            }
        };
        Ok(Some(Token {
            kind,
            text: self.text_from(start),
            at,
        }))
    }

    /// Reads a literal delimited by `quote`, where a doubled quote stands for
    /// one quote character. Literals may span lines.
    fn quoted(&mut self, quote: char, at: Position, what: &str) -> Result<String, DdlError> {
        self.bump();
        let mut value = String::new();
        loop {
            match self.bump() {
                Some(c) if c == quote && self.peek(0) == Some(quote) => {
                    self.bump();
                    value.push(quote);
                }
                Some(c) if c == quote => return Ok(value),
                Some(c) => value.push(c),
                None => {
                    return Err(DdlError::new(
                        format!("unterminated {what}: no closing {quote}"),
                        at,
                        quote.to_string(),
                    ));
                }
            }
        }
    }

    fn number(&mut self, start: usize, at: Position) -> Result<Kind, DdlError> {
        self.bump_while(|c| c.is_ascii_digit());
        if self.peek(0) == Some('.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
            self.bump_while(|c| c.is_ascii_digit());
        }
        // Trino rejects unquoted identifiers that start with a digit; say so
        // rather than report a number followed by a stray word.
        if self.peek(0).is_some_and(is_identifier_char) {
            self.bump_while(is_identifier_char);
            return Err(DdlError::new(
                "identifiers must not start with a digit: double-quote it",
                at,
                self.text_from(start),
            ));
        }
        Ok(Kind::Number)
    }
}

// ---------------------------------------------------------------------------
// Parser: shared machinery
// ---------------------------------------------------------------------------

/// Which statement a property list belongs to; they accept different sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Create,
    Alter,
}

struct Parser {
    /// Never empty: the lexer always appends `Eof`.
    tokens: Vec<Token>,
    /// Index of the next token; never moves past `Eof`.
    index: usize,
}

fn is_keyword(token: &Token, keyword: &str) -> bool {
    token.kind == Kind::Word && token.text.eq_ignore_ascii_case(keyword)
}

fn error_at(token: &Token, message: impl Into<String>) -> DdlError {
    DdlError::new(message, token.at, token.text.clone())
}

/// How a token is named in "found ..." messages.
fn describe(token: &Token) -> String {
    match token.kind {
        Kind::Eof => "end of input".to_owned(),
        Kind::Str(_) => format!("string {}", token.text),
        Kind::Quoted(_) => token.text.clone(),
        Kind::Word | Kind::Number | Kind::Punct(_) => format!("\"{}\"", token.text),
    }
}

impl Parser {
    fn new(tokens: Vec<Token>) -> Self {
        Self { tokens, index: 0 }
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.index]
    }

    fn peek_nth(&self, ahead: usize) -> &Token {
        let last = self.tokens.len() - 1;
        &self.tokens[(self.index + ahead).min(last)]
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != Kind::Eof {
            self.index += 1;
        }
        token
    }

    fn at_keyword(&self, keyword: &str) -> bool {
        is_keyword(self.peek(), keyword)
    }

    fn at_punct(&self, c: char) -> bool {
        self.peek().kind == Kind::Punct(c)
    }

    fn at_end(&self) -> bool {
        self.peek().kind == Kind::Eof
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.at_keyword(keyword);
        if found {
            self.advance();
        }
        found
    }

    fn eat_punct(&mut self, c: char) -> bool {
        let found = self.at_punct(c);
        if found {
            self.advance();
        }
        found
    }

    /// An error at the next token: "expected {expected}, found ...".
    fn unexpected(&self, expected: &str) -> DdlError {
        let token = self.peek();
        error_at(
            token,
            format!("expected {expected}, found {}", describe(token)),
        )
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<Token, DdlError> {
        if self.at_keyword(keyword) {
            Ok(self.advance())
        } else {
            Err(self.unexpected(keyword))
        }
    }

    fn expect_punct(&mut self, c: char) -> Result<Token, DdlError> {
        if self.at_punct(c) {
            Ok(self.advance())
        } else {
            Err(self.unexpected(&format!("\"{c}\"")))
        }
    }

    /// An optional `;`, then nothing more.
    fn expect_end(&mut self) -> Result<(), DdlError> {
        self.eat_punct(';');
        if self.at_end() {
            Ok(())
        } else {
            Err(self.unexpected("end of statement"))
        }
    }

    /// `IF NOT EXISTS`, looking ahead so that a name spelled `if` still works.
    fn eat_if_not_exists(&mut self) -> Result<bool, DdlError> {
        if !(self.at_keyword("IF") && is_keyword(self.peek_nth(1), "NOT")) {
            return Ok(false);
        }
        self.advance();
        self.advance();
        self.expect_keyword("EXISTS")?;
        Ok(true)
    }

    /// `IF EXISTS`, looking ahead so that a name spelled `if` still works.
    fn eat_if_exists(&mut self) -> bool {
        let found = self.at_keyword("IF") && is_keyword(self.peek_nth(1), "EXISTS");
        if found {
            self.advance();
            self.advance();
        }
        found
    }

    /// An identifier, normalised the way Trino does: unquoted names are
    /// lowercased, double-quoted names keep their case. Keywords are fine as
    /// names (`bool`, `timestamp`, `key`) because every caller knows from
    /// context that a name comes next.
    fn identifier(&mut self, what: &str) -> Result<(String, Token), DdlError> {
        let token = self.peek().clone();
        let name = match &token.kind {
            Kind::Word => token.text.to_lowercase(),
            Kind::Quoted(name) => name.clone(),
            _ => return Err(self.unexpected(what)),
        };
        self.advance();
        Ok((name, token))
    }

    /// `name(.name)*`, returning the parts and the first token.
    fn dotted_name(&mut self, what: &str) -> Result<(Vec<String>, Token), DdlError> {
        let (first, token) = self.identifier(what)?;
        let mut parts = vec![first];
        while self.eat_punct('.') {
            parts.push(self.identifier("a name after \".\"")?.0);
        }
        Ok((parts, token))
    }

    /// A table name: `table`, `schema.table` or `catalog.schema.table`.
    fn table_name(&mut self) -> Result<Vec<String>, DdlError> {
        let (parts, token) = self.dotted_name("a table name")?;
        if parts.len() > 3 {
            return Err(error_at(
                &token,
                format!(
                    "table name has {} parts; at most 3 are allowed (catalog.schema.table)",
                    parts.len()
                ),
            ));
        }
        Ok(parts)
    }

    fn string_literal(&mut self, what: &str) -> Result<String, DdlError> {
        match &self.peek().kind {
            Kind::Str(value) => {
                let value = value.clone();
                self.advance();
                Ok(value)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    /// An unsigned whole number that fits a `u32`.
    fn small_number(&mut self, what: &str) -> Result<(u32, Token), DdlError> {
        let token = self.peek().clone();
        if token.kind != Kind::Number {
            return Err(self.unexpected(what));
        }
        let value = token.text.parse::<u32>().map_err(|_| {
            error_at(
                &token,
                format!(
                    "expected {what} (a whole number below 2^32), found {}",
                    describe(&token)
                ),
            )
        })?;
        self.advance();
        Ok((value, token))
    }
}

/// Fails if `name` was already used in this column list or ROW. Names are
/// compared ignoring case: Iceberg readers such as Trino resolve names
/// case-insensitively, so `"A"` and `a` would collide.
fn check_unique(
    seen: &mut HashSet<String>,
    name: &str,
    token: &Token,
    what: &str,
) -> Result<(), DdlError> {
    if seen.insert(name.to_lowercase()) {
        Ok(())
    } else {
        Err(error_at(
            token,
            format!("duplicate {what} name \"{name}\" (names must differ ignoring case)"),
        ))
    }
}

// ---------------------------------------------------------------------------
// Parser: CREATE TABLE
// ---------------------------------------------------------------------------

impl Parser {
    fn create_table(&mut self) -> Result<CreateTable, DdlError> {
        self.expect_keyword("CREATE")?;
        if self.at_keyword("OR") {
            return Err(error_at(
                self.peek(),
                "CREATE OR REPLACE TABLE is not supported: floe never replaces an existing table",
            ));
        }
        if !self.at_keyword("TABLE") {
            return Err(self.unexpected("TABLE (only CREATE TABLE is supported)"));
        }
        self.advance();
        let if_not_exists = self.eat_if_not_exists()?;
        let name = self.table_name()?;
        self.reject_table_from_query()?;
        self.expect_punct('(')?;
        let columns = self.column_list()?;
        let comment = if self.eat_keyword("COMMENT") {
            Some(self.string_literal("a comment string")?)
        } else {
            None
        };
        self.reject_foreign_clause()?;
        let properties = if self.eat_keyword("WITH") {
            self.table_properties()?
        } else {
            Vec::new()
        };
        self.reject_foreign_clause()?;
        self.expect_end()?;
        let table = CreateTable {
            if_not_exists,
            name,
            columns,
            comment,
            properties,
        };
        // Checked now, so a bad partition spec fails at parse time with the
        // other errors instead of later when the table is created.
        table.partitioning()?;
        Ok(table)
    }

    /// `CREATE TABLE t AS SELECT` and `CREATE TABLE t WITH (...) AS SELECT`
    /// fill a table from a query, which floe has no use for.
    fn reject_table_from_query(&self) -> Result<(), DdlError> {
        if self.at_keyword("AS") {
            return Err(ctas_error(self.peek()));
        }
        if self.at_keyword("WITH") {
            return Err(self.unexpected(
                "\"(\" and the column list (CREATE TABLE ... AS SELECT is not supported)",
            ));
        }
        Ok(())
    }

    /// Clauses users bring from Hive or Spark, or a trailing `AS SELECT`.
    fn reject_foreign_clause(&self) -> Result<(), DdlError> {
        let token = self.peek();
        if is_keyword(token, "AS") {
            return Err(ctas_error(token));
        }
        if is_keyword(token, "PARTITIONED") {
            return Err(error_at(
                token,
                "PARTITIONED BY is not Trino syntax: use WITH (partitioning = ARRAY['column', 'day(ts)', ...])",
            ));
        }
        Ok(())
    }

    /// The column definitions after `(`, through the closing `)`.
    fn column_list(&mut self) -> Result<Vec<ColumnDef>, DdlError> {
        if self.at_punct(')') {
            return Err(error_at(self.peek(), "a table needs at least one column"));
        }
        let mut columns = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let (column, name_token) = self.column_def()?;
            check_unique(&mut seen, &column.name, &name_token, "column")?;
            columns.push(column);
            if self.eat_punct(')') {
                return Ok(columns);
            }
            if !self.eat_punct(',') {
                return Err(self.unexpected("\",\" or \")\" after the column definition"));
            }
        }
    }

    fn column_def(&mut self) -> Result<(ColumnDef, Token), DdlError> {
        if self.at_keyword("LIKE") {
            return Err(error_at(
                self.peek(),
                "CREATE TABLE ... LIKE is not supported: list the columns explicitly",
            ));
        }
        let (name, token) = self.identifier("a column name")?;
        self.expect_type_after(&name)?;
        let data_type = self.data_type(0)?;
        let (not_null, comment) = self.column_options()?;
        let column = ColumnDef {
            name,
            data_type,
            not_null,
            comment,
        };
        Ok((column, token))
    }

    /// A clearer error than "expected a data type" for `(a, b)`, the column
    /// alias list of `CREATE TABLE ... AS SELECT`.
    fn expect_type_after(&self, name: &str) -> Result<(), DdlError> {
        if self.at_punct(',') || self.at_punct(')') {
            return Err(error_at(
                self.peek(),
                format!("column \"{name}\" has no data type"),
            ));
        }
        Ok(())
    }

    /// `[NOT NULL] [COMMENT '...']`, rejecting the column clauses floe cannot
    /// honour (`DEFAULT`, `WITH (...)`).
    fn column_options(&mut self) -> Result<(bool, Option<String>), DdlError> {
        if self.at_keyword("DEFAULT") {
            return Err(error_at(
                self.peek(),
                "column DEFAULT values are not supported",
            ));
        }
        let not_null = if self.eat_keyword("NOT") {
            self.expect_keyword("NULL")?;
            true
        } else {
            false
        };
        let comment = if self.eat_keyword("COMMENT") {
            Some(self.string_literal("a comment string")?)
        } else {
            None
        };
        if self.at_keyword("WITH") {
            return Err(error_at(
                self.peek(),
                "column properties (WITH (...) after a column) are not supported",
            ));
        }
        Ok((not_null, comment))
    }

    /// `( property = value, ... )` after `WITH`.
    fn table_properties(&mut self) -> Result<Vec<(String, PropertyValue)>, DdlError> {
        self.expect_punct('(')?;
        let properties = self.property_list(Context::Create)?;
        if !self.eat_punct(')') {
            return Err(self.unexpected("\",\" or \")\" after the property"));
        }
        Ok(properties)
    }

    /// `name = value (, name = value)*`, each checked as soon as it is read so
    /// the error points at the offending name or value.
    fn property_list(
        &mut self,
        context: Context,
    ) -> Result<Vec<(String, PropertyValue)>, DdlError> {
        let mut properties: Vec<(String, PropertyValue)> = Vec::new();
        loop {
            let (name, token) = self.identifier("a property name")?;
            check_property_name(&name, &token, context)?;
            if properties.iter().any(|(seen, _)| *seen == name) {
                return Err(error_at(
                    &token,
                    format!("property \"{name}\" is set more than once"),
                ));
            }
            self.expect_punct('=')?;
            let value = self.property_value()?;
            check_property_value(&name, &value)?;
            properties.push((name, value));
            if !self.eat_punct(',') {
                return Ok(properties);
            }
        }
    }

    fn property_value(&mut self) -> Result<PropertyValue, DdlError> {
        let token = self.peek().clone();
        let at = token.at;
        let value = match &token.kind {
            Kind::Str(value) => PropertyValue::String(value.clone(), at),
            Kind::Number => PropertyValue::Integer(parse_integer(&token, "")?, at),
            Kind::Punct('-') => {
                self.advance();
                let digits = self.peek().clone();
                if digits.kind != Kind::Number {
                    return Err(self.unexpected("a number after \"-\""));
                }
                PropertyValue::Integer(parse_integer(&digits, "-")?, at)
            }
            Kind::Word if is_keyword(&token, "TRUE") => PropertyValue::Boolean(true, at),
            Kind::Word if is_keyword(&token, "FALSE") => PropertyValue::Boolean(false, at),
            Kind::Word if is_keyword(&token, "DEFAULT") => PropertyValue::Default(at),
            Kind::Word if is_keyword(&token, "ARRAY") => {
                self.advance();
                return Ok(PropertyValue::Array(self.array_items()?, at));
            }
            _ => {
                return Err(self.unexpected(
                    "a property value: a string, a number, TRUE, FALSE, ARRAY[...] or DEFAULT",
                ));
            }
        };
        self.advance();
        Ok(value)
    }

    /// `[item, ...]` after `ARRAY`. Nested arrays are refused: no supported
    /// property takes one, and refusing them bounds the recursion.
    fn array_items(&mut self) -> Result<Vec<PropertyValue>, DdlError> {
        self.expect_punct('[')?;
        let mut items = Vec::new();
        if self.eat_punct(']') {
            return Ok(items);
        }
        loop {
            if self.at_keyword("ARRAY") {
                return Err(error_at(
                    self.peek(),
                    "nested arrays are not supported in property values",
                ));
            }
            items.push(self.property_value()?);
            if self.eat_punct(']') {
                return Ok(items);
            }
            if !self.eat_punct(',') {
                return Err(self.unexpected("\",\" or \"]\""));
            }
        }
    }
}

fn ctas_error(token: &Token) -> DdlError {
    error_at(
        token,
        "CREATE TABLE ... AS SELECT is not supported: list the columns and their types",
    )
}

/// Parses a number token as an `i64`, with `sign` ("" or "-") in front.
fn parse_integer(token: &Token, sign: &str) -> Result<i64, DdlError> {
    if token.text.contains('.') {
        return Err(error_at(
            token,
            format!("expected a whole number, found {}", describe(token)),
        ));
    }
    format!("{sign}{}", token.text).parse().map_err(|_| {
        error_at(
            token,
            format!("number {sign}{} is out of range", token.text),
        )
    })
}

// ---------------------------------------------------------------------------
// Parser: types
// ---------------------------------------------------------------------------

impl Parser {
    /// A data type at the top of a column.
    fn data_type(&mut self, depth: usize) -> Result<DataType, DdlError> {
        self.nested_type(depth, 0)
    }

    /// A data type; `depth` counts enclosing ARRAY/MAP/ROW types, `json` the JSON containers they
    /// open in the table's metadata (see [`MAX_TYPE_JSON_DEPTH`]).
    fn nested_type(&mut self, depth: usize, json: usize) -> Result<DataType, DdlError> {
        let token = self.peek().clone();
        if depth > MAX_TYPE_DEPTH {
            return Err(error_at(
                &token,
                format!("types nested more than {MAX_TYPE_DEPTH} levels deep are not supported"),
            ));
        }
        if token.kind != Kind::Word {
            return Err(self.unexpected("a data type"));
        }
        let keyword = token.text.to_ascii_uppercase();
        let opens = match keyword.as_str() {
            "ROW" => ROW_JSON_DEPTH,
            "ARRAY" | "MAP" => 1,
            _ => 0,
        };
        if json + opens > MAX_TYPE_JSON_DEPTH {
            return Err(error_at(
                &token,
                format!(
                    "types nested this deep do not fit the table's metadata as floe reads it back: its JSON \
                     parser allows {MAX_TYPE_JSON_DEPTH} levels for a column's type, each ROW takes \
                     {ROW_JSON_DEPTH}, each ARRAY or MAP 1 (at most 40 nested ROWs); flatten the type"
                ),
            ));
        }
        let json = json + opens;
        self.advance();
        let data_type = match keyword.as_str() {
            "BOOLEAN" => DataType::Boolean,
            "INTEGER" | "INT" => DataType::Integer,
            "BIGINT" => DataType::Bigint,
            "REAL" => DataType::Real,
            "DOUBLE" => {
                self.eat_keyword("PRECISION");
                DataType::Double
            }
            "DECIMAL" => self.decimal()?,
            "VARCHAR" => {
                self.reject_varchar_length()?;
                DataType::Varchar
            }
            "VARBINARY" => DataType::Varbinary,
            "DATE" => DataType::Date,
            "TIME" => self.time()?,
            "TIMESTAMP" => self.timestamp()?,
            "UUID" => DataType::Uuid,
            "ARRAY" => {
                self.expect_punct('(')?;
                let element = self.nested_type(depth + 1, json)?;
                self.expect_punct(')')?;
                DataType::Array(Box::new(element))
            }
            "MAP" => {
                self.expect_punct('(')?;
                let key = self.nested_type(depth + 1, json)?;
                self.expect_punct(',')?;
                let value = self.nested_type(depth + 1, json)?;
                self.expect_punct(')')?;
                DataType::Map(Box::new(key), Box::new(value))
            }
            "ROW" => self.row(depth, json)?,
            _ => return Err(unsupported_type(&token)),
        };
        Ok(data_type)
    }

    /// `DECIMAL`, `DECIMAL(p)` or `DECIMAL(p, s)`. Trino documents the scale
    /// as defaulting to 0, and its bare `DECIMAL` is `DECIMAL(38, 0)`.
    fn decimal(&mut self) -> Result<DataType, DdlError> {
        if !self.eat_punct('(') {
            return Ok(DataType::Decimal {
                precision: 38,
                scale: 0,
            });
        }
        let (precision, token) = self.small_number("a precision")?;
        if !(1..=38).contains(&precision) {
            return Err(error_at(
                &token,
                format!("DECIMAL precision must be between 1 and 38, found {precision}"),
            ));
        }
        let scale = if self.eat_punct(',') {
            let (scale, token) = self.small_number("a scale")?;
            if scale > precision {
                return Err(error_at(
                    &token,
                    format!("DECIMAL scale {scale} is larger than the precision {precision}"),
                ));
            }
            scale
        } else {
            0
        };
        self.expect_punct(')')?;
        Ok(DataType::Decimal { precision, scale })
    }

    /// Iceberg strings have no length, and Trino's Iceberg connector refuses
    /// `VARCHAR(n)` rather than silently dropping the bound.
    fn reject_varchar_length(&mut self) -> Result<(), DdlError> {
        if !self.eat_punct('(') {
            return Ok(());
        }
        let length = self.peek();
        Err(error_at(
            length,
            format!(
                "VARCHAR({}) is not supported: Iceberg strings have no maximum length, use VARCHAR",
                length.text
            ),
        ))
    }

    /// An optional `(6)` after TIME or TIMESTAMP. Iceberg stores microseconds
    /// only, so any other explicit precision would be silently changed.
    fn micros_precision(&mut self, type_name: &str) -> Result<(), DdlError> {
        if !self.eat_punct('(') {
            return Ok(());
        }
        let (precision, token) = self.small_number("a precision")?;
        if precision != 6 {
            return Err(error_at(
                &token,
                format!(
                    "{type_name}({precision}) is not supported: Iceberg stores microseconds, \
                     use {type_name}(6) or {type_name}"
                ),
            ));
        }
        self.expect_punct(')')?;
        Ok(())
    }

    /// True before `WITH TIME`, so that a column's `WITH (...)` is not taken
    /// for a time zone.
    fn at_with_time_zone(&self) -> bool {
        self.at_keyword("WITH") && is_keyword(self.peek_nth(1), "TIME")
    }

    fn eat_without_time_zone(&mut self) -> Result<(), DdlError> {
        if self.eat_keyword("WITHOUT") {
            self.expect_keyword("TIME")?;
            self.expect_keyword("ZONE")?;
        }
        Ok(())
    }

    fn time(&mut self) -> Result<DataType, DdlError> {
        self.micros_precision("TIME")?;
        if self.at_with_time_zone() {
            return Err(error_at(
                self.peek(),
                "TIME WITH TIME ZONE is not supported: Iceberg has no time-with-zone type",
            ));
        }
        self.eat_without_time_zone()?;
        Ok(DataType::Time)
    }

    fn timestamp(&mut self) -> Result<DataType, DdlError> {
        self.micros_precision("TIMESTAMP")?;
        if self.at_with_time_zone() {
            self.advance();
            self.advance();
            self.expect_keyword("ZONE")?;
            return Ok(DataType::TimestampTz);
        }
        self.eat_without_time_zone()?;
        Ok(DataType::Timestamp)
    }

    /// `(name type, ...)` after `ROW`.
    fn row(&mut self, depth: usize, json: usize) -> Result<DataType, DdlError> {
        self.expect_punct('(')?;
        if self.at_punct(')') {
            return Err(error_at(self.peek(), "ROW needs at least one field"));
        }
        let mut fields = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let (name, token) = self.identifier("a ROW field name")?;
            if self.at_punct(',') || self.at_punct(')') {
                // Trino allows anonymous fields, ROW(BIGINT, VARCHAR), but an
                // Iceberg struct needs a name for every field.
                return Err(error_at(
                    &token,
                    format!(
                        "ROW field \"{name}\" has no type: every field needs a name and a type, \
                         e.g. ROW(id BIGINT)"
                    ),
                ));
            }
            check_unique(&mut seen, &name, &token, "ROW field")?;
            let data_type = self.nested_type(depth + 1, json)?;
            fields.push(RowField { name, data_type });
            if self.eat_punct(')') {
                return Ok(DataType::Row(fields));
            }
            if !self.eat_punct(',') {
                return Err(self.unexpected("\",\" or \")\" after the ROW field"));
            }
        }
    }
}

/// The error for a word in type position that is not a supported type, with a
/// pointer to the right spelling for names common in other SQL dialects.
fn unsupported_type(token: &Token) -> DdlError {
    let name = token.text.to_ascii_uppercase();
    let hint = match name.as_str() {
        "STRING" | "TEXT" | "CHAR" | "CHARACTER" | "JSON" => Some("VARCHAR"),
        "LONG" => Some("BIGINT"),
        "FLOAT" => Some("REAL or DOUBLE"),
        "BINARY" | "BLOB" | "BYTES" => Some("VARBINARY"),
        "STRUCT" => Some("ROW(name type, ...)"),
        "LIST" => Some("ARRAY(type)"),
        "TIMESTAMPTZ" => Some("TIMESTAMP(6) WITH TIME ZONE"),
        _ => None,
    };
    let mut message = format!("unsupported type \"{name}\" (supported: {SUPPORTED_TYPES})");
    if let Some(hint) = hint {
        message = format!("{message}; use {hint}");
    }
    error_at(token, message)
}

// ---------------------------------------------------------------------------
// Table properties
// ---------------------------------------------------------------------------

fn check_property_name(name: &str, token: &Token, context: Context) -> Result<(), DdlError> {
    let supported = match context {
        Context::Create => CREATE_PROPERTIES,
        Context::Alter => ALTER_PROPERTIES,
    };
    if supported.contains(&name) {
        return Ok(());
    }
    let list = supported.join(", ");
    let message = match (name, context) {
        ("sorted_by", _) => format!(
            "table property \"sorted_by\" is not supported: floe writes rows in arrival order \
             and cannot keep files sorted (supported: {list})"
        ),
        ("location", Context::Alter) => {
            format!("the location of an existing table cannot be changed (supported: {list})")
        }
        _ => format!("unsupported table property \"{name}\" (supported: {list})"),
    };
    Err(error_at(token, message))
}

/// Checks a property's value; the name has already been checked.
fn check_property_value(name: &str, value: &PropertyValue) -> Result<(), DdlError> {
    match (name, value) {
        (_, PropertyValue::Default(_)) => Ok(()),
        ("format", PropertyValue::String(format, _)) if format.eq_ignore_ascii_case("PARQUET") => {
            Ok(())
        }
        ("format", PropertyValue::String(..)) => Err(value_error(
            value,
            format!("format {value} is not supported: floe writes Parquet only, use 'PARQUET'"),
        )),
        ("format", _) => Err(value_error(
            value,
            "format expects a string such as 'PARQUET'",
        )),
        ("format_version", PropertyValue::Integer(2, _)) => Ok(()),
        ("format_version", PropertyValue::Integer(version, _)) => Err(value_error(
            value,
            format!(
                "format_version {version} is not supported: floe writes Iceberg format version 2"
            ),
        )),
        ("format_version", _) => Err(value_error(value, "format_version expects the number 2")),
        ("location", PropertyValue::String(location, _)) if !location.trim().is_empty() => Ok(()),
        ("location", _) => Err(value_error(
            value,
            "location expects a non-empty string such as 's3://bucket/path'",
        )),
        ("partitioning", PropertyValue::Array(items, _)) => {
            // Only the shape can be checked here: the columns are not known
            // yet (and never are for ALTER TABLE).
            items
                .iter()
                .try_for_each(|item| partition_field(item).map(drop))
        }
        ("partitioning", _) => Err(partitioning_shape_error(value)),
        _ => Ok(()),
    }
}

fn value_error(value: &PropertyValue, message: impl Into<String>) -> DdlError {
    DdlError::new(message, value.position(), value.token())
}

fn partitioning_shape_error(value: &PropertyValue) -> DdlError {
    value_error(
        value,
        "partitioning expects an array of strings, e.g. ARRAY['country', 'day(ts)', 'bucket(id, 16)']",
    )
}

// ---------------------------------------------------------------------------
// Partitioning
// ---------------------------------------------------------------------------

/// Parses one entry of the `partitioning` array. The string's content is
/// tokenised like SQL so quoting and case rules match column names; any error
/// points at the whole string literal.
fn partition_field(item: &PropertyValue) -> Result<PartitionField, DdlError> {
    let PropertyValue::String(text, _) = item else {
        return Err(value_error(
            item,
            "partitioning entries must be strings such as 'day(ts)'",
        ));
    };
    tokenize(text)
        .and_then(|tokens| Parser::new(tokens).partition_field())
        .map_err(|inner| {
            value_error(
                item,
                format!("invalid partition field {item}: {}", inner.message),
            )
        })
}

/// The column must exist at the top level and its type must suit the
/// transform.
fn check_partition_source(
    field: &PartitionField,
    item: &PropertyValue,
    columns: &[ColumnDef],
) -> Result<(), DdlError> {
    let Some(column) = columns.iter().find(|c| c.name == field.column) else {
        let hint = columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(&field.column))
            .map(|c| {
                format!(
                    " (did you mean {}? quote it inside the string)",
                    quote_identifier(&c.name)
                )
            })
            .unwrap_or_default();
        return Err(value_error(
            item,
            format!(
                "partition column \"{}\" is not a column of the table{hint}",
                field.column
            ),
        ));
    };
    if field.transform.applies_to(&column.data_type) {
        return Ok(());
    }
    Err(value_error(
        item,
        format!(
            "{} cannot be applied to column \"{}\" of type {} (it applies to {})",
            field.transform.label(),
            column.name,
            column.data_type,
            field.transform.accepted_types()
        ),
    ))
}

fn check_not_redundant(
    field: &PartitionField,
    item: &PropertyValue,
    earlier: &[PartitionField],
) -> Result<(), DdlError> {
    let family = field.transform.family();
    match earlier
        .iter()
        .find(|e| e.column == field.column && e.transform.family() == family)
    {
        None => Ok(()),
        Some(clash) => Err(value_error(
            item,
            format!(
                "partition field {item} clashes with '{clash}': a column can have only one \
                 {family} partition field"
            ),
        )),
    }
}

impl Parser {
    /// The content of one `partitioning` string: `col`, `year(col)`,
    /// `month(col)`, `day(col)`, `hour(col)`, `bucket(col, n)` or
    /// `truncate(col, n)`, the column first as in Trino's documentation.
    fn partition_field(&mut self) -> Result<PartitionField, DdlError> {
        let head = self.peek().clone();
        let (name, _) = self.identifier("a column name or a transform such as day(ts)")?;
        if !self.at_punct('(') {
            self.reject_nested_field()?;
            self.expect_partition_end()?;
            return Ok(PartitionField {
                transform: Transform::Identity,
                column: name,
            });
        }
        // A quoted name before "(" is a column, not a transform keyword.
        let transform_name = if head.kind == Kind::Word {
            name.as_str()
        } else {
            ""
        };
        let known = ["year", "month", "day", "hour", "bucket", "truncate"];
        if !known.contains(&transform_name) {
            return Err(error_at(
                &head,
                format!(
                    "unknown transform \"{name}\" (supported: year, month, day, hour, \
                     bucket, truncate, or a bare column name)"
                ),
            ));
        }
        self.advance();
        let column = self.partition_column(transform_name)?;
        let transform = match transform_name {
            "year" => Transform::Year,
            "month" => Transform::Month,
            "day" => Transform::Day,
            "hour" => Transform::Hour,
            "bucket" => Transform::Bucket(self.transform_argument("bucket")?),
            _ => Transform::Truncate(self.transform_argument("truncate")?),
        };
        self.expect_punct(')')?;
        self.expect_partition_end()?;
        Ok(PartitionField { transform, column })
    }

    fn partition_column(&mut self, transform: &str) -> Result<String, DdlError> {
        if self.peek().kind == Kind::Number {
            // Spark and Iceberg's own API put the count first; Trino does not.
            return Err(error_at(
                self.peek(),
                format!("{transform}() takes the column first, e.g. {transform}(col, 16)"),
            ));
        }
        let (column, _) = self.identifier("a column name")?;
        self.reject_nested_field()?;
        Ok(column)
    }

    /// The `, n` of bucket and truncate: a count or width that Iceberg can store.
    fn transform_argument(&mut self, transform: &str) -> Result<u32, DdlError> {
        if !self.eat_punct(',') {
            return Err(self.unexpected(&format!("\",\" and a number: {transform}(column, n)")));
        }
        let (value, token) = self.small_number("a number")?;
        if value == 0 || value > MAX_TRANSFORM_ARGUMENT {
            return Err(error_at(
                &token,
                format!(
                    "the {transform}() argument must be between 1 and {MAX_TRANSFORM_ARGUMENT}"
                ),
            ));
        }
        Ok(value)
    }

    fn reject_nested_field(&self) -> Result<(), DdlError> {
        if self.at_punct('.') {
            return Err(error_at(
                self.peek(),
                "partitioning by a nested ROW field is not supported: use a top-level column",
            ));
        }
        Ok(())
    }

    fn expect_partition_end(&self) -> Result<(), DdlError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.unexpected("the end of the partition field"))
        }
    }
}

// ---------------------------------------------------------------------------
// Parser: ALTER TABLE
// ---------------------------------------------------------------------------

impl Parser {
    fn alter_table(&mut self) -> Result<AlterTable, DdlError> {
        self.expect_keyword("ALTER")?;
        if !self.at_keyword("TABLE") {
            return Err(self.unexpected("TABLE (only ALTER TABLE is supported)"));
        }
        self.advance();
        let if_exists = self.eat_if_exists();
        let name = self.table_name()?;
        let action = self.alter_action()?;
        self.expect_end()?;
        Ok(AlterTable {
            if_exists,
            name,
            action,
        })
    }

    fn alter_action(&mut self) -> Result<AlterAction, DdlError> {
        let token = self.peek().clone();
        let verb = if token.kind == Kind::Word {
            token.text.to_ascii_uppercase()
        } else {
            String::new()
        };
        match verb.as_str() {
            "ADD" => {
                self.advance();
                self.expect_keyword("COLUMN")?;
                self.add_column()
            }
            "DROP" => {
                self.advance();
                self.expect_keyword("COLUMN")?;
                let if_exists = self.eat_if_exists();
                let (path, _) = self.dotted_name("a column name")?;
                Ok(AlterAction::DropColumn { if_exists, path })
            }
            "RENAME" => {
                self.advance();
                self.rename_column()
            }
            "ALTER" => {
                self.advance();
                self.expect_keyword("COLUMN")?;
                let (path, _) = self.dotted_name("a column name")?;
                self.alter_column(path)
            }
            "SET" if is_keyword(self.peek_nth(1), "PROPERTIES") => {
                self.advance();
                self.advance();
                Ok(AlterAction::SetProperties(
                    self.property_list(Context::Alter)?,
                ))
            }
            _ if token.kind == Kind::Eof => {
                Err(self.unexpected(&format!("an ALTER TABLE action ({ALTER_ACTIONS})")))
            }
            _ => {
                let what = if verb == "SET" {
                    format!("\"SET {}\"", self.peek_nth(1).text.to_ascii_uppercase())
                } else {
                    describe(&token)
                };
                Err(error_at(
                    &token,
                    format!("unsupported ALTER TABLE action {what} (supported: {ALTER_ACTIONS})"),
                ))
            }
        }
    }

    /// After `ADD COLUMN`.
    fn add_column(&mut self) -> Result<AlterAction, DdlError> {
        let if_not_exists = self.eat_if_not_exists()?;
        let (path, _) = self.dotted_name("a column name")?;
        self.expect_type_after(&path.join("."))?;
        let data_type = self.data_type(0)?;
        let (not_null, comment) = self.column_options()?;
        self.column_position()?;
        Ok(AlterAction::AddColumn {
            if_not_exists,
            path,
            data_type,
            not_null,
            comment,
        })
    }

    /// `LAST` is where new columns go anyway; `FIRST` and `AFTER` would need
    /// a column reorder floe does not perform.
    fn column_position(&mut self) -> Result<(), DdlError> {
        if self.at_keyword("FIRST") || self.at_keyword("AFTER") {
            return Err(error_at(
                self.peek(),
                "FIRST and AFTER are not supported: floe adds new columns last",
            ));
        }
        self.eat_keyword("LAST");
        Ok(())
    }

    /// After `RENAME`.
    fn rename_column(&mut self) -> Result<AlterAction, DdlError> {
        if self.at_keyword("TO") {
            return Err(error_at(
                self.peek(),
                "renaming a table is not supported by floe; rename columns with RENAME COLUMN",
            ));
        }
        self.expect_keyword("COLUMN")?;
        let if_exists = self.eat_if_exists();
        let (path, _) = self.dotted_name("a column name")?;
        self.expect_keyword("TO")?;
        let (new_name, _) = self.identifier("the new column name")?;
        Ok(AlterAction::RenameColumn {
            if_exists,
            path,
            new_name,
        })
    }

    /// After `ALTER COLUMN path`.
    fn alter_column(&mut self, path: Vec<String>) -> Result<AlterAction, DdlError> {
        let verb = self.peek().clone();
        let object = self.peek_nth(1).clone();
        if is_keyword(&verb, "SET") && is_keyword(&object, "DATA") {
            self.advance();
            self.advance();
            self.expect_keyword("TYPE")?;
            let data_type = self.data_type(0)?;
            return Ok(AlterAction::SetDataType { path, data_type });
        }
        if is_keyword(&verb, "DROP") && is_keyword(&object, "NOT") {
            self.advance();
            self.advance();
            self.expect_keyword("NULL")?;
            return Ok(AlterAction::DropNotNull { path });
        }
        if verb.kind != Kind::Word {
            return Err(self.unexpected("SET DATA TYPE or DROP NOT NULL"));
        }
        // Name the whole clause ("SET DEFAULT"), not just its first word.
        let mut what = verb.text.to_ascii_uppercase();
        if (is_keyword(&verb, "SET") || is_keyword(&verb, "DROP")) && object.kind == Kind::Word {
            what = format!("{what} {}", object.text.to_ascii_uppercase());
        }
        Err(error_at(
            &verb,
            format!(
                "unsupported ALTER COLUMN action \"{what}\" (supported: SET DATA TYPE, DROP NOT NULL)"
            ),
        ))
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "CREATE TABLE test_table (
   bool BOOLEAN, floating DOUBLE, integer BIGINT, string VARCHAR,
   bools ARRAY(BOOLEAN), floatings ARRAY(DOUBLE), integers ARRAY(BIGINT), strings ARRAY(VARCHAR),
   string_map MAP(VARCHAR, VARCHAR), nested ROW(key VARCHAR, value BIGINT),
   timestamp TIMESTAMP(6) WITH TIME ZONE)
WITH (format = 'PARQUET', partitioning = ARRAY['day(timestamp)']);";

    fn create(sql: &str) -> CreateTable {
        match parse_create_table(sql) {
            Ok(table) => table,
            Err(err) => panic!("{}", err.render(sql)),
        }
    }

    fn alter(sql: &str) -> AlterTable {
        match parse_alter_table(sql) {
            Ok(table) => table,
            Err(err) => panic!("{}", err.render(sql)),
        }
    }

    fn create_error(sql: &str) -> DdlError {
        match parse_create_table(sql) {
            Ok(table) => panic!("expected an error for {sql:?}, got {table:?}"),
            Err(err) => err,
        }
    }

    fn alter_error(sql: &str) -> DdlError {
        match parse_alter_table(sql) {
            Ok(table) => panic!("expected an error for {sql:?}, got {table:?}"),
            Err(err) => err,
        }
    }

    #[track_caller]
    fn assert_error(err: &DdlError, line: u32, column: u32, token: &str, fragment: &str) {
        assert_eq!(
            (err.line, err.column, err.token.as_str()),
            (line, column, token),
            "wrong place for: {err}"
        );
        assert!(
            err.message.contains(fragment),
            "message {:?} lacks {fragment:?}",
            err.message
        );
    }

    /// The type of the single column of `CREATE TABLE t (c <ty>)`.
    fn column_type(ty: &str) -> DataType {
        let table = create(&format!("CREATE TABLE t (c {ty})"));
        table.columns[0].data_type.clone()
    }

    fn column_type_error(ty: &str) -> DdlError {
        create_error(&format!("CREATE TABLE t (c {ty})"))
    }

    fn array(element: DataType) -> DataType {
        DataType::Array(Box::new(element))
    }

    fn map(key: DataType, value: DataType) -> DataType {
        DataType::Map(Box::new(key), Box::new(value))
    }

    fn row(fields: &[(&str, DataType)]) -> DataType {
        DataType::Row(
            fields
                .iter()
                .map(|(name, data_type)| RowField {
                    name: (*name).to_owned(),
                    data_type: data_type.clone(),
                })
                .collect(),
        )
    }

    fn column(name: &str, data_type: DataType) -> ColumnDef {
        ColumnDef {
            name: name.to_owned(),
            data_type,
            not_null: false,
            comment: None,
        }
    }

    /// Partition spec of a table with columns of every partitionable type.
    fn partitioning(spec: &str) -> Result<Vec<PartitionField>, DdlError> {
        parse_create_table(&format!(
            "CREATE TABLE t (i INTEGER, l BIGINT, dec DECIMAL(10,2), s VARCHAR, b VARBINARY, \
             d DATE, t TIME, ts TIMESTAMP(6), tz TIMESTAMP(6) WITH TIME ZONE, u UUID, \
             f DOUBLE, r REAL, flag BOOLEAN, a ARRAY(BIGINT), m MAP(VARCHAR, BIGINT), \
             n ROW(x BIGINT), \"My Col\" VARCHAR)\nWITH (partitioning = ARRAY[{spec}])"
        ))
        .map(|table| table.partitioning().unwrap_or_default())
    }

    // --- the seed statement -------------------------------------------------

    #[test]
    fn seed_statement_parses_verbatim() {
        let table = create(SEED);
        assert!(!table.if_not_exists);
        assert_eq!(table.name, ["test_table"]);
        assert_eq!(table.comment, None);
        let expected = vec![
            column("bool", DataType::Boolean),
            column("floating", DataType::Double),
            column("integer", DataType::Bigint),
            column("string", DataType::Varchar),
            column("bools", array(DataType::Boolean)),
            column("floatings", array(DataType::Double)),
            column("integers", array(DataType::Bigint)),
            column("strings", array(DataType::Varchar)),
            column("string_map", map(DataType::Varchar, DataType::Varchar)),
            column(
                "nested",
                row(&[("key", DataType::Varchar), ("value", DataType::Bigint)]),
            ),
            column("timestamp", DataType::TimestampTz),
        ];
        assert_eq!(table.columns, expected);
        assert_eq!(table.properties.len(), 2);
        assert_eq!(table.properties[0].0, "format");
        assert_eq!(table.properties[0].1.as_str(), Some("PARQUET"));
        assert_eq!(
            table.properties[0].1.position(),
            Position {
                line: 6,
                column: 16
            }
        );
        assert_eq!(table.properties[1].0, "partitioning");
        assert_eq!(
            table.partitioning().unwrap(),
            [PartitionField {
                transform: Transform::Day,
                column: "timestamp".to_owned()
            }]
        );
        assert_eq!(table.location(), None);
    }

    #[test]
    fn every_prefix_of_the_seed_fails_cleanly() {
        let column_list_end = SEED.find("ZONE)").unwrap() + "ZONE)".len();
        let statement_end = SEED.rfind(')').unwrap() + 1;
        for (end, _) in SEED.char_indices() {
            let prefix = &SEED[..end];
            let complete = [column_list_end, statement_end].contains(&prefix.trim_end().len());
            let result = parse_create_table(prefix);
            assert_eq!(
                result.is_ok(),
                complete,
                "prefix {prefix:?} gave {result:?}"
            );
            if let Err(err) = result {
                // Rendering must not panic either, wherever the error points.
                assert!(err.render(prefix).contains('^'));
            }
        }
    }

    #[test]
    fn mangled_statements_never_panic() {
        let alters = [
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS n.x DECIMAL(10, 2) NOT NULL COMMENT 'c'",
            "ALTER TABLE t RENAME COLUMN IF EXISTS a.b TO c",
            "ALTER TABLE t SET PROPERTIES partitioning = ARRAY['bucket(id, 16)'], format_version = 2",
        ];
        for sql in [SEED].iter().chain(alters.iter()) {
            let chars: Vec<char> = sql.chars().collect();
            for i in 0..chars.len() {
                // Drop one character, then double it: both must fail or
                // succeed without panicking.
                let dropped: String = chars[..i].iter().chain(&chars[i + 1..]).collect();
                let doubled: String = chars[..=i].iter().chain(&chars[i..]).collect();
                for mangled in [dropped, doubled] {
                    if let Err(err) = parse_create_table(&mangled) {
                        assert!(err.render(&mangled).contains('^'));
                    }
                    if let Err(err) = parse_alter_table(&mangled) {
                        assert!(err.render(&mangled).contains('^'));
                    }
                }
            }
        }
    }

    // --- types ----------------------------------------------------------------

    #[test]
    fn every_type() {
        let cases = [
            ("BOOLEAN", DataType::Boolean),
            ("INTEGER", DataType::Integer),
            ("INT", DataType::Integer),
            ("BIGINT", DataType::Bigint),
            ("REAL", DataType::Real),
            ("DOUBLE", DataType::Double),
            ("DOUBLE PRECISION", DataType::Double),
            (
                "DECIMAL",
                DataType::Decimal {
                    precision: 38,
                    scale: 0,
                },
            ),
            (
                "DECIMAL(10)",
                DataType::Decimal {
                    precision: 10,
                    scale: 0,
                },
            ),
            (
                "DECIMAL(38, 10)",
                DataType::Decimal {
                    precision: 38,
                    scale: 10,
                },
            ),
            (
                "DECIMAL(1,1)",
                DataType::Decimal {
                    precision: 1,
                    scale: 1,
                },
            ),
            ("VARCHAR", DataType::Varchar),
            ("VARBINARY", DataType::Varbinary),
            ("DATE", DataType::Date),
            ("TIME", DataType::Time),
            ("TIME(6)", DataType::Time),
            ("TIME(6) WITHOUT TIME ZONE", DataType::Time),
            ("TIMESTAMP", DataType::Timestamp),
            ("TIMESTAMP(6)", DataType::Timestamp),
            ("TIMESTAMP WITHOUT TIME ZONE", DataType::Timestamp),
            ("TIMESTAMP WITH TIME ZONE", DataType::TimestampTz),
            ("TIMESTAMP(6) WITH TIME ZONE", DataType::TimestampTz),
            ("UUID", DataType::Uuid),
            ("ARRAY(UUID)", array(DataType::Uuid)),
            ("MAP(VARCHAR, DATE)", map(DataType::Varchar, DataType::Date)),
            (
                "ROW(a BIGINT, b VARCHAR)",
                row(&[("a", DataType::Bigint), ("b", DataType::Varchar)]),
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(column_type(sql), expected, "{sql}");
        }
    }

    #[test]
    fn types_display_as_trino_spells_them_and_parse_back() {
        let ty = column_type(
            "ROW(\"Odd \"\"Name\"\"\" MAP(VARCHAR, ARRAY(TIMESTAMP WITH TIME ZONE)), \
             d DECIMAL, t TIME, ts TIMESTAMP, b BOOLEAN, i INT, r REAL, v VARBINARY, u UUID)",
        );
        let shown = ty.to_string();
        assert_eq!(
            shown,
            "ROW(\"Odd \"\"Name\"\"\" MAP(VARCHAR, ARRAY(TIMESTAMP(6) WITH TIME ZONE)), \
             d DECIMAL(38,0), t TIME(6), ts TIMESTAMP(6), b BOOLEAN, i INTEGER, r REAL, \
             v VARBINARY, u UUID)"
        );
        assert_eq!(column_type(&shown), ty);
    }

    #[test]
    fn deep_nesting() {
        let ty = column_type("ARRAY(MAP(VARCHAR, ROW(a ARRAY(ROW(b DECIMAL(38,10))))))");
        let inner = row(&[(
            "b",
            DataType::Decimal {
                precision: 38,
                scale: 10,
            },
        )]);
        let expected = array(map(DataType::Varchar, row(&[("a", array(inner))])));
        assert_eq!(ty, expected);
    }

    #[test]
    fn nesting_limit_is_an_error_not_a_stack_overflow() {
        let depth = 10_000;
        let ty = format!("{}BIGINT{}", "ARRAY(".repeat(depth), ")".repeat(depth));
        let err = column_type_error(&ty);
        assert_error(&err, 1, 19 + 6 * 65, "ARRAY", "nested more than 64 levels");
        // 64 levels of nesting are fine; 65 are not.
        let ok = format!("{}BIGINT{}", "ARRAY(".repeat(64), ")".repeat(64));
        assert!(matches!(column_type(&ok), DataType::Array(_)));
        let too_deep = format!("{}BIGINT{}", "ARRAY(".repeat(65), ")".repeat(65));
        assert_error(
            &column_type_error(&too_deep),
            1,
            19 + 6 * 65,
            "BIGINT",
            "64 levels",
        );
    }

    #[test]
    fn unsupported_type_error_renders_as_documented() {
        let sql = "CREATE TABLE t (\n  a BIGINT,\n  bb INTEGER, cc TINYINT)";
        let err = create_error(sql);
        assert_eq!(
            err.to_string(),
            "line 3, column 18: unsupported type \"TINYINT\" (supported: BOOLEAN, INTEGER, \
             BIGINT, REAL, DOUBLE, DECIMAL(p,s), VARCHAR, VARBINARY, DATE, TIME(6), \
             TIMESTAMP(6), TIMESTAMP(6) WITH TIME ZONE, UUID, ARRAY(..), MAP(..,..), ROW(..))"
        );
        assert_eq!(err.token, "TINYINT");
        let rendered = err.render(sql);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[1], "3 |   bb INTEGER, cc TINYINT)");
        assert_eq!(lines[2], "  |                  ^^^^^^^");
    }

    #[test]
    fn foreign_type_names_get_a_hint() {
        let err = column_type_error("string");
        assert_error(&err, 1, 19, "string", "unsupported type \"STRING\"");
        assert!(err.message.ends_with("; use VARCHAR"), "{}", err.message);
        let err = column_type_error("STRUCT<a: INT>");
        assert!(err.message.ends_with("; use ROW(name type, ...)"));
    }

    #[test]
    fn type_parameter_errors() {
        let cases = [
            ("VARCHAR(10)", 27, "10", "use VARCHAR"),
            ("TIME(3)", 24, "3", "TIME(3) is not supported"),
            ("TIMESTAMP(3)", 29, "3", "use TIMESTAMP(6)"),
            (
                "TIMESTAMP(9) WITH TIME ZONE",
                29,
                "9",
                "Iceberg stores microseconds",
            ),
            (
                "TIME WITH TIME ZONE",
                24,
                "WITH",
                "TIME WITH TIME ZONE is not supported",
            ),
            ("DECIMAL(0)", 27, "0", "between 1 and 38, found 0"),
            ("DECIMAL(39, 2)", 27, "39", "between 1 and 38, found 39"),
            (
                "DECIMAL(5,6)",
                29,
                "6",
                "scale 6 is larger than the precision 5",
            ),
            ("DECIMAL(99999999999)", 27, "99999999999", "below 2^32"),
            ("DECIMAL(a)", 27, "a", "expected a precision"),
            ("ARRAY<BIGINT>", 24, "<", "expected \"(\""),
            ("MAP(VARCHAR)", 30, ")", "expected \",\""),
            ("ROW()", 23, ")", "at least one field"),
            (
                "ROW(BIGINT, VARCHAR)",
                23,
                "BIGINT",
                "ROW field \"bigint\" has no type",
            ),
            ("ROW(a BIGINT NOT NULL)", 32, "NOT", "after the ROW field"),
            (
                "ROW(a BIGINT, A VARCHAR)",
                33,
                "A",
                "duplicate ROW field name \"a\"",
            ),
            (
                "ROW(\"x\" BIGINT, \"X\" VARCHAR)",
                35,
                "\"X\"",
                "duplicate ROW field name \"X\"",
            ),
            (
                "ROW(a ROW(b INT, b INT))",
                36,
                "b",
                "duplicate ROW field name \"b\"",
            ),
        ];
        for (ty, column, token, fragment) in cases {
            let err = column_type_error(ty);
            assert_error(&err, 1, column, token, fragment);
        }
    }

    // --- names, case and lexical details --------------------------------------

    #[test]
    fn keywords_and_types_are_case_insensitive_names_lowercased() {
        let table = create(
            "create TABLE If Not Exists Cat.Sch.Tbl (Id bigint NOT null, \
             Ts timestamp(6) with TIME zone comment 'when', V Array(Row(K Varchar)))\n\
             with (FORMAT = 'parquet', Partitioning = array['DAY(TS)', 'Bucket(ID, 4)'])",
        );
        assert!(table.if_not_exists);
        assert_eq!(table.name, ["cat", "sch", "tbl"]);
        assert_eq!(table.columns[0].name, "id");
        assert!(table.columns[0].not_null);
        assert_eq!(table.columns[1].data_type, DataType::TimestampTz);
        assert_eq!(table.columns[1].comment.as_deref(), Some("when"));
        assert_eq!(
            table.columns[2].data_type,
            array(row(&[("k", DataType::Varchar)]))
        );
        assert_eq!(table.properties[0].0, "format");
        assert_eq!(table.properties[1].0, "partitioning");
        let fields = table.partitioning().unwrap();
        assert_eq!(fields[0].column, "ts");
        assert_eq!(fields[1].transform, Transform::Bucket(4));
    }

    #[test]
    fn quoted_identifiers_keep_case_and_unescape() {
        let table = create(
            "CREATE TABLE \"My Schema\".\"T\" (\"My Col\" BIGINT, \"say \"\"hi\"\"\" VARCHAR, \
             \"select\" ROW(\"Inner\" INT)) WITH (\"format\" = 'PARQUET')",
        );
        assert_eq!(table.name, ["My Schema", "T"]);
        assert_eq!(table.columns[0].name, "My Col");
        assert_eq!(table.columns[1].name, "say \"hi\"");
        assert_eq!(table.columns[2].name, "select");
        assert_eq!(
            table.columns[2].data_type,
            row(&[("Inner", DataType::Integer)])
        );
        assert_eq!(table.properties[0].0, "format");
    }

    #[test]
    fn keywords_work_as_column_names() {
        let table = create(
            "CREATE TABLE t (bool BOOLEAN, integer INT, string VARCHAR, timestamp TIMESTAMP, \
             key VARCHAR, value BIGINT, array ARRAY(INT), map MAP(INT, INT), row ROW(row INT), \
             date DATE, time TIME, if INT, not INT, with INT, comment VARCHAR, table INT)",
        );
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bool",
                "integer",
                "string",
                "timestamp",
                "key",
                "value",
                "array",
                "map",
                "row",
                "date",
                "time",
                "if",
                "not",
                "with",
                "comment",
                "table"
            ]
        );
    }

    #[test]
    fn comments_whitespace_strings_and_semicolon() {
        let table = create(
            "-- leading comment\n  /* block\n comment */ CREATE\tTABLE\r\n t ( -- trailing\n\
             a BIGINT /* inline */ COMMENT 'it''s a\nmulti-line comment',\n\
             b VARCHAR ) COMMENT 'table ''c''' WITH (location = 's3://b/p', format_version = 2) ; ",
        );
        assert_eq!(table.name, ["t"]);
        assert_eq!(
            table.columns[0].comment.as_deref(),
            Some("it's a\nmulti-line comment")
        );
        assert_eq!(table.comment.as_deref(), Some("table 'c'"));
        assert_eq!(table.location(), Some("s3://b/p"));
        assert!(matches!(
            table.property("format_version"),
            Some(PropertyValue::Integer(2, _))
        ));
    }

    #[test]
    fn default_property_values_are_accepted() {
        let table =
            create("CREATE TABLE t (a INT) WITH (partitioning = DEFAULT, format = DEFAULT)");
        assert_eq!(table.partitioning().unwrap(), []);
        assert_eq!(table.location(), None);
    }

    #[test]
    fn lexical_errors() {
        let cases = [
            (
                "CREATE TABLE t (a VARCHAR COMMENT 'oops)",
                1,
                35,
                "'",
                "unterminated string literal",
            ),
            (
                "CREATE TABLE t (\"a BIGINT)",
                1,
                17,
                "\"",
                "unterminated quoted identifier",
            ),
            (
                "CREATE TABLE t (a BIGINT) /* never closed",
                1,
                27,
                "/*",
                "unterminated comment",
            ),
            (
                "CREATE TABLE t (\"\" BIGINT)",
                1,
                17,
                "\"\"",
                "empty quoted identifier",
            ),
            (
                "CREATE TABLE `t` (a INT)",
                1,
                14,
                "`",
                "backquoted identifiers",
            ),
            (
                "CREATE TABLE t (1a INT)",
                1,
                17,
                "1a",
                "must not start with a digit",
            ),
        ];
        for (sql, line, column, token, fragment) in cases {
            assert_error(&create_error(sql), line, column, token, fragment);
        }
    }

    // --- statement-level errors -----------------------------------------------

    #[test]
    fn statement_errors() {
        let cases = [
            ("CREATE TABLE t ()", 17, ")", "at least one column"),
            (
                "CREATE TABLE t (a INT, A BIGINT)",
                24,
                "A",
                "duplicate column name \"a\"",
            ),
            (
                "CREATE TABLE t (\"A\" INT, a BIGINT)",
                26,
                "a",
                "duplicate column name \"a\"",
            ),
            (
                "CREATE TABLE t AS SELECT 1",
                16,
                "AS",
                "AS SELECT is not supported",
            ),
            (
                "CREATE TABLE t (a INT) AS SELECT 1",
                24,
                "AS",
                "AS SELECT is not supported",
            ),
            (
                "CREATE TABLE t WITH (format = 'PARQUET') AS SELECT 1",
                16,
                "WITH",
                "AS SELECT",
            ),
            (
                "CREATE TABLE t (a, b) AS SELECT 1, 2",
                18,
                ",",
                "column \"a\" has no data type",
            ),
            (
                "CREATE TABLE t (LIKE other)",
                17,
                "LIKE",
                "LIKE is not supported",
            ),
            (
                "CREATE TABLE t (a INT, LIKE o INCLUDING PROPERTIES)",
                24,
                "LIKE",
                "LIKE",
            ),
            (
                "CREATE TABLE t (a INT) PARTITIONED BY (a)",
                24,
                "PARTITIONED",
                "partitioning =",
            ),
            (
                "CREATE TABLE t (a INT WITH (x = 1))",
                23,
                "WITH",
                "column properties",
            ),
            (
                "CREATE TABLE t (a INT DEFAULT 1)",
                23,
                "DEFAULT",
                "DEFAULT values",
            ),
            (
                "CREATE OR REPLACE TABLE t (a INT)",
                8,
                "OR",
                "never replaces",
            ),
            ("CREATE VIEW v AS SELECT 1", 8, "VIEW", "expected TABLE"),
            ("SELECT 1", 1, "SELECT", "expected CREATE"),
            ("CREATE TABLE a.b.c.d (x INT)", 14, "a", "at most 3"),
            (
                "CREATE TABLE t (a INT b INT)",
                23,
                "b",
                "expected \",\" or \")\"",
            ),
            ("CREATE TABLE t (a INT,)", 23, ")", "expected a column name"),
            ("CREATE TABLE t (a INT NOT)", 26, ")", "expected NULL"),
            (
                "CREATE TABLE t (a INT) x",
                24,
                "x",
                "expected end of statement",
            ),
            (
                "CREATE TABLE t (a INT);;",
                24,
                ";",
                "expected end of statement",
            ),
            ("CREATE TABLE t (a INT", 22, "", "found end of input"),
            ("", 1, "", "expected CREATE, found end of input"),
        ];
        for (sql, column, token, fragment) in cases {
            assert_error(&create_error(sql), 1, column, token, fragment);
        }
    }

    #[test]
    fn property_errors() {
        let base = "CREATE TABLE t (a INT, ts TIMESTAMP) WITH ";
        let at = |column: u32| u32::try_from(base.len()).unwrap() + column;
        let cases = [
            ("(format = 'ORC')", 11, "'ORC'", "floe writes Parquet only"),
            ("(format = 1)", 11, "1", "format expects a string"),
            (
                "(format_version = 1)",
                19,
                "1",
                "format_version 1 is not supported",
            ),
            ("(format_version = -3)", 19, "-3", "format_version -3"),
            ("(format_version = '2')", 19, "'2'", "expects the number 2"),
            ("(location = '')", 13, "''", "non-empty string"),
            (
                "(orc_bloom_filter_fpp = 0.05)",
                2,
                "orc_bloom_filter_fpp",
                "supported: format, format_version, location, partitioning",
            ),
            (
                "(sorted_by = ARRAY['a'])",
                2,
                "sorted_by",
                "cannot keep files sorted",
            ),
            (
                "(format = 'PARQUET', FORMAT = 'PARQUET')",
                22,
                "FORMAT",
                "set more than once",
            ),
            ("(partitioning = 'a')", 17, "'a'", "array of strings"),
            ("(partitioning = ARRAY[1])", 23, "1", "must be strings"),
            (
                "(partitioning = ARRAY[ARRAY['a']])",
                23,
                "ARRAY",
                "nested arrays",
            ),
            (
                "(partitioning = ARRAY['a' 'ts'])",
                27,
                "'ts'",
                "expected \",\" or \"]\"",
            ),
            (
                "(format = 'PARQUET' location = 'x')",
                21,
                "location",
                "expected \",\" or \")\"",
            ),
            ("()", 2, ")", "expected a property name"),
            ("(format 'PARQUET')", 9, "'PARQUET'", "expected \"=\""),
            ("(format = )", 11, ")", "expected a property value"),
            (
                "(format_version = 99999999999999999999)",
                19,
                "99999999999999999999",
                "out of range",
            ),
        ];
        for (with, column, token, fragment) in cases {
            let err = create_error(&format!("{base}{with}"));
            assert_error(&err, 1, at(column), token, fragment);
        }
    }

    // --- partitioning -----------------------------------------------------------

    #[test]
    fn every_transform() {
        let fields = partitioning(
            "'i', 'year(d)', 'month(ts)', 'day(tz)', 'bucket(u, 16)', \
             'truncate(s, 4)', '\"My Col\"', ' bucket ( l , 7 ) ', 'TRUNCATE(dec,2)'",
        )
        .unwrap();
        let expected = [
            (Transform::Identity, "i"),
            (Transform::Year, "d"),
            (Transform::Month, "ts"),
            (Transform::Day, "tz"),
            (Transform::Bucket(16), "u"),
            (Transform::Truncate(4), "s"),
            (Transform::Identity, "My Col"),
            (Transform::Bucket(7), "l"),
            (Transform::Truncate(2), "dec"),
        ];
        let got: Vec<(Transform, &str)> = fields
            .iter()
            .map(|f| (f.transform, f.column.as_str()))
            .collect();
        assert_eq!(got, expected);
        let shown: Vec<String> = fields.iter().map(ToString::to_string).collect();
        assert_eq!(shown[4], "bucket(u, 16)");
        assert_eq!(shown[6], "\"My Col\"");
        let hour = partitioning("'hour(ts)'").unwrap();
        assert_eq!(hour[0].transform, Transform::Hour);
        assert_eq!(hour[0].to_string(), "hour(ts)");
    }

    #[test]
    fn transforms_accept_the_documented_types() {
        let accepted = [
            ("year", &["d", "ts", "tz"][..]),
            ("month", &["d", "ts", "tz"]),
            ("day", &["d", "ts", "tz"]),
            ("hour", &["ts", "tz"]),
            (
                "bucket",
                &["i", "l", "dec", "d", "t", "ts", "tz", "s", "b", "u"],
            ),
            ("truncate", &["i", "l", "dec", "s", "b"]),
            (
                "",
                &[
                    "i", "l", "dec", "s", "b", "d", "t", "ts", "tz", "u", "f", "r", "flag",
                ],
            ),
        ];
        let all = [
            "i", "l", "dec", "s", "b", "d", "t", "ts", "tz", "u", "f", "r", "flag", "a", "m", "n",
        ];
        for (transform, columns) in accepted {
            for name in all {
                let spec = match transform {
                    "" => format!("'{name}'"),
                    "bucket" | "truncate" => format!("'{transform}({name}, 3)'"),
                    _ => format!("'{transform}({name})'"),
                };
                let result = partitioning(&spec);
                assert_eq!(
                    result.is_ok(),
                    columns.contains(&name),
                    "{spec}: {result:?}"
                );
                if let Err(err) = result {
                    assert!(err.message.contains("cannot be applied"), "{err}");
                }
            }
        }
    }

    #[test]
    fn partitioning_errors_point_at_the_string() {
        let cases = [
            (
                "'nope'",
                "partition column \"nope\" is not a column of the table",
            ),
            (
                "'day(s)'",
                "day() cannot be applied to column \"s\" of type VARCHAR (it applies to DATE",
            ),
            (
                "'hour(d)'",
                "hour() cannot be applied to column \"d\" of type DATE",
            ),
            (
                "'a'",
                "identity partitioning cannot be applied to column \"a\" of type ARRAY(BIGINT)",
            ),
            ("'truncate(ts, 4)'", "truncate() cannot be applied"),
            (
                "'bucket(f, 4)'",
                "bucket() cannot be applied to column \"f\" of type DOUBLE",
            ),
            ("'week(ts)'", "unknown transform \"week\""),
            ("'bucket(16, l)'", "bucket() takes the column first"),
            (
                "'bucket(l)'",
                "expected \",\" and a number: bucket(column, n)",
            ),
            ("'bucket(l, 0)'", "between 1 and 2147483647"),
            ("'truncate(s, 2147483648)'", "between 1 and 2147483647"),
            ("'day(ts'", "expected \")\", found end of input"),
            ("'day(ts) x'", "expected the end of the partition field"),
            ("'n.x'", "nested ROW field"),
            ("'my col'", "expected the end of the partition field"),
            (
                "'\"my col\"'",
                "(did you mean \"My Col\"? quote it inside the string)",
            ),
            ("''", "expected a column name or a transform"),
            ("'day(\"unterminated)'", "unterminated quoted identifier"),
            (
                "'day(ts)', 'hour(ts)'",
                "clashes with 'day(ts)': a column can have only one year/month/day/hour",
            ),
            (
                "'bucket(l, 2)', 'bucket(l, 8)'",
                "only one bucket partition field",
            ),
            ("'i', 'I'", "only one identity partition field"),
        ];
        for (spec, fragment) in cases {
            let err = partitioning(spec).unwrap_err();
            let last = spec.rsplit(", '").next().unwrap_or(spec);
            let expected_token = if last.starts_with('\'') {
                last.to_owned()
            } else {
                format!("'{last}")
            };
            assert_eq!(err.line, 2, "{err}");
            assert_eq!(err.token, expected_token, "{err}");
            let quote_offset = spec.len() - expected_token.len();
            let column =
                u32::try_from("WITH (partitioning = ARRAY[".len() + quote_offset + 1).unwrap();
            assert_eq!(err.column, column, "{err}");
            assert!(
                err.message.contains(fragment),
                "{:?} lacks {fragment:?}",
                err.message
            );
        }
    }

    #[test]
    fn parse_partitioning_works_on_its_own() {
        let columns = [column("ts", DataType::Timestamp)];
        let at = Position { line: 1, column: 1 };
        let value = PropertyValue::Array(vec![PropertyValue::String("month(ts)".into(), at)], at);
        let fields = parse_partitioning(&value, &columns).unwrap();
        assert_eq!(fields[0].transform, Transform::Month);
        assert_eq!(
            parse_partitioning(&PropertyValue::Default(at), &columns).unwrap(),
            []
        );
        let err = parse_partitioning(&PropertyValue::Boolean(true, at), &columns).unwrap_err();
        assert_eq!(err.token, "TRUE");
    }

    // --- ALTER TABLE ------------------------------------------------------------

    #[test]
    fn alter_add_column() {
        let statement = alter("ALTER TABLE db.t ADD COLUMN zip VARCHAR");
        assert_eq!(statement.name, ["db", "t"]);
        assert!(!statement.if_exists);
        assert_eq!(
            statement.action,
            AlterAction::AddColumn {
                if_not_exists: false,
                path: vec!["zip".into()],
                data_type: DataType::Varchar,
                not_null: false,
                comment: None,
            }
        );
        let statement = alter(
            "alter table if exists T add column if not exists Nested.\"New Field\" \
             ARRAY(ROW(x DECIMAL(5,1))) NOT NULL COMMENT 'n' LAST;",
        );
        assert!(statement.if_exists);
        assert_eq!(
            statement.action,
            AlterAction::AddColumn {
                if_not_exists: true,
                path: vec!["nested".into(), "New Field".into()],
                data_type: array(row(&[(
                    "x",
                    DataType::Decimal {
                        precision: 5,
                        scale: 1
                    }
                )])),
                not_null: true,
                comment: Some("n".into()),
            }
        );
    }

    #[test]
    fn alter_drop_rename_retype() {
        let cases = [
            (
                "ALTER TABLE t DROP COLUMN IF EXISTS a.b",
                AlterAction::DropColumn {
                    if_exists: true,
                    path: vec!["a".into(), "b".into()],
                },
            ),
            (
                "ALTER TABLE t DROP COLUMN \"Zip\"",
                AlterAction::DropColumn {
                    if_exists: false,
                    path: vec!["Zip".into()],
                },
            ),
            (
                "ALTER TABLE t RENAME COLUMN id TO user_id",
                AlterAction::RenameColumn {
                    if_exists: false,
                    path: vec!["id".into()],
                    new_name: "user_id".into(),
                },
            ),
            (
                "ALTER TABLE t RENAME COLUMN IF EXISTS n.k to \"Key\"",
                AlterAction::RenameColumn {
                    if_exists: true,
                    path: vec!["n".into(), "k".into()],
                    new_name: "Key".into(),
                },
            ),
            (
                "ALTER TABLE t ALTER COLUMN n.v SET DATA TYPE bigint",
                AlterAction::SetDataType {
                    path: vec!["n".into(), "v".into()],
                    data_type: DataType::Bigint,
                },
            ),
            (
                "ALTER TABLE t ALTER COLUMN id DROP NOT NULL",
                AlterAction::DropNotNull {
                    path: vec!["id".into()],
                },
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(alter(sql).action, expected, "{sql}");
        }
    }

    #[test]
    fn alter_set_properties() {
        let statement = alter(
            "ALTER TABLE t SET PROPERTIES partitioning = ARRAY['bucket(id, 8)', 'day(ts)'], \
             format_version = 2, \"format\" = DEFAULT",
        );
        let AlterAction::SetProperties(properties) = statement.action else {
            panic!("expected SET PROPERTIES");
        };
        let names: Vec<&str> = properties.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["partitioning", "format_version", "format"]);
        assert_eq!(
            properties[0].1.to_string(),
            "ARRAY['bucket(id, 8)', 'day(ts)']"
        );
        let columns = [column("id", DataType::Bigint), column("ts", DataType::Date)];
        let fields = parse_partitioning(&properties[0].1, &columns).unwrap();
        assert_eq!(fields[0].transform, Transform::Bucket(8));
        assert!(matches!(properties[2].1, PropertyValue::Default(_)));
    }

    #[test]
    fn alter_errors() {
        let cases = [
            (
                "ALTER TABLE t RENAME TO u",
                22,
                "TO",
                "renaming a table is not supported",
            ),
            (
                "ALTER TABLE t ADD COLUMN a INT FIRST",
                32,
                "FIRST",
                "FIRST and AFTER",
            ),
            (
                "ALTER TABLE t ADD COLUMN a INT AFTER b",
                32,
                "AFTER",
                "FIRST and AFTER",
            ),
            (
                "ALTER TABLE t ADD COLUMN a INT DEFAULT 1",
                32,
                "DEFAULT",
                "DEFAULT values",
            ),
            (
                "ALTER TABLE t ADD COLUMN a INT WITH (x = 1)",
                32,
                "WITH",
                "column properties",
            ),
            ("ALTER TABLE t ADD COLUMN a", 27, "", "expected a data type"),
            (
                "ALTER TABLE t ADD COLUMN a VARCHAR(3)",
                36,
                "3",
                "use VARCHAR",
            ),
            ("ALTER TABLE t ADD a INT", 19, "a", "expected COLUMN"),
            (
                "ALTER TABLE t EXECUTE optimize",
                15,
                "EXECUTE",
                "unsupported ALTER TABLE action \"EXECUTE\"",
            ),
            (
                "ALTER TABLE t SET AUTHORIZATION bob",
                15,
                "SET",
                "\"SET AUTHORIZATION\"",
            ),
            (
                "ALTER TABLE t ALTER COLUMN a SET DEFAULT 1",
                30,
                "SET",
                "\"SET DEFAULT\"",
            ),
            (
                "ALTER TABLE t ALTER COLUMN a DROP DEFAULT",
                30,
                "DROP",
                "\"DROP DEFAULT\"",
            ),
            (
                "ALTER TABLE t ALTER COLUMN a TYPE BIGINT",
                30,
                "TYPE",
                "\"TYPE\"",
            ),
            (
                "ALTER TABLE t SET PROPERTIES location = 's3://x'",
                30,
                "location",
                "cannot be changed",
            ),
            (
                "ALTER TABLE t SET PROPERTIES sorted_by = ARRAY['a']",
                30,
                "sorted_by",
                "cannot keep files sorted",
            ),
            (
                "ALTER TABLE t SET PROPERTIES format = 'ORC'",
                39,
                "'ORC'",
                "Parquet only",
            ),
            (
                "ALTER TABLE t SET PROPERTIES partitioning = ARRAY['week(ts)']",
                51,
                "'week(ts)'",
                "unknown transform",
            ),
            (
                "ALTER TABLE t DROP COLUMN a extra",
                29,
                "extra",
                "expected end of statement",
            ),
            ("ALTER VIEW v RENAME TO w", 7, "VIEW", "expected TABLE"),
            (
                "ALTER TABLE t",
                14,
                "",
                "expected an ALTER TABLE action (ADD COLUMN,",
            ),
            (
                "ALTER TABLE t ALTER COLUMN a",
                29,
                "",
                "expected SET DATA TYPE or DROP NOT NULL",
            ),
            ("ALTER TABLE t RENAME COLUMN a b", 31, "b", "expected TO"),
        ];
        for (sql, column, token, fragment) in cases {
            assert_error(&alter_error(sql), 1, column, token, fragment);
        }
    }

    // --- rendering ----------------------------------------------------------------

    #[test]
    fn render_aligns_the_caret_with_tabs_and_at_end_of_input() {
        let sql = "CREATE TABLE t (\n\ta\tTINYINT)";
        let rendered = create_error(sql).render(sql);
        let lines: Vec<&str> = rendered.lines().collect();
        assert!(lines[0].starts_with("line 2, column 4: unsupported type"));
        assert_eq!(lines[1], "2 | \ta\tTINYINT)");
        assert_eq!(lines[2], "  | \t \t^^^^^^^");

        let sql = "CREATE TABLE t (a INT";
        let rendered = create_error(sql).render(sql);
        assert!(
            rendered.ends_with("1 | CREATE TABLE t (a INT\n  |                      ^"),
            "{rendered}"
        );

        // A multi-line token is underlined on its first line only.
        let sql = "CREATE TABLE t (a INT) WITH (format = 'OR\nC')";
        let rendered = create_error(sql).render(sql);
        assert!(
            rendered.ends_with("  |                                       ^^^"),
            "{rendered}"
        );
    }
}

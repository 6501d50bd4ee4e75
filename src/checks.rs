//! Data checks (`[[checks]]`): rules on a column, evaluated on each commit's rows as one Arrow
//! batch (never per JSON record), before anything of the batch is written.
//!
//! Compiled once at start against the table's schema, so that an unknown column, a pattern that
//! does not compile or a range on a string column stops floe before it reads anything.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use iceberg::spec::{PrimitiveType, Schema, Type};

use crate::config::{CheckAction, CheckConfig, CheckKind};

/// The default window of `max_null_rate`.
pub const DEFAULT_NULL_RATE_WINDOW: Duration = Duration::from_secs(300);

/// The configured checks, compiled.
pub struct Checks {
    list: Vec<Check>,
}

struct Check {
    name: String,
    column: String,
    action: CheckAction,
    rule: Rule,
}

enum Rule {
    NotNull,
    Range { min: Option<f64>, max: Option<f64> },
    Regex(regex::Regex),
    AcceptedStrings(HashSet<String>),
    AcceptedInts(HashSet<i64>),
    /// Per commit in the window: (when, rows, nulls).
    MaxNullRate { max: f64, window: Duration, history: VecDeque<(Instant, u64, u64)> },
}

/// One check that rows of a batch failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// `column:check`.
    pub name: String,
    pub column: String,
    pub action: CheckAction,
    /// The failing rows (empty for a rate, which no single row fails).
    pub rows: Vec<usize>,
    /// What was wrong, for the first failing row or the rate: `value 250 is above max 100`.
    pub what: String,
    /// Rows counted as failing (for a rate: the null rows of this batch).
    pub count: u64,
    /// The rule, in words: `range [0, 100]`.
    pub rule: String,
}

impl Checks {
    pub fn none() -> Checks {
        Checks { list: Vec::new() }
    }

    /// Compiles the checks against the table's schema.
    pub fn compile(configs: &[CheckConfig], schema: &Schema) -> Result<Checks, String> {
        let mut list = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let at = format!("checks[{i}] ({})", c.name());
            let Some(field) = schema.as_struct().field_by_name(&c.column) else {
                let names: Vec<&str> = schema.as_struct().fields().iter().map(|f| f.name.as_str()).collect();
                return Err(format!(
                    "{at}: the table has no top-level column {:?} (its columns: {}); checks apply to top-level columns",
                    c.column,
                    names.join(", ")
                ));
            };
            let ty = field.field_type.as_ref();
            let numeric = matches!(
                ty,
                Type::Primitive(PrimitiveType::Int | PrimitiveType::Long | PrimitiveType::Float | PrimitiveType::Double)
            );
            let string = matches!(ty, Type::Primitive(PrimitiveType::String));
            let integer = matches!(ty, Type::Primitive(PrimitiveType::Int | PrimitiveType::Long));
            let rule = match c.check {
                CheckKind::NotNull => Rule::NotNull,
                CheckKind::Range if numeric => Rule::Range { min: c.min, max: c.max },
                CheckKind::Range => {
                    return Err(format!("{at}: column {:?} is {ty}; a range applies to int, long, float and double columns", c.column));
                }
                CheckKind::Regex if string => {
                    let p = c.pattern.as_deref().unwrap_or_default();
                    Rule::Regex(regex::Regex::new(p).map_err(|e| format!("{at}: pattern {p:?} does not compile: {e}"))?)
                }
                CheckKind::Regex => {
                    return Err(format!("{at}: column {:?} is {ty}; a regex applies to string columns", c.column));
                }
                CheckKind::Accepted if string => {
                    let mut set = HashSet::new();
                    for v in c.values.iter().flatten() {
                        match v.as_str() {
                            Some(s) => set.insert(s.to_owned()),
                            None => return Err(format!("{at}: column {:?} is a string; accepted value {v} is not", c.column)),
                        };
                    }
                    Rule::AcceptedStrings(set)
                }
                CheckKind::Accepted if integer => {
                    let mut set = HashSet::new();
                    for v in c.values.iter().flatten() {
                        match v.as_integer() {
                            Some(n) => set.insert(n),
                            None => return Err(format!("{at}: column {:?} is {ty}; accepted value {v} is not an integer", c.column)),
                        };
                    }
                    Rule::AcceptedInts(set)
                }
                CheckKind::Accepted => {
                    return Err(format!("{at}: column {:?} is {ty}; accepted values apply to string, int and long columns", c.column));
                }
                CheckKind::MaxNullRate => Rule::MaxNullRate {
                    max: c.max_rate.unwrap_or(0.0),
                    window: c.window.unwrap_or(DEFAULT_NULL_RATE_WINDOW),
                    history: VecDeque::new(),
                },
            };
            list.push(Check { name: c.name(), column: c.column.clone(), action: c.action, rule });
        }
        Ok(Checks { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether some check sets failing rows aside (the loader then keeps each row's record).
    pub fn dead_letters(&self) -> bool {
        self.list.iter().any(|c| c.action == CheckAction::DeadLetter)
    }

    /// Evaluates every check on the batch. `commit` says whether the batch's rows count towards
    /// a rate's window (false for a batch that is not going to be committed).
    pub fn evaluate(&mut self, batch: &RecordBatch, now: Instant) -> Vec<Finding> {
        let mut out = Vec::new();
        for c in &mut self.list {
            let Some(col) = batch.column_by_name(&c.column) else { continue };
            let (rows, what, count) = match &mut c.rule {
                Rule::MaxNullRate { max, window, history } => {
                    history.push_back((now, col.len() as u64, col.null_count() as u64));
                    while history.front().is_some_and(|(t, _, _)| now.duration_since(*t) > *window) {
                        history.pop_front();
                    }
                    let (rows, nulls) = history.iter().fold((0u64, 0u64), |(r, n), (_, r2, n2)| (r + r2, n + n2));
                    let rate = if rows == 0 { 0.0 } else { nulls as f64 / rows as f64 };
                    if rate <= *max {
                        continue;
                    }
                    let what = format!(
                        "{:.1}% of the last {rows} rows (over {}) are null, above max_rate {:.1}%",
                        rate * 100.0,
                        humantime::format_duration(*window),
                        *max * 100.0
                    );
                    (Vec::new(), what, col.null_count() as u64)
                }
                rule => {
                    let rows = failing_rows(rule, col);
                    let Some(&first) = rows.first() else { continue };
                    let what = describe(rule, col, first);
                    let n = rows.len() as u64;
                    (rows, what, n)
                }
            };
            let rule = rule_text(&c.rule);
            out.push(Finding { name: c.name.clone(), column: c.column.clone(), action: c.action, rows, what, count, rule });
        }
        out
    }

    /// Forgets the last batch's contribution to the rate windows (the batch was not committed).
    pub fn undo_last(&mut self) {
        for c in &mut self.list {
            if let Rule::MaxNullRate { history, .. } = &mut c.rule {
                history.pop_back();
            }
        }
    }
}

fn failing_rows(rule: &Rule, col: &ArrayRef) -> Vec<usize> {
    let n = col.len();
    match rule {
        Rule::NotNull => (0..n).filter(|&i| col.is_null(i)).collect(),
        Rule::Range { min, max } => {
            let out = |v: f64| min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) || v.is_nan();
            match col.data_type() {
                DataType::Int32 => rows_where(col.as_primitive::<Int32Type>().iter(), |v| out(v as f64)),
                DataType::Int64 => rows_where(col.as_primitive::<Int64Type>().iter(), |v| out(v as f64)),
                DataType::Float32 => rows_where(col.as_primitive::<Float32Type>().iter(), |v| out(v as f64)),
                DataType::Float64 => rows_where(col.as_primitive::<Float64Type>().iter(), out),
                _ => Vec::new(),
            }
        }
        Rule::Regex(re) => match col.data_type() {
            DataType::Utf8 => rows_where(col.as_string::<i32>().iter(), |v| !re.is_match(v)),
            _ => Vec::new(),
        },
        Rule::AcceptedStrings(set) => match col.data_type() {
            DataType::Utf8 => rows_where(col.as_string::<i32>().iter(), |v| !set.contains(v)),
            _ => Vec::new(),
        },
        Rule::AcceptedInts(set) => match col.data_type() {
            DataType::Int32 => rows_where(col.as_primitive::<Int32Type>().iter(), |v| !set.contains(&(v as i64))),
            DataType::Int64 => rows_where(col.as_primitive::<Int64Type>().iter(), |v| !set.contains(&v)),
            _ => Vec::new(),
        },
        Rule::MaxNullRate { .. } => Vec::new(),
    }
}

/// Rows whose non-null value fails (nulls pass every rule but not_null).
fn rows_where<T>(values: impl Iterator<Item = Option<T>>, fails: impl Fn(T) -> bool) -> Vec<usize> {
    values
        .enumerate()
        .filter_map(|(i, v)| v.is_some_and(&fails).then_some(i))
        .collect()
}

/// The value at `row`, as the check's message shows it.
pub fn value_at(col: &ArrayRef, row: usize) -> String {
    if col.is_null(row) {
        return "null".into();
    }
    match col.data_type() {
        DataType::Int32 => col.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::Int64 => col.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Float32 => col.as_primitive::<Float32Type>().value(row).to_string(),
        DataType::Float64 => col.as_primitive::<Float64Type>().value(row).to_string(),
        DataType::Utf8 => format!("{:?}", col.as_string::<i32>().value(row)),
        other => format!("<{other}>"),
    }
}

fn rule_text(rule: &Rule) -> String {
    let bound = |b: &Option<f64>| b.map_or("-".to_owned(), |x| x.to_string());
    match rule {
        Rule::NotNull => "not null".into(),
        Rule::Range { min, max } => format!("range [{}, {}]", bound(min), bound(max)),
        Rule::Regex(re) => format!("matches {:?}", re.as_str()),
        Rule::AcceptedStrings(set) => format!("one of {:?}", set.iter().collect::<BTreeSet<_>>()),
        Rule::AcceptedInts(set) => format!("one of {:?}", set.iter().collect::<BTreeSet<_>>()),
        Rule::MaxNullRate { max, window, .. } => {
            format!("at most {:.1}% nulls over {}", max * 100.0, humantime::format_duration(*window))
        }
    }
}

fn describe(rule: &Rule, col: &ArrayRef, row: usize) -> String {
    let v = value_at(col, row);
    match rule {
        Rule::NotNull => "value is null (not_null)".into(),
        Rule::Range { min, max } => {
            let bound = |b: Option<f64>| b.map_or("-".to_owned(), |x| x.to_string());
            format!("value {v} is outside the range [{}, {}]", bound(*min), bound(*max))
        }
        Rule::Regex(re) => format!("value {v} does not match the pattern {:?}", re.as_str()),
        Rule::AcceptedStrings(set) => {
            let sorted: BTreeSet<&String> = set.iter().collect();
            format!("value {v} is not one of the accepted values {sorted:?}")
        }
        Rule::AcceptedInts(set) => {
            let sorted: BTreeSet<&i64> = set.iter().collect();
            format!("value {v} is not one of the accepted values {sorted:?}")
        }
        Rule::MaxNullRate { .. } => String::new(),
    }
}

/// The batch without the given rows.
pub fn without_rows(batch: &RecordBatch, rows: &BTreeSet<usize>) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let keep: arrow_array::BooleanArray = (0..batch.num_rows()).map(|i| Some(!rows.contains(&i))).collect();
    arrow_select::filter::filter_record_batch(batch, &keep)
}

/// The `floe.checks` snapshot summary value: `column:check=rows,...`.
pub fn summary(findings: &[Finding]) -> String {
    findings.iter().map(|f| format!("{}={}", f.name, f.count)).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, Int64Array, StringArray};
    use arrow_schema::{Field, Schema as ArrowSchema};
    use iceberg::spec::NestedField;

    use super::*;

    fn schema() -> Schema {
        Schema::builder()
            .with_fields(vec![
                NestedField::optional(1, "id", Type::Primitive(PrimitiveType::Long)).into(),
                NestedField::optional(2, "name", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(3, "score", Type::Primitive(PrimitiveType::Double)).into(),
            ])
            .build()
            .unwrap()
    }

    fn batch() -> RecordBatch {
        let s = ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(s),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)])),
                Arc::new(StringArray::from(vec![Some("ab"), Some("x1"), None, Some("cd")])),
                Arc::new(Float64Array::from(vec![Some(0.5), Some(150.0), Some(-1.0), None])),
            ],
        )
        .unwrap()
    }

    fn check(toml_text: &str) -> CheckConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn run(toml_text: &str) -> Vec<Finding> {
        let mut c = Checks::compile(&[check(toml_text)], &schema()).unwrap();
        c.evaluate(&batch(), Instant::now())
    }

    #[test]
    fn each_kind_finds_its_rows() {
        let f = run("column = 'id'\ncheck = 'not_null'");
        assert_eq!(f[0].rows, vec![1]);
        assert_eq!(f[0].name, "id:not_null");
        let f = run("column = 'score'\ncheck = 'range'\nmin = 0\nmax = 100");
        assert_eq!(f[0].rows, vec![1, 2]);
        assert!(f[0].what.contains("150 is outside the range [0, 100]"), "{}", f[0].what);
        let f = run("column = 'name'\ncheck = 'regex'\npattern = '^[a-z]+$'");
        assert_eq!(f[0].rows, vec![1]);
        assert!(f[0].what.contains("\"x1\""));
        let f = run("column = 'name'\ncheck = 'accepted'\nvalues = ['ab', 'x1']");
        assert_eq!(f[0].rows, vec![3]);
        let f = run("column = 'id'\ncheck = 'accepted'\nvalues = [1, 3, 4]");
        assert!(f.is_empty(), "nulls pass every check but not_null: {f:?}");
        let f = run("column = 'id'\ncheck = 'max_null_rate'\nmax_rate = 0.2");
        assert_eq!((f[0].rows.len(), f[0].count), (0, 1));
        assert!(f[0].what.contains("25.0% of the last 4 rows"), "{}", f[0].what);
        assert!(run("column = 'id'\ncheck = 'max_null_rate'\nmax_rate = 0.25").is_empty());
    }

    #[test]
    fn the_null_rate_is_over_the_window() {
        let mut c = Checks::compile(&[check("column = 'id'\ncheck = 'max_null_rate'\nmax_rate = 0.1\nwindow = '1m'")], &schema()).unwrap();
        let t0 = Instant::now();
        assert_eq!(c.evaluate(&batch(), t0).len(), 1);
        let clean = batch().slice(2, 2); // no null id
        // Still over the window: 1 null in 6 rows.
        assert_eq!(c.evaluate(&clean, t0 + Duration::from_secs(30)).len(), 1);
        // The first batch has left the window.
        assert!(c.evaluate(&clean, t0 + Duration::from_secs(90)).is_empty());
    }

    #[test]
    fn checks_are_validated_against_the_schema() {
        let err = |t: &str| Checks::compile(&[check(t)], &schema()).err().unwrap();
        assert!(err("column = 'nope'\ncheck = 'not_null'").contains("no top-level column \"nope\" (its columns: id, name, score)"));
        assert!(err("column = 'name'\ncheck = 'range'\nmin = 1").contains("column \"name\" is string; a range applies to int"));
        assert!(err("column = 'id'\ncheck = 'regex'\npattern = 'a'").contains("a regex applies to string columns"));
        assert!(err("column = 'id'\ncheck = 'accepted'\nvalues = ['a']").contains("is not an integer"));
    }

    #[test]
    fn failing_rows_are_removed() {
        let b = without_rows(&batch(), &BTreeSet::from([1, 2])).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(value_at(b.column(0), 1), "4");
    }
}

//! Several pipelines in one configuration: `[[pipeline]]` blocks.
//!
//! Each block is resolved, on the TOML tree, into a whole single-pipeline configuration: the
//! top-level sections are its defaults, and the block overrides them as [`BLOCK_KEYS`] says
//! (per key for the sections whose keys are independent knobs, whole for the sections whose keys
//! describe one thing together). The result is validated exactly as a single-pipeline file is,
//! then the blocks are checked against each other (names, tables, topics per consumer group).
//! Each resolved block is what `floe run` gives one `Loader`, so one pipeline keeps its own
//! consumer, ledger (keyed by its name) and fence whatever the others do.

use std::collections::BTreeMap;

use crate::config::{CatalogKind, Config, ConfigError};

/// How a block key applies over the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    /// The block's keys replace the same keys of the top-level section; the others are inherited.
    PerKey,
    /// The block's section replaces the top-level one entirely.
    Whole,
}

/// Every key a `[[pipeline]]` block may hold (besides `name`, `topics`, `topic_pattern` and
/// `table`, which only a block sets) and how it applies.
const BLOCK_KEYS: &[(&str, Merge)] = &[
    ("source", Merge::PerKey),
    ("commit", Merge::PerKey),
    ("schema", Merge::PerKey),
    ("maintenance", Merge::PerKey),
    ("alerts", Merge::PerKey),
    ("kafka", Merge::PerKey),
    ("catalog", Merge::Whole),
    ("decode", Merge::Whole),
    ("metadata", Merge::Whole),
    ("dead_letter", Merge::Whole),
    ("checks", Merge::Whole),
];

/// The keys only a block sets.
const OWN_KEYS: &[&str] = &["name", "topics", "topic_pattern", "table"];

/// Top-level keys shared by every pipeline of the process, which a block cannot change.
const SHARED_KEYS: &[(&str, &str)] = &[
    ("data_dir", "the process has one data directory"),
    ("http", "the process has one HTTP listener, serving every pipeline"),
    ("storage", "object storage settings are the process's"),
    ("aws", "AWS settings are the process's"),
    ("on_pipeline_failure", "it says what the process does when a pipeline fails"),
];

fn invalid(origin: &str, message: String) -> ConfigError {
    ConfigError::Invalid { path: origin.to_owned(), message }
}

/// Takes the `[[pipeline]]` blocks out of the file's tree (None: the file has none, and is one
/// pipeline as before). Refuses top-level keys that only make sense per block.
pub(crate) fn take_blocks(value: &mut toml::Table, origin: &str) -> Result<Option<Vec<toml::Table>>, ConfigError> {
    let blocks = match value.remove("pipeline") {
        None => None,
        Some(name @ toml::Value::String(_)) => {
            value.insert("pipeline".into(), name);
            None
        }
        Some(toml::Value::Array(items)) if !items.is_empty() => {
            let mut blocks = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    toml::Value::Table(t) => blocks.push(t),
                    other => {
                        return Err(invalid(
                            origin,
                            format!(
                                "[[pipeline]] #{}: a block is a table of keys, not {}; write it as `[[pipeline]]` \
                                 followed by `name = \"...\"`, `topics = [...]`, `table = \"...\"`",
                                i + 1,
                                other.type_str()
                            ),
                        ));
                    }
                }
            }
            Some(blocks)
        }
        Some(_) => {
            return Err(invalid(
                origin,
                "`pipeline` is either the one pipeline's name (`pipeline = \"events\"`) or `[[pipeline]]` blocks, \
                 one per pipeline"
                    .into(),
            ));
        }
    };
    let Some(blocks) = blocks else {
        if value.contains_key("on_pipeline_failure") {
            return Err(invalid(
                origin,
                "on_pipeline_failure applies only to a config with [[pipeline]] blocks (one pipeline stops the \
                 process when it fails); remove it"
                    .into(),
            ));
        }
        return Ok(None);
    };
    if value.contains_key("table") {
        return Err(invalid(
            origin,
            "[table] at the top level does not apply with [[pipeline]] blocks: each block names its own table \
             (`table = \"namespace.table\"` in the block); move it there"
                .into(),
        ));
    }
    if let Some(source) = value.get("source").and_then(toml::Value::as_table) {
        for key in ["topics", "topic_pattern"] {
            if source.contains_key(key) {
                return Err(invalid(
                    origin,
                    format!(
                        "source.{key} at the top level does not apply with [[pipeline]] blocks: each block names \
                         its own topics (`topics = [...]` or `topic_pattern = \"...\"` in the block); move it there"
                    ),
                ));
            }
        }
    }
    if value.get("kafka").and_then(toml::Value::as_table).is_some_and(|k| k.contains_key("group.id")) {
        return Err(invalid(
            origin,
            "kafka.\"group.id\" at the top level does not apply with [[pipeline]] blocks: each pipeline consumes \
             in its own group, named after the pipeline unless its block sets `\"group.id\"` under \
             [pipeline.kafka]; move it into the block(s)"
                .into(),
        ));
    }
    Ok(Some(blocks))
}

/// Resolves every block over the top level `top` (the file's tree without the blocks), validates
/// each as a configuration and the blocks against each other. `secret_paths` are the keys whose
/// values came from secrets (for redaction).
pub(crate) fn resolve(
    top: &toml::Table,
    blocks: &[toml::Table],
    origin: &str,
    secret_paths: &[String],
) -> Result<Vec<Config>, ConfigError> {
    let mut out: Vec<Config> = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let name = block_name(block, i, origin)?;
        let at = format!("[[pipeline]] {name:?}");
        let mut merged = top.clone();
        merged.remove("on_pipeline_failure");
        merged.insert("pipeline".into(), toml::Value::String(name.clone()));
        if block.contains_key("topics")
            && block.get("source").and_then(toml::Value::as_table).is_some_and(|s| s.contains_key("topics"))
        {
            return Err(invalid(origin, format!("{at}: `topics` is given twice (and under [pipeline.source]); keep one")));
        }
        for (key, v) in block {
            match key.as_str() {
                "name" => {}
                "topics" | "topic_pattern" => {
                    section(&mut merged, "source").insert(key.clone(), v.clone());
                }
                "table" => {
                    let t = match v {
                        toml::Value::String(s) => {
                            let mut t = toml::Table::new();
                            t.insert("name".into(), toml::Value::String(s.clone()));
                            toml::Value::Table(t)
                        }
                        other => other.clone(),
                    };
                    merged.insert("table".into(), t);
                }
                _ => match BLOCK_KEYS.iter().find(|(k, _)| k == key) {
                    Some((_, Merge::PerKey)) => {
                        let Some(keys) = v.as_table() else {
                            return Err(invalid(origin, format!("{at}: `{key}` must be a section ([pipeline.{key}]), not {}", v.type_str())));
                        };
                        let s = section(&mut merged, key);
                        for (k, x) in keys {
                            s.insert(k.clone(), x.clone());
                        }
                    }
                    Some((_, Merge::Whole)) => {
                        merged.insert(key.clone(), v.clone());
                    }
                    None => return Err(invalid(origin, format!("{at}: {}", unknown_key(key)))),
                },
            }
        }
        // Each pipeline consumes in its own group unless its block names one.
        let kafka = section(&mut merged, "kafka");
        if !kafka.contains_key("group.id") {
            kafka.insert("group.id".into(), toml::Value::String(name.clone()));
        }
        let mut config = Config::from_block(merged, origin, &at)?;
        for path in secret_paths {
            let own = format!("pipeline[{i}].kafka.");
            if let Some(key) = path.strip_prefix("kafka.").or_else(|| path.strip_prefix(own.as_str())) {
                config.kafka.mark_secret(key);
            }
        }
        if config.source.topics.is_empty() && config.source.topic_pattern.is_none() {
            return Err(invalid(
                origin,
                format!("{at}: no topics: set `topics = [\"...\"]` or `topic_pattern = \"...\"` in the block"),
            ));
        }
        if config.table.is_none() {
            return Err(invalid(origin, format!("{at}: no table: set `table = \"namespace.table\"` in the block")));
        }
        out.push(config);
    }
    check_together(&out).map_err(|m| invalid(origin, m))?;
    Ok(out)
}

/// A block's `name`, checked.
fn block_name(block: &toml::Table, i: usize, origin: &str) -> Result<String, ConfigError> {
    let at = format!("[[pipeline]] #{}", i + 1);
    match block.get("name") {
        None => Err(invalid(
            origin,
            format!(
                "{at}: `name` is missing; every block names its pipeline (the table's ledger is kept under it, \
                 and by default it is the consumer group), e.g. name = \"orders\""
            ),
        )),
        Some(toml::Value::String(n)) => {
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                Err(invalid(
                    origin,
                    format!("{at}: name = {n:?}: a pipeline name is letters, digits, '.', '_' and '-' (it names table properties and files)"),
                ))
            } else {
                Ok(n.clone())
            }
        }
        Some(other) => Err(invalid(origin, format!("{at}: `name` must be a string, not {}", other.type_str()))),
    }
}

/// The top-level section `key` of `t` as a table (created when absent).
fn section<'a>(t: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    let v = t.entry(key.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !v.is_table() {
        *v = toml::Value::Table(toml::Table::new());
    }
    v.as_table_mut().expect("made a table above")
}

/// Why `key` cannot be in a block, with the nearest key that can.
fn unknown_key(key: &str) -> String {
    if let Some((_, why)) = SHARED_KEYS.iter().find(|(k, _)| *k == key) {
        return format!("`{key}` cannot be set per pipeline ({why}); set it at the top level of the file");
    }
    let valid: Vec<&str> = OWN_KEYS.iter().copied().chain(BLOCK_KEYS.iter().map(|(k, _)| *k)).collect();
    let best = valid
        .iter()
        .map(|c| (strsim::jaro_winkler(key, c), *c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let hint = best.map(|(_, c)| format!("; did you mean `{c}`?")).unwrap_or_default();
    format!("unknown key `{key}`{hint} (a block may set: {})", valid.join(", "))
}

/// The catalog a pipeline writes to, as a comparable key.
fn catalog_key(c: &Config) -> String {
    let uri = match c.catalog.kind {
        CatalogKind::Sql => c.catalog_uri().to_string(),
        _ => c.catalog.uri.clone().unwrap_or_default(),
    };
    format!("{:?} {uri} {}", c.catalog.kind, c.catalog_name())
}

/// The cross-block checks: unique names, one writer per table, one reader per topic and group.
fn check_together(pipelines: &[Config]) -> Result<(), String> {
    let name = |c: &Config| c.pipeline.clone().unwrap_or_default();
    let mut names = BTreeMap::new();
    let mut tables: BTreeMap<(String, String), String> = BTreeMap::new();
    for c in pipelines {
        if names.insert(name(c), ()).is_some() {
            return Err(format!(
                "two [[pipeline]] blocks are named {:?}: a name keys the pipeline's ledger in the table, so each \
                 block needs its own",
                name(c)
            ));
        }
        let table = c.table_name().map(|t| t.to_string()).unwrap_or_default();
        if let Some(first) = tables.insert((catalog_key(c), table.clone()), name(c)) {
            return Err(format!(
                "[[pipeline]] {first:?} and {:?} both write table {table}: one table has one pipeline in a process \
                 (read both topics in one block: `topics = [...]`)",
                name(c)
            ));
        }
    }
    for c in pipelines {
        if let Some(dl) = &c.dead_letter.table
            && let Ok(dl) = crate::config::TableName::parse(dl)
            && let Some(other) = tables.get(&(catalog_key(c), dl.to_string()))
        {
            return Err(format!(
                "[[pipeline]] {:?}: dead_letter.table {dl} is the table of [[pipeline]] {other:?}; dead letters go to a \
                 table of their own",
                name(c)
            ));
        }
    }
    for (i, a) in pipelines.iter().enumerate() {
        for b in &pipelines[i + 1..] {
            let group = |c: &Config| (c.kafka.get("bootstrap.servers").unwrap_or_default().to_owned(), c.kafka.get("group.id").unwrap_or_default().to_owned());
            if group(a) != group(b) {
                continue;
            }
            let shared = a
                .source
                .topics
                .iter()
                .find(|t| b.source.reads(t))
                .or_else(|| b.source.topics.iter().find(|t| a.source.reads(t)))
                .map(|t| format!("topic {t:?}"))
                .or_else(|| match (&a.source.topic_pattern, &b.source.topic_pattern) {
                    (Some(x), Some(y)) => Some(format!("topics matching both {x:?} and {y:?} (patterns are not compared further: give the pipelines separate groups)")),
                    _ => None,
                });
            if let Some(what) = shared {
                return Err(format!(
                    "[[pipeline]] {:?} and {:?} both read {what} in consumer group {:?}: Kafka would split the \
                     partitions between them, and each table would get only part of the records. Give each its own \
                     group (remove `\"group.id\"` from one block's [pipeline.kafka]: a pipeline's group is its name \
                     by default)",
                    name(a),
                    name(b),
                    group(a).1
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, OnPipelineFailure};

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.toml", &|_| None).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("config should be rejected")
    }

    const TWO: &str = r#"
        [kafka]
        "bootstrap.servers" = "127.0.0.1:9092"
        "client.id" = "shared"
        [commit]
        interval = "2s"
        target_file_size = "64MiB"
        [decode]
        field_case = "camelCase"
        [dead_letter]
        topic = "all.dlq"

        [[pipeline]]
        name = "orders"
        topics = ["orders"]
        table = "shop.orders"
        [pipeline.commit]
        interval = "1s"

        [[pipeline]]
        name = "clicks"
        topic_pattern = "clicks[.].*"
        table = "web.clicks"
        [pipeline.kafka]
        "group.id" = "click-loader"
        [pipeline.decode]
        unnest = "/data"
        [[pipeline.checks]]
        column = "id"
        check = "not_null"
    "#;

    #[test]
    fn blocks_inherit_the_top_level() {
        let c = parse(TWO).unwrap();
        assert_eq!(c.pipeline_names(), vec!["orders", "clicks"]);
        assert_eq!(c.on_pipeline_failure, OnPipelineFailure::Continue);
        let orders = c.select(Some("orders")).unwrap();
        assert_eq!(orders.pipeline_name(), Some("orders"));
        // Per key: interval from the block, the file size from the top level.
        assert_eq!(orders.commit.interval, std::time::Duration::from_secs(1));
        assert_eq!(orders.commit.target_file_size, 64 << 20);
        assert_eq!(orders.kafka.get("group.id"), Some("orders"), "a pipeline's group is its name by default");
        assert_eq!(orders.kafka.get("client.id"), Some("shared"));
        assert_eq!(orders.decode.field_case.as_deref(), Some("camelCase"));
        assert_eq!(orders.dead_letter.topic.as_deref(), Some("all.dlq"));
        assert_eq!(orders.table_name().unwrap().to_string(), "shop.orders");
        assert!(orders.checks.is_empty());
        let clicks = c.select(Some("clicks")).unwrap();
        assert_eq!(clicks.kafka.get("group.id"), Some("click-loader"));
        // Whole section: [pipeline.decode] replaces [decode], field_case is not inherited.
        assert_eq!(clicks.decode.unnest.as_deref(), Some("/data"));
        assert_eq!(clicks.decode.field_case, None);
        assert_eq!(clicks.commit.interval, std::time::Duration::from_secs(2));
        assert_eq!(clicks.checks.len(), 1);
        assert_eq!(clicks.source.subscription(), vec!["^(clicks[.].*)$".to_owned()]);
        assert!(clicks.source.reads("clicks.eu") && !clicks.source.reads("xclicks.eu") && !clicks.source.reads("orders"));
        assert_eq!(c.runs().len(), 2);
    }

    #[test]
    fn selecting_a_pipeline() {
        let c = parse(TWO).unwrap();
        let e = c.select(None).unwrap_err();
        assert!(e.contains("2 pipelines (\"orders\", \"clicks\")") && e.contains("--pipeline NAME"), "{e}");
        let e = c.select(Some("nope")).unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("\"orders\", \"clicks\""), "{e}");
        let single = parse("pipeline = \"p\"\n[table]\nname = \"t\"\n").unwrap();
        assert!(single.select(None).is_ok() && single.select(Some("p")).is_ok());
        let e = single.select(Some("q")).unwrap_err();
        assert!(e.contains("no [[pipeline]] blocks") && e.contains("\"p\""), "{e}");
        assert_eq!(single.runs().len(), 1);
    }

    #[test]
    fn a_config_without_blocks_is_unchanged() {
        let c = parse("[source]\ntopics = [\"a\"]\n[table]\nname = \"t\"\n").unwrap();
        assert!(c.pipelines.is_empty());
        assert_eq!(c.source.subscription(), vec!["a".to_owned()]);
        let e = err("on_pipeline_failure = \"stop\"\n");
        assert!(e.contains("only to a config with [[pipeline]] blocks"), "{e}");
    }

    fn block(name: &str, body: &str) -> String {
        format!("[[pipeline]]\nname = \"{name}\"\n{body}\n")
    }

    #[test]
    fn validation_errors_name_the_block() {
        let a = block("a", "topics = [\"t1\"]\ntable = \"ns.a\"");
        let e = err(&format!("{a}{}", block("a", "topics = [\"t2\"]\ntable = \"ns.b\"")));
        assert!(e.contains("two [[pipeline]] blocks are named \"a\""), "{e}");
        let e = err(&format!("{a}{}", block("b", "topics = [\"t2\"]\ntable = \"ns.a\"")));
        assert!(e.contains("\"a\" and \"b\" both write table ns.a"), "{e}");
        // Same table name in another catalog is another table.
        parse(&format!("{a}{}", block("b", "topics = [\"t2\"]\ntable = \"ns.a\"\n[pipeline.catalog]\nuri = \"sqlite:/tmp/other.db\""))).unwrap();
        // The same topic in two groups is fine; in one group it is not.
        parse(&format!("{a}{}", block("b", "topics = [\"t1\"]\ntable = \"ns.b\""))).unwrap();
        let shared = "[pipeline.kafka]\n\"group.id\" = \"g\"";
        let e = err(&format!(
            "{}{}",
            block("a", &format!("topics = [\"t1\"]\ntable = \"ns.a\"\n{shared}")),
            block("b", &format!("topic_pattern = \"t[0-9]\"\ntable = \"ns.b\"\n{shared}"))
        ));
        assert!(e.contains("\"a\" and \"b\" both read topic \"t1\" in consumer group \"g\""), "{e}");
        let e = err(&format!("{a}{}", block("b", "topics = [\"t2\"]\ntable = \"ns.b\"\nhttp = {}")));
        assert!(e.contains("[[pipeline]] \"b\": `http` cannot be set per pipeline"), "{e}");
        let e = err(&format!("{a}{}", block("b", "topics = [\"t2\"]\ntable = \"ns.b\"\ncomit = {}")));
        assert!(e.contains("[[pipeline]] \"b\": unknown key `comit`; did you mean `commit`?"), "{e}");
        let e = err(&format!("{a}{}", block("b", "topics = [\"t2\"]\ntable = \"ns.b\"\n[pipeline.commit]\nintervall = \"1s\"")));
        assert!(e.contains("[[pipeline]] \"b\": unknown field `intervall`") && e.contains("did you mean `interval`"), "{e}");
        let e = err(&format!("{a}{}", block("b", "topics = [\"t2\"]\ntable = \"ns.b\"\n[pipeline.commit]\ninterval = \"1ms\"")));
        assert!(e.contains("[[pipeline]] \"b\": commit.interval"), "{e}");
        let e = err(&format!("{a}[[pipeline]]\ntopics = [\"x\"]\n"));
        assert!(e.contains("[[pipeline]] #2: `name` is missing"), "{e}");
        let e = err(&format!("{a}{}", block("b", "table = \"ns.b\"")));
        assert!(e.contains("[[pipeline]] \"b\": no topics"), "{e}");
        let e = err(&format!("{a}{}", block("b", "topics = [\"t2\"]")));
        assert!(e.contains("[[pipeline]] \"b\": no table"), "{e}");
        let e = err(&format!("{a}{}", block("b", "topic_pattern = \"t\\\\d+\"\ntable = \"ns.b\"")));
        assert!(e.contains("source.topic_pattern") && e.contains("[0-9]"), "{e}");
        let e = err(&format!("[table]\nname = \"x\"\n{a}"));
        assert!(e.contains("[table] at the top level does not apply"), "{e}");
        let e = err(&format!("[source]\ntopics = [\"x\"]\n{a}"));
        assert!(e.contains("source.topics at the top level"), "{e}");
        let e = err(&format!("[kafka]\n\"group.id\" = \"g\"\n{a}"));
        assert!(e.contains("kafka.\"group.id\" at the top level"), "{e}");
        let e = err(&format!("{a}{}", block("b", "topics = [\"t2\"]\ntable = \"ns.b\"\n[pipeline.dead_letter]\ntable = \"ns.a\"")));
        assert!(e.contains("dead_letter.table ns.a is the table of [[pipeline]] \"a\""), "{e}");
        let e = err(&format!("{a}{}", block("b", "topics = [\"b.dlq\"]\ntable = \"ns.b\"\n[pipeline.dead_letter]\ntopic = \"b.dlq\"")));
        assert!(e.contains("[[pipeline]] \"b\": dead_letter.topic \"b.dlq\" is also a source topic"), "{e}");
        let e = err(&format!("on_pipeline_failure = \"halt\"\n{a}"));
        assert!(e.contains("halt"), "{e}");
        let c = parse(&format!("on_pipeline_failure = \"stop\"\n{a}")).unwrap();
        assert_eq!(c.on_pipeline_failure, OnPipelineFailure::Stop);
    }
}

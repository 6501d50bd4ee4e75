//! The `floe` command: parses the command line, reads the configuration, starts logging and calls
//! into the library. Everything else lives in the library, where tests call it directly.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: see Cargo.toml and docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use floe::catalog::Catalog;
use floe::config::{Config, ConfigError};
use floe::sample::{PublishOptions, publish};
use floe::table::{self, Created};

/// Stream JSON records from Kafka into Apache Iceberg tables, exactly once.
#[derive(Parser, Debug)]
#[command(name = "floe", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). Default: ./floe.toml if it exists, else built-in defaults.
    #[arg(long, short = 'c', global = true, env = "FLOE_CONFIG")]
    config: Option<PathBuf>,
    /// Override `data_dir` (where the embedded catalog and warehouse live).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// With several `[[pipeline]]` blocks: the one a command is about (`floe run`: run only it).
    /// Needed when a command needs a pipeline and the config has several.
    #[arg(long, global = true, value_name = "NAME")]
    pipeline: Option<String>,
    /// Log filter, e.g. `info`, `debug`, `floe=debug,rdkafka=warn`.
    #[arg(long, global = true, env = "FLOE_LOG", default_value = "info")]
    log: String,
    /// Log line format: `text` for people, `json` (one object per line with `timestamp`,
    /// `level`, `message`, `target` and the event's fields) for log shippers.
    #[arg(long, global = true, env = "FLOE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consume the configured topics and append them to the table, exactly once.
    Run,
    /// Create, describe and list tables.
    #[command(subcommand)]
    Table(TableCommand),
    /// Send sample records of the seed's shape to a topic.
    PublishSample(PublishArgs),
    /// Skip the one record a stopped pipeline is waiting at (recorded in the table's history).
    Skip {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        #[arg(long)]
        offset: i64,
        /// Why, for the history.
        #[arg(long, default_value = "skipped by an operator")]
        reason: String,
    },
    /// Table maintenance: compaction, snapshot expiry, retention, orphan files.
    Maintain(MaintainArgs),
    /// Show each pipeline's lag behind Kafka (records and seconds, per partition), its recent
    /// commits and dead letters, and the table's health (small files, manifests, snapshots,
    /// maintenance). Reads only; commits nothing.
    #[command(after_help = "Exit status: 0 when all was read and no pipeline is behind; 3 when some \
                            pipeline lags by more than --max-lag records on some partition; 1 when \
                            something could not be read (a table, Kafka: the rest is still shown); \
                            2 on a usage or configuration error.")]
    Status(StatusArgs),
    /// Run a read-only SQL query over the tables.
    Query {
        /// The SQL statement.
        sql: String,
    },
    /// The catalog database itself.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// The pipeline's dead letters: list them, or replay the ones that now decode into the table.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

#[derive(Subcommand, Debug)]
enum DeadLettersCommand {
    /// Show the pipeline's dead letters (source topic/partition/offset, kind, reason, time, value)
    /// and what each is against the table's current schema: decodes now, still fails (with the
    /// new reason), already replayed, or not committed by the pipeline yet. Reads only.
    List {
        #[command(flatten)]
        select: DeadLetterSelection,
        /// Print JSON (for scripts; the shape is in the README) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Write the dead letters that now decode against the table's current schema into the table,
    /// exactly once (a replay ledger moves in the same commits; replaying again adds nothing), and
    /// report the ones that still fail with their new reason. Nothing is deleted from the
    /// dead-letter topic or table. Safe while `floe run` ingests the same table.
    Replay {
        #[command(flatten)]
        select: DeadLetterSelection,
        /// Dead letters per commit: each commit adds up to this many rows and moves the replay
        /// ledger past them, so an interrupted replay resumes after the last commit.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
    },
}

#[derive(clap::Args, Debug)]
struct DeadLetterSelection {
    /// Only dead letters whose source record's Kafka timestamp is at or after TIME: an RFC 3339
    /// time (`2026-12-01T10:00:00Z`) or a duration before now (`2h`, `3d`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only dead letters of this kind.
    #[arg(long, value_parser = floe::replay::parse_kind, value_name = "KIND",
          long_help = "Only dead letters of this kind: not-json, invalid-utf8, not-an-object, wrong-type, out-of-range, missing-required.")]
    kind: Option<floe::decode::RecordErrorKind>,
    /// Which destination to read when both `[dead_letter] topic` and `table` are configured
    /// (default: the table).
    #[arg(long, value_parser = ["topic", "table"])]
    from: Option<String>,
    /// `namespace.table`. Default: the configured table.
    #[arg(long)]
    table: Option<String>,
}

#[derive(Subcommand, Debug)]
enum CatalogCommand {
    /// Upgrade a catalog made by Iceberg Java before 1.5 (JDBC layout V0, no `iceberg_type`
    /// column) to layout V1, as Java's `jdbc.schema-version=V1` does. floe reads V0 as it is; this
    /// is only needed by tools that require V1 (pyiceberg's SqlCatalog).
    Migrate,
}

#[derive(Subcommand, Debug)]
enum TableCommand {
    /// Create a table from a Trino CREATE TABLE statement (`IF NOT EXISTS` supported).
    Create {
        /// The statement; omit it and use --file, or pass `-` to read standard input.
        sql: Option<String>,
        /// Read the statement from this file.
        #[arg(long, short = 'f', conflicts_with = "sql")]
        file: Option<PathBuf>,
    },
    /// Change a table with a Trino ALTER TABLE statement (ADD/DROP/RENAME COLUMN, ALTER COLUMN ...
    /// SET DATA TYPE / DROP NOT NULL, SET PROPERTIES partitioning = ...).
    Alter {
        /// The statement; `-` reads standard input.
        sql: String,
    },
    /// Show a table's schema with field ids, partition spec, snapshots and properties.
    Describe {
        /// `namespace.table`, or `table` in namespace `default`. Default: the configured table.
        name: Option<String>,
    },
    /// List the catalog's tables, one qualified name per line.
    List {
        /// Only this namespace.
        namespace: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// `namespace.table`. Default: the configured table, or every table of the catalog when none
    /// is configured.
    #[arg(long)]
    table: Option<String>,
    /// Print JSON (for scripts; the shape is in the README) instead of the aligned table.
    #[arg(long)]
    json: bool,
    /// Exit with status 3 when a pipeline lags by more than this many records on any partition.
    #[arg(long, value_name = "RECORDS")]
    max_lag: Option<u64>,
}

#[derive(clap::Args, Debug)]
struct MaintainArgs {
    /// `namespace.table`. Default: the configured table.
    #[arg(long, global = true)]
    table: Option<String>,
    /// Print what would change; change nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    #[command(subcommand)]
    task: MaintainTask,
}

#[derive(Subcommand, Debug)]
enum MaintainTask {
    /// Bin-pack small data files per partition into files near the target size and merge
    /// manifests (an Iceberg `replace` snapshot).
    Compact {
        /// Only partitions that received data within this period, e.g. `2d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Size of the compacted files, e.g. `128MiB`. Default: `commit.target_file_size`.
        #[arg(long, value_parser = parse_size)]
        target_file_size: Option<u64>,
    },
    /// Remove old snapshots and delete the files only they reached. The ledger stays.
    ExpireSnapshots {
        /// Snapshots older than this may go, e.g. `7d`. Default: the table's
        /// `history.expire.max-snapshot-age-ms`, else 1h. A branch's own retention wins.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Always keep this many of the latest snapshots of each branch. Default: the table's
        /// `history.expire.min-snapshots-to-keep`, else 1. A branch's own retention wins.
        #[arg(long)]
        retain_last: Option<usize>,
    },
    /// Remove the rows whose time column is older than the cutoff.
    Retention {
        /// The time column (timestamp, timestamptz or date).
        #[arg(long)]
        column: String,
        /// Keep this much, e.g. `30d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        keep: Duration,
    },
    /// Delete files under the table location that no metadata references.
    RemoveOrphans {
        /// Only files not modified for this long, e.g. `3d` (at least 1h).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    floe::config::parse_size(s)
}

#[derive(clap::Args, Debug)]
struct PublishArgs {
    /// Topic to send to. Default: the first of `source.topics`.
    #[arg(long, short = 't')]
    topic: Option<String>,
    /// Kafka bootstrap servers, overriding `kafka."bootstrap.servers"`.
    #[arg(long, short = 'b')]
    brokers: Option<String>,
    /// How many records (the default sends exactly one record, the seed's own).
    #[arg(long, short = 'n', default_value_t = 1)]
    count: u64,
    /// Records per second (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Make every K-th record malformed (not JSON, wrong type, missing field, out of range,
    /// invalid UTF-8, in turn).
    #[arg(long)]
    bad_every: Option<u64>,
    /// Id of the first record (the key, and the `id` and `integer` fields).
    #[arg(long, default_value_t = 1)]
    first_id: u64,
    /// Spread timestamps evenly over this period before now, e.g. `3d`.
    #[arg(long, value_parser = humantime::parse_duration)]
    spread: Option<Duration>,
    /// Create the topic with this many partitions if it does not exist.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Print every record sent.
    #[arg(long)]
    print: bool,
    /// How records are written: `seed` (the seed's field names), `camel` (camelCase field names,
    /// for `[decode] field_case = "camelCase"`) or `cloudevents` (each record the `data` of a
    /// CloudEvents JSON envelope, for `[decode] unnest = "/data"`).
    #[arg(long, default_value = "seed", value_parser = parse_shape)]
    shape: floe::sample::Shape,
}

fn parse_shape(s: &str) -> Result<floe::sample::Shape, String> {
    s.parse()
}

/// mimalloc's option numbers (`mi_option_e` in the mimalloc 3 header of libmimalloc-sys 0.1.49,
/// which Cargo.lock pins; its Rust bindings do not name these two).
const MI_OPTION_ARENA_EAGER_COMMIT: i32 = 4;
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// Memory freed is given back to the OS at once, and arenas are committed as they are used: with
/// mimalloc's defaults (10 ms purge delay, eagerly committed arenas) a loader reading a backlog
/// peaked at ~310 MiB RSS, with these at ~220 MiB (docs/benchmarks.md). MIMALLOC_* environment
/// variables still win.
fn tune_allocator() {
    for (option, name, value) in [
        (MI_OPTION_PURGE_DELAY, "MIMALLOC_PURGE_DELAY", 0),
        (MI_OPTION_ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 0),
    ] {
        if std::env::var_os(name).is_none() {
            // SAFETY: sets one of mimalloc's option values, which it reads when it next purges or
            // reserves memory; no memory is touched.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { message, code }) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// A failed command: the message for the user and the exit code (2: configuration or usage).
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn usage(message: impl ToString) -> Failure {
        Failure {
            message: message.to_string(),
            code: 2,
        }
    }
    fn runtime(message: impl ToString) -> Failure {
        Failure {
            message: message.to_string(),
            code: 1,
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::usage(e)
    }
}

async fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let env = |name: &str| std::env::var(name).ok();
    // Secret references (`${aws-secretsmanager:...}`) are fetched here, once.
    let mut config = match &cli.config {
        Some(path) => floe::secrets::load_config(path, &env).await?,
        None if std::path::Path::new("floe.toml").exists() => floe::secrets::load_config("floe.toml".as_ref(), &env).await?,
        None => Config::defaults(),
    };
    if let Some(dir) = &cli.data_dir {
        config.set_data_dir(dir.clone());
    }
    Ok(config)
}

/// The configuration a command works with. `needs_pipeline`: the command is about one pipeline
/// (its table, topics, ledger, dead letters), so with several `[[pipeline]]` blocks `--pipeline`
/// must say which; otherwise (only the catalog or Kafka is needed) the top level serves unless
/// `--pipeline` names a block.
fn pick(config: &Config, name: Option<&str>, needs_pipeline: bool) -> Result<Config, Failure> {
    if needs_pipeline || name.is_some() {
        config.select(name).map_err(Failure::usage)
    } else {
        Ok(config.clone())
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let all = load_config(&cli).await?;
    tracing::debug!(config = ?all, "configuration loaded");
    let name = cli.pipeline.as_deref();
    let needs_pipeline = match &cli.command {
        Command::Run | Command::Query { .. } | Command::Catalog(_) => false,
        Command::Table(TableCommand::Describe { name }) => name.is_none(),
        Command::Table(_) => false,
        Command::PublishSample(args) => args.topic.is_none(),
        Command::Maintain(args) => args.table.is_none(),
        Command::Status(args) => args.table.is_none(),
        Command::Skip { .. } | Command::DeadLetters(_) => true,
    };
    if let Command::Run = cli.command {
        let runs = match name {
            Some(_) => pick(&all, name, true)?,
            None => all,
        };
        return run_loader(runs).await;
    }
    let config = pick(&all, name, needs_pipeline)?;
    match cli.command {
        Command::Table(cmd) => table_command(&config, cmd).await,
        Command::PublishSample(args) => publish_sample(config, args).await,
        Command::Run => unreachable!("handled above"),
        Command::Query { sql } => run_query(&config, &sql).await,
        Command::Skip { topic, partition, offset, reason } => {
            let table = config.table_name().map_err(Failure::usage)?;
            let pipeline = config
                .pipeline_name()
                .ok_or_else(|| Failure::usage("no pipeline: set `pipeline` or kafka \"group.id\" in the config file"))?
                .to_owned();
            let catalog = Catalog::open(&config).await.map_err(Failure::runtime)?;
            let engine = floe::commit::CommitEngine::new(catalog, table);
            let mut skip = floe::commit::Skip {
                pipeline,
                tp: floe::ledger::TopicPartition::new(topic, partition),
                offset,
                reason,
            };
            match engine.commit(&mut skip).await.map_err(Failure::runtime)? {
                Ok(message) => {
                    println!("{message}");
                    Ok(())
                }
                Err(message) => Err(Failure::usage(message)),
            }
        }
        Command::Maintain(args) => maintain(&config, args).await,
        Command::Catalog(CatalogCommand::Migrate) => {
            let Catalog::Sql(mut catalog) = Catalog::open(&config).await.map_err(Failure::runtime)? else {
                return Err(Failure::usage("floe catalog migrate upgrades a SQL catalog; this config's [catalog] is not one"));
            };
            if catalog.migrate().await.map_err(Failure::runtime)? {
                println!("catalog {:?} ({}): upgraded to the JDBC V1 layout (column iceberg_type added)", catalog.name(), catalog.uri());
            } else {
                println!("catalog {:?} ({}): already has the JDBC V1 layout; nothing to do", catalog.name(), catalog.uri());
            }
            Ok(())
        }
        Command::Status(args) => status(&config, args).await,
        Command::DeadLetters(cmd) => dead_letters(&config, cmd).await,
    }
}

async fn dead_letters(config: &Config, cmd: DeadLettersCommand) -> Result<(), Failure> {
    use floe::replay::{DeadLetterSource, Filter, ReplayOptions};
    let select = match &cmd {
        DeadLettersCommand::List { select, .. } | DeadLettersCommand::Replay { select, .. } => select,
    };
    let table = match &select.table {
        Some(t) => floe::config::TableName::parse(t).map_err(Failure::usage)?,
        None => config.table_name().map_err(Failure::usage)?,
    };
    let pipeline = config
        .pipeline_name()
        .ok_or_else(|| Failure::usage("no pipeline: set `pipeline` or kafka \"group.id\" in the config file"))?
        .to_owned();
    let dl = &config.dead_letter;
    let source: DeadLetterSource =
        floe::replay::choose_source(dl.topic.as_deref(), dl.table.as_deref(), select.from.as_deref()).map_err(Failure::usage)?;
    let since_ms = select
        .since
        .as_deref()
        .map(|s| floe::replay::parse_since(s, chrono::Utc::now().timestamp_millis()))
        .transpose()
        .map_err(Failure::usage)?;
    let batch_size = match &cmd {
        DeadLettersCommand::Replay { batch_size, .. } => *batch_size as usize,
        DeadLettersCommand::List { .. } => 0,
    };
    let opts = ReplayOptions {
        pipeline,
        source,
        filter: Filter { since_ms, kind: select.kind },
        batch_size,
        kafka: config.kafka.clone(),
        target_file_size: config.commit.target_file_size,
    };
    let catalog = Catalog::open(config).await.map_err(Failure::runtime)?;
    let engine = floe::commit::CommitEngine::new(catalog, table);
    match cmd {
        DeadLettersCommand::List { json, .. } => {
            let report = floe::replay::list(&engine, &opts).await.map_err(Failure::runtime)?;
            if json {
                let text = serde_json::to_string_pretty(&report)
                    .map_err(|e| Failure::runtime(format!("cannot write the list as JSON: {e}")))?;
                println!("{text}");
            } else {
                print!("{report}");
            }
        }
        DeadLettersCommand::Replay { .. } => {
            let progress = floe::progress::Progress::new(floe::progress::Mode::detect(), "dead-letters replay", "dead letters", 0);
            let report = floe::replay::replay(&engine, &opts, &progress).await.map_err(Failure::runtime)?;
            print!("{report}");
        }
    }
    Ok(())
}

async fn status(config: &Config, args: StatusArgs) -> Result<(), Failure> {
    use floe::status::{StatusOptions, Verdict};
    let tables = match &args.table {
        Some(t) => Some(vec![floe::config::TableName::parse(t).map_err(Failure::usage)?]),
        None => None,
    };
    let catalog = Catalog::open(config).await.map_err(Failure::runtime)?;
    let opts = StatusOptions::from_config(config, tables, args.max_lag);
    let report = floe::status::status(&catalog, &opts).await.map_err(Failure::runtime)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::runtime(format!("cannot write the status as JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{report}");
    }
    match report.verdict() {
        Verdict::Ok => Ok(()),
        Verdict::Behind => Err(Failure {
            message: report.behind_summary().join("\nerror: "),
            code: 3,
        }),
        Verdict::Failed => Err(Failure::runtime(report.failures().join("\nerror: "))),
        Verdict::Incomplete => Err(Failure::runtime(format!(
            "the status is incomplete: {}",
            report.problems().join("; ")
        ))),
    }
}

async fn maintain(config: &Config, args: MaintainArgs) -> Result<(), Failure> {
    use floe::maintain::{compact, expire, orphans, retention};
    let table = match &args.table {
        Some(t) => floe::config::TableName::parse(t).map_err(Failure::usage)?,
        None => config.table_name().map_err(Failure::usage)?,
    };
    let catalog = Catalog::open(config).await.map_err(Failure::runtime)?;
    let engine = floe::commit::CommitEngine::new(catalog, table);
    let dry_run = args.dry_run;
    let fail = |e: floe::maintain::MaintainError| {
        if matches!(e, floe::maintain::MaintainError::Invalid { .. }) { Failure::usage(e) } else { Failure::runtime(e) }
    };
    let bar = |task: &str, unit: &'static str| floe::progress::Progress::new(floe::progress::Mode::detect(), format!("maintain {task}"), unit, 0);
    let report = match args.task {
        MaintainTask::Compact { since, target_file_size } => {
            let opts = compact::CompactOptions {
                target_file_size: target_file_size.unwrap_or(config.commit.target_file_size),
                since,
                dry_run,
            };
            compact::compact_with_progress(&engine, &opts, &bar("compact", "partitions rewritten")).await.map_err(fail)?.to_string()
        }
        MaintainTask::ExpireSnapshots { older_than, retain_last } => {
            let opts = expire::ExpireOptions { older_than, retain_last, dry_run };
            expire::expire_with_progress(&engine, &opts, &bar("expire-snapshots", "files deleted")).await.map_err(fail)?.to_string()
        }
        MaintainTask::Retention { column, keep } => {
            let opts = retention::RetentionOptions {
                column,
                keep,
                target_file_size: config.commit.target_file_size,
                dry_run,
            };
            retention::retention_with_progress(&engine, &opts, &bar("retention", "data files")).await.map_err(fail)?.to_string()
        }
        MaintainTask::RemoveOrphans { older_than } => {
            let opts = orphans::OrphanOptions { older_than, dry_run };
            orphans::remove_orphans_with_progress(&engine, &opts, &bar("remove-orphans", "files deleted")).await.map_err(fail)?.to_string()
        }
    };
    print!("{report}");
    Ok(())
}

async fn table_command(config: &Config, cmd: TableCommand) -> Result<(), Failure> {
    let catalog = Catalog::open(config).await.map_err(Failure::runtime)?;
    match cmd {
        TableCommand::Create { sql, file } => {
            let sql = match (sql, file) {
                (Some(s), None) if s == "-" => read_stdin()?,
                (Some(s), None) => s,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?,
                _ => return Err(Failure::usage("give the CREATE TABLE statement as an argument, with --file, or `-` for stdin")),
            };
            match table::create_from_sql(&catalog, &sql).await {
                Ok(Created::New(t)) => {
                    println!("created table {} in catalog {:?}", t.name, catalog.name());
                    print!("{}", table::describe(&t));
                    Ok(())
                }
                Ok(Created::Existed(t)) => {
                    println!("table {} already exists; left unchanged (IF NOT EXISTS)", t.name);
                    Ok(())
                }
                Err(e @ table::TableError::Ddl { .. }) => Err(Failure::usage(e)),
                Err(e) => Err(Failure::runtime(e)),
            }
        }
        TableCommand::Alter { sql } => {
            let sql = if sql == "-" { read_stdin()? } else { sql };
            let stmt = floe::ddl::parse_alter_table(&sql).map_err(|e| Failure::usage(e.render(&sql)))?;
            let name = floe::config::TableName::from_parts(&stmt.name);
            if stmt.if_exists && !catalog.table_exists(&name).await.map_err(Failure::runtime)? {
                println!("table {name} does not exist; nothing to do (IF EXISTS)");
                return Ok(());
            }
            let engine = floe::commit::CommitEngine::new(catalog, name.clone());
            let mut alter = floe::alter::Alter::new(stmt.action);
            match engine.commit(&mut alter).await.map_err(Failure::runtime)? {
                Ok(message) => {
                    println!("table {name}: {message}");
                    Ok(())
                }
                Err(message) => Err(Failure::usage(format!("table {name}: {message}"))),
            }
        }
        TableCommand::Describe { name } => {
            let name = match name {
                Some(n) => floe::config::TableName::parse(&n).map_err(Failure::usage)?,
                None => config.table_name().map_err(Failure::usage)?,
            };
            let t = catalog.load(&name).await.map_err(Failure::runtime)?;
            print!("{}", table::describe(&t));
            Ok(())
        }
        TableCommand::List { namespace } => {
            for t in catalog.list_tables(namespace.as_deref()).await.map_err(Failure::runtime)? {
                println!("{t}");
            }
            Ok(())
        }
    }
}

#[cfg(feature = "query")]
async fn run_query(config: &Config, sql: &str) -> Result<(), Failure> {
    let catalog = Catalog::open(config).await.map_err(Failure::runtime)?;
    let batches = floe::query::query(&catalog, sql).await.map_err(|e| match e {
        floe::query::QueryError::NotReadOnly { .. } | floe::query::QueryError::SeveralStatements { .. } => {
            Failure::usage(e)
        }
        other => Failure::runtime(other),
    })?;
    println!("{}", floe::query::format(&batches));
    Ok(())
}

#[cfg(not(feature = "query"))]
async fn run_query(_: &Config, _: &str) -> Result<(), Failure> {
    Err(Failure::usage("this floe was built without the `query` feature (cargo build --features query)"))
}

/// `floe run`: every pipeline of the configuration (or the one `--pipeline` picked), each its own
/// loader, sharing the HTTP listener and the shutdown signal.
async fn run_loader(config: Config) -> Result<(), Failure> {
    if let Ok(limit) = std::env::var(floe::write::ENV_STAGED_AGE_LIMIT) {
        let limit = humantime::parse_duration(limit.trim())
            .map_err(|e| Failure::usage(format!("{}={limit:?}: {e}; give a duration such as \"2s\"", floe::write::ENV_STAGED_AGE_LIMIT)))?;
        floe::write::lower_staged_age_limit(limit).map_err(Failure::usage)?;
    }
    // Handlers first: a stop request during the startup checks ends the process cleanly too.
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let listen = config.http.listen.clone();
    let several = !config.pipelines.is_empty();
    let loaders = tokio::select! {
        prepared = floe::run::prepare(&config) => prepared.map_err(|p| {
            let message = if several { format!("pipeline {:?}: {}", p.pipeline, p.error) } else { p.error.to_string() };
            match p.error {
                floe::loader::LoadError::Config(_) => Failure::usage(message),
                _ => Failure::runtime(message),
            }
        })?,
        () = &mut shutdown => return Ok(()),
    };
    let http = match listen {
        Some(listen) => Some(floe::http::start(&listen, loaders.iter().map(|l| l.live()).collect()).await.map_err(Failure::usage)?),
        None => None,
    };
    let outcome = floe::run::run(loaders, config.on_pipeline_failure, &config.data_dir, shutdown).await;
    if let Some(http) = http {
        http.stop().await;
    }
    match outcome.failed.as_slice() {
        [] => Ok(()),
        [one] if !several => Err(Failure::runtime(&one.error)),
        failed => Err(Failure::runtime(format!(
            "{} of {} pipelines stopped on an error:\n{}",
            failed.len(),
            failed.len() + outcome.finished.len(),
            failed.iter().map(|p| format!("pipeline {:?}: {}", p.pipeline, p.error)).collect::<Vec<_>>().join("\n")
        ))),
    }
}

/// Installs SIGTERM and SIGINT handlers now; the future resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without handlers the signals simply end the process: nothing to wait for.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

fn read_stdin() -> Result<String, Failure> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| Failure::usage(format!("cannot read the statement from stdin: {e}")))?;
    Ok(s)
}

async fn publish_sample(mut config: Config, args: PublishArgs) -> Result<(), Failure> {
    if let Some(b) = &args.brokers {
        config.kafka.set("bootstrap.servers", b);
    }
    let topic = args
        .topic
        .or_else(|| config.source.topics.first().cloned())
        .ok_or_else(|| Failure::usage("no topic: pass --topic or set `source.topics` in the config file"))?;
    if args.partitions < 1 {
        return Err(Failure::usage("--partitions must be at least 1"));
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(Failure::usage("--rate must be a positive number of records per second"));
    }
    floe::kafka::check_reachable(&config.kafka, Duration::from_secs(15))
        .await
        .map_err(Failure::runtime)?;
    floe::kafka::ensure_topic(&config.kafka, &topic, args.partitions, 1)
        .await
        .map_err(Failure::runtime)?;
    let opts = PublishOptions {
        topic,
        count: args.count,
        rate: args.rate,
        bad_every: args.bad_every,
        first_id: args.first_id,
        spread: args.spread.unwrap_or_default(),
        print: args.print,
        shape: args.shape,
    };
    if opts.bad_every.is_some() && opts.shape != floe::sample::Shape::Seed {
        return Err(Failure::usage("--bad-every makes malformed records only in the seed shape; drop --shape or --bad-every"));
    }
    let props = config.kafka.clone();
    // A bar for many records; the one seed record needs none.
    let mode = if opts.count > 1 { floe::progress::Mode::detect() } else { floe::progress::Mode::Hidden };
    let report = tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let progress = floe::progress::Progress::new(mode, "publish-sample", "records", opts.count);
        publish(&props, &opts, chrono::Utc::now(), &mut out, &progress).map(|r| (r, opts))
    })
    .await
    .map_err(|e| Failure::runtime(format!("publisher task failed: {e}")))?;
    let (report, opts) = report.map_err(Failure::runtime)?;
    eprintln!(
        "sent {} records to {} ({} malformed) in {:.2}s",
        report.sent,
        opts.topic,
        report.bad,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

//! The `floe` command: parses the command line, reads the configuration, starts logging and calls
//! into the library. Everything else lives in the library, where tests call it directly.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
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
    /// Log filter, e.g. `info`, `debug`, `floe=debug,rdkafka=warn`.
    #[arg(long, global = true, env = "FLOE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
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
        config.data_dir = dir.clone();
    }
    Ok(config)
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let config = load_config(&cli).await?;
    tracing::debug!(?config, "configuration loaded");
    match cli.command {
        Command::Table(cmd) => table_command(&config, cmd).await,
        Command::PublishSample(args) => publish_sample(config, args).await,
        Command::Run => run_loader(config).await,
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
            let mut catalog = Catalog::open(&config).await.map_err(Failure::runtime)?;
            if catalog.migrate().await.map_err(Failure::runtime)? {
                println!("catalog {:?} ({}): upgraded to the JDBC V1 layout (column iceberg_type added)", catalog.name(), catalog.uri());
            } else {
                println!("catalog {:?} ({}): already has the JDBC V1 layout; nothing to do", catalog.name(), catalog.uri());
            }
            Ok(())
        }
        Command::Status(args) => status(&config, args).await,
    }
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
    let report = match args.task {
        MaintainTask::Compact { since, target_file_size } => {
            let opts = compact::CompactOptions {
                target_file_size: target_file_size.unwrap_or(config.commit.target_file_size),
                since,
                dry_run,
            };
            compact::compact(&engine, &opts).await.map_err(fail)?.to_string()
        }
        MaintainTask::ExpireSnapshots { older_than, retain_last } => {
            let opts = expire::ExpireOptions { older_than, retain_last, dry_run };
            expire::expire_snapshots(&engine, &opts).await.map_err(fail)?.to_string()
        }
        MaintainTask::Retention { column, keep } => {
            let opts = retention::RetentionOptions {
                column,
                keep,
                target_file_size: config.commit.target_file_size,
                dry_run,
            };
            retention::retention(&engine, &opts).await.map_err(fail)?.to_string()
        }
        MaintainTask::RemoveOrphans { older_than } => {
            let opts = orphans::OrphanOptions { older_than, dry_run };
            orphans::remove_orphans(&engine, &opts).await.map_err(fail)?.to_string()
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

async fn run_loader(config: Config) -> Result<(), Failure> {
    // Handlers first: a stop request during the startup checks ends the process cleanly too.
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let loader = tokio::select! {
        prepared = floe::loader::Loader::prepare(config) => prepared.map_err(|e| match e {
            floe::loader::LoadError::Config(_) => Failure::usage(e),
            other => Failure::runtime(other),
        })?,
        () = &mut shutdown => return Ok(()),
    };
    loader.run(shutdown).await.map_err(Failure::runtime)?;
    Ok(())
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
    };
    let props = config.kafka.clone();
    let report = tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        publish(&props, &opts, chrono::Utc::now(), &mut out).map(|r| (r, opts))
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

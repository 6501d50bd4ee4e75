//! `floe table create/describe/list` on the embedded SQLite catalog and on PostgreSQL.

mod common;

const SEED: &str = "CREATE TABLE test_table (
   bool BOOLEAN, floating DOUBLE, integer BIGINT, string VARCHAR,
   bools ARRAY(BOOLEAN), floatings ARRAY(DOUBLE), integers ARRAY(BIGINT), strings ARRAY(VARCHAR),
   string_map MAP(VARCHAR, VARCHAR), nested ROW(key VARCHAR, value BIGINT),
   timestamp TIMESTAMP(6) WITH TIME ZONE)
WITH (format = 'PARQUET', partitioning = ARRAY['day(timestamp)']);";

fn check_catalog(config: &std::path::Path) {
    let cfg = config.to_str().unwrap();
    let out = common::floe_ok(&["--config", cfg, "table", "create", SEED]);
    assert!(out.contains("created table default.test_table"), "{out}");
    // Top-level columns get ids 1..=11 in order, as Trino assigns them.
    for (id, name, ty) in [
        (1, "bool", "boolean"),
        (2, "floating", "double"),
        (3, "integer", "long"),
        (4, "string", "string"),
        (11, "timestamp", "timestamptz"),
    ] {
        let line = format!("{id:>4}  {name}  {ty}");
        assert!(out.contains(&line), "missing {line:?} in\n{out}");
    }
    assert!(out.contains("timestamp_day  day(timestamp)"), "{out}");
    assert!(out.contains("write.parquet.compression-codec = zstd"), "{out}");
    assert!(out.contains("format    v2"), "{out}");

    let described = common::floe_ok(&["--config", cfg, "table", "describe", "default.test_table"]);
    assert!(described.contains("snapshots 0"), "{described}");
    assert!(described.contains("element  boolean"), "{described}");

    let listed = common::floe_ok(&["--config", cfg, "table", "list"]);
    assert_eq!(listed.lines().collect::<Vec<_>>(), vec!["default.test_table"]);

    let again = common::floe(&["--config", cfg, "table", "create", SEED]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("default.test_table already exists"), "{err}");

    let if_not_exists = SEED.replace("CREATE TABLE test_table", "CREATE TABLE IF NOT EXISTS test_table");
    let out = common::floe_ok(&["--config", cfg, "table", "create", &if_not_exists]);
    assert!(out.contains("already exists; left unchanged"), "{out}");
    let after = common::floe_ok(&["--config", cfg, "table", "describe", "test_table"]);
    assert_eq!(after, described, "IF NOT EXISTS changed nothing");
}

#[test]
fn seed_table_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), &format!("data_dir = {:?}\n", dir.path()));
    check_catalog(&cfg);
    assert!(dir.path().join("catalog.db").exists());
    let meta = dir.path().join("warehouse/default/test_table/metadata");
    let files: Vec<_> = std::fs::read_dir(&meta).unwrap().collect();
    assert_eq!(files.len(), 1, "one metadata file");
}

#[test]
fn seed_table_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = common::unique("floe");
    let cfg = common::write_config(
        dir.path(),
        &format!(
            "data_dir = {:?}\n[catalog]\nuri = {:?}\nname = {catalog:?}\n",
            dir.path(),
            common::postgres()
        ),
    );
    check_catalog(&cfg);
    assert!(!dir.path().join("catalog.db").exists(), "the SQLite default was not used");
}

#[test]
fn bad_statement_points_at_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), &format!("data_dir = {:?}\n", dir.path()));
    let out = common::floe(&[
        "--config", cfg.to_str().unwrap(), "table", "create",
        "CREATE TABLE t (a BIGINT,\n  b TINYINT)",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");
    assert!(err.contains("TINYINT"), "{err}");
    assert!(err.contains('^'), "a caret under the token: {err}");
    let listed = common::floe_ok(&["--config", cfg.to_str().unwrap(), "table", "list"]);
    assert!(listed.is_empty(), "nothing was created: {listed}");
}

#[test]
fn unreachable_catalog_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(
        dir.path(),
        "[catalog]\nuri = \"postgresql://floe:topsecret@127.0.0.1:9/floe\"\n",
    );
    let out = common::floe(&["--config", cfg.to_str().unwrap(), "table", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:9"), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("topsecret"), "password leaked: {err}");
}

#[test]
fn config_errors_exit_2_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write_config(dir.path(), "[comit]\ninterval = \"5s\"\n");
    let out = common::floe(&["--config", cfg.to_str().unwrap(), "table", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `commit`?"), "{err}");
}

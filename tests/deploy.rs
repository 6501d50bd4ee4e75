//! The deployment examples in docs/deploy/ carry floe configurations; floe itself must accept
//! them (tests/py/test_deploy.py checks the YAML and the systemd unit around them).

use std::path::{Path, PathBuf};

use floe::config::{CatalogUri, Config};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy")
}

/// Secrets as the Secret / EnvironmentFile would provide them.
fn env(name: &str) -> Option<String> {
    match name {
        "KAFKA_PASSWORD" => Some("kafka-secret".into()),
        "PGPASSWORD" => Some("pg-secret".into()),
        _ => None,
    }
}

/// The `floe.toml: |` block scalar of the ConfigMap in kubernetes.yaml (the Python test checks
/// with a YAML parser that this is what the ConfigMap holds).
fn configmap_toml(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "floe.toml: |");
    let header = lines.next().expect("kubernetes.yaml has a ConfigMap key `floe.toml: |`");
    let key_indent = header.len() - header.trim_start().len();
    let mut out = String::new();
    let mut indent = None;
    for line in lines {
        if line.trim().is_empty() {
            out.push('\n');
            continue;
        }
        let this = line.len() - line.trim_start().len();
        if this <= key_indent {
            break;
        }
        let strip = *indent.get_or_insert(this);
        out.push_str(&line[strip.min(this)..]);
        out.push('\n');
    }
    out
}

/// Parses a deployment config as `floe` does.
fn parse(text: &str, origin: &str) -> Config {
    Config::parse(text, origin, &env).unwrap_or_else(|e| panic!("{origin}: {e}"))
}

#[test]
fn the_kubernetes_configmap_is_a_valid_floe_config() {
    let yaml = std::fs::read_to_string(deploy_dir().join("kubernetes.yaml")).unwrap();
    let text = configmap_toml(&yaml);
    assert!(text.contains("[kafka]"), "extracted:\n{text}");
    let c = parse(&text, "kubernetes.yaml ConfigMap floe-config");
    assert_eq!(c.http.listen.as_deref(), Some("0.0.0.0:9100"), "the probes call port 9100 on every interface");
    assert_eq!(c.pipeline_name(), Some("events-loader"));
    assert_eq!(c.source.topics, vec!["events"]);
    assert_eq!(c.table_name().unwrap().to_string(), "analytics.events");
    // Secrets came from the environment (the Secret), not from the file.
    assert_eq!(c.kafka.get("sasl.password"), Some("kafka-secret"));
    assert!(!text.contains("kafka-secret") && !text.contains("pg-secret"));
    match c.catalog_uri() {
        CatalogUri::Postgres(uri) => assert!(uri.contains(":pg-secret@"), "{uri}"),
        other => panic!("replicas need a shared catalog, not {other}"),
    }
    // The mounts of the Deployment: data_dir and the shared warehouse volume.
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/floe"));
    assert_eq!(c.warehouse(), "file:///warehouse");
    // Without the Secret, floe refuses to start and names the variable.
    let e = Config::parse(&text, "k8s", &|_| None).unwrap_err().to_string();
    assert!(e.contains("KAFKA_PASSWORD") || e.contains("PGPASSWORD"), "{e}");
}

#[test]
fn the_systemd_config_is_a_valid_floe_config() {
    let path = deploy_dir().join("floe.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = parse(&text, "docs/deploy/floe.toml");
    let listen = c.http.listen.as_deref().expect("the unit's config sets [http] listen");
    assert!(listen.parse::<std::net::SocketAddr>().is_ok(), "{listen}");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/floe"), "the unit's StateDirectory");
    assert_eq!(c.kafka.get("sasl.password"), Some("kafka-secret"));
    assert!(matches!(c.catalog_uri(), CatalogUri::Postgres(_)));
}

"""The deployment examples in docs/deploy/ stay valid (issue 16, item 5): the Kubernetes manifests
parse and hang together (the Deployment's probes, ports, mounts and secrets refer to what the same
file defines), and the systemd unit runs `floe run --config` on the config shipped beside it.
tests/deploy.rs has floe itself load the configurations both carry.
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from loader_harness import REPO

DEPLOY = REPO / "docs" / "deploy"
HTTP_PORT = 9100


def manifests() -> dict[tuple[str, str], dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d is not None]
    by_kind = {}
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), f"not a Kubernetes object: {d}"
        key = (d["kind"], d["metadata"]["name"])
        assert key not in by_kind, f"{key} defined twice"
        by_kind[key] = d
    return by_kind


def the(objects: dict, kind: str) -> dict:
    found = [o for (k, _), o in objects.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_kubernetes_deployment_hangs_together():
    objects = manifests()
    deployment = the(objects, "Deployment")
    assert deployment["apiVersion"] == "apps/v1"
    spec = deployment["spec"]
    assert spec["replicas"] >= 2, "the example runs several replicas of one pipeline"
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), "selector matches the pods"
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 30, "floe commits its buffer on SIGTERM"
    (container,) = pod["containers"]
    assert container["args"][:1] == ["run"] and "--config" in container["args"], container["args"]
    config_path = Path(container["args"][container["args"].index("--config") + 1])

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.get("http") == HTTP_PORT, ports
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe}: {get}"
        assert get["port"] in ("http", HTTP_PORT) and ports.get(get["port"], get["port"]) == HTTP_PORT, f"{probe}: {get}"

    # Secrets come from the Secret in this file, as environment variables for ${NAME}.
    secret_refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    assert secret_refs, "the secrets come from a Secret"
    for name in secret_refs:
        secret = objects.get(("Secret", name))
        assert secret is not None, f"envFrom refers to Secret {name}, which the file does not define"
        keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
        assert {"KAFKA_PASSWORD", "PGPASSWORD"} <= keys, keys

    # Every volume refers to something the file defines; every mount to a volume.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for v in volumes.values():
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in objects, v
        if "secret" in v:
            assert ("Secret", v["secret"]["secretName"]) in objects, v
        if "persistentVolumeClaim" in v:
            claim = objects.get(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
            assert claim is not None, v
            assert "ReadWriteMany" in claim["spec"]["accessModes"], "every replica mounts the warehouse"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert all(name in volumes for name in mounts.values()), (mounts, list(volumes))

    # The config file the container reads is the ConfigMap's, mounted where --config points.
    config_volume = volumes[mounts[str(config_path.parent)]]
    configmap = objects[("ConfigMap", config_volume["configMap"]["name"])]
    toml_text = configmap["data"][config_path.name]
    # floe's own config, with the directories the pod mounts and the listener the probes call.
    import tomllib

    config = tomllib.loads(toml_text)
    assert config["http"]["listen"] == f"0.0.0.0:{HTTP_PORT}", config.get("http")
    assert config["data_dir"] in mounts, f"data_dir {config['data_dir']} is not a mounted volume: {mounts}"
    assert config["catalog"]["warehouse"] in mounts, f"the warehouse is not a mounted volume: {mounts}"
    assert config["catalog"]["uri"].startswith("postgresql://"), "replicas share one catalog"
    for secret_key in ("KAFKA_PASSWORD", "PGPASSWORD"):
        assert "${" + secret_key + "}" in toml_text, f"the config takes {secret_key} from the environment"
    # The text tests/deploy.rs extracts and has floe parse is the ConfigMap's, exactly.
    assert extract_block(DEPLOY / "kubernetes.yaml", "floe.toml") == toml_text


def extract_block(path: Path, key: str) -> str:
    """The `key: |` block scalar as tests/deploy.rs reads it (indentation removed)."""
    lines = path.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == f"{key}: |")
    key_indent = len(lines[start]) - len(lines[start].lstrip())
    out, indent = [], None
    for line in lines[start + 1:]:
        if not line.strip():
            out.append("")
            continue
        this = len(line) - len(line.lstrip())
        if this <= key_indent:
            break
        indent = this if indent is None else indent
        out.append(line[min(indent, this):])
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((DEPLOY / "floe.service").read_text())
    return parser


def test_systemd_unit_runs_floe_with_the_shipped_config():
    u = unit()
    assert set(u.sections()) == {"Unit", "Service", "Install"}, u.sections()
    service = u["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "floe" and Path(argv[0]).is_absolute(), argv
    assert argv[1:3] == ["run", "--config"] and len(argv) == 4, argv
    config_path = Path(argv[3])
    assert config_path.name == "floe.toml" and (DEPLOY / config_path.name).exists()
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split(), "a configuration error (exit 2) is not retried"
    assert service["EnvironmentFile"].startswith("/"), "secrets come from an environment file"
    import tomllib

    config = tomllib.loads((DEPLOY / config_path.name).read_text())
    state = "/var/lib/" + service["StateDirectory"]
    assert config["data_dir"] == state == service["WorkingDirectory"], (config["data_dir"], state)
    assert state in service["ReadWritePaths"].split(), "floe may write its data directory"
    assert config["catalog"]["warehouse"].startswith(state), "the local warehouse is writable under ProtectSystem=strict"
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_passes_systemd_analyze(tmp_path, floe_bin):
    """systemd's own checker, on a copy whose ExecStart is the floe under test."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian package systemd)"
    text = (DEPLOY / "floe.service").read_text().replace("/usr/local/bin/floe", floe_bin)
    copy = tmp_path / "floe.service"
    copy.write_text(text)
    p = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    # It names the file in every complaint (unknown keys, values it cannot parse), and exits 0 anyway.
    own = [l for l in (p.stdout + p.stderr).splitlines() if "floe.service" in l]
    assert p.returncode == 0 and not own, f"systemd-analyze verify (exit {p.returncode}):\n{p.stdout}{p.stderr}"

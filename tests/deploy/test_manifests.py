"""The Kubernetes manifests under deploy/ (docs/deploy.md): each one valid against the Kubernetes schema pinned here,
offline (kubernetes-validate ships the schemas; the network is refused while it runs), and each one true to the
code: every container runs a real `glucobridge` command with real flags, every variable it sets is one the
settings read, every secret it names is documented, every probe path is a route of the app, every name it refers
to (ConfigMap, Deployment, port, label selector) exists.

No cluster and no kustomize binary are needed: the kustomizations are read as lists of files, which is all they use.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.cli import build_parser
from bff.settings import Settings
from bff.smart.config import SmartSettings
from bff.store.db import Store

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOC = ROOT / "docs" / "deploy.md"
#: The Kubernetes version the manifests are checked against (its schema ships with kubernetes-validate). The
#: oldest still supported upstream when this was written; docs/deploy.md names it.
KUBERNETES = "1.31.0"
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
#: Variables set for a library, not for glucobridge's settings: matplotlib's cache (read-only root file system).
LIBRARY_VARIABLES = {"MPLCONFIGDIR"}


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in documents():
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, spec in pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield name, spec, container


class Recording(Mapping[str, str]):
    """An empty environment that remembers every name asked of it."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variables_read() -> set[str]:
    """The environment variables glucobridge's settings read (bff/settings.py, bff/smart/config.py)."""
    env = Recording()
    Settings.from_env(env)
    SmartSettings.from_env(env)
    return env.asked


# MARK: the files


def test_every_manifest_is_listed_by_a_kustomization_and_every_listed_file_exists() -> None:
    listed: set[Path] = set()
    for kustomization in kustomizations():
        doc = yaml.safe_load(kustomization.read_text())
        assert doc["kind"] in KUSTOMIZE_KINDS, kustomization
        for entry in doc.get("resources", []):
            path = (kustomization.parent / entry).resolve()
            assert path.is_file(), f"{kustomization.relative_to(ROOT)} lists {entry}, which does not exist"
            listed.add(path)
    orphans = [str(p.relative_to(ROOT)) for p in manifest_files() if p.resolve() not in listed]
    assert not orphans, f"not in any kustomization.yaml: {orphans}"
    assert (DEPLOY / "base" / "kustomization.yaml").is_file()


def test_the_pinned_kubernetes_schema_ships_with_the_package() -> None:
    assert KUBERNETES in kubernetes_validate.utils.all_versions()


@pytest.fixture(name="offline")
def fx_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection can be opened: the schemas must come from the installed package."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_each_manifest_is_valid_for_the_pinned_kubernetes_version(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, path
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # strict: an unknown field is an error
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {exc.message} "
                        f"at {'.'.join(str(p) for p in exc.path)}")  # fmt: skip


def test_the_validator_does_refuse_a_wrong_manifest() -> None:
    """The check above is a real one: a misspelt field and a wrong type are both refused."""
    doc = yaml.safe_load((DEPLOY / "base" / "app-service.yaml").read_text())
    doc["spec"]["portz"] = doc["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    doc = yaml.safe_load((DEPLOY / "base" / "app-hpa.yaml").read_text())
    doc["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


# MARK: true to the code


def test_each_container_runs_a_real_glucobridge_command_with_real_flags() -> None:
    parser = build_parser()
    seen = set()
    for name, _, container in containers():
        assert container["command"] == ["glucobridge"], name
        args = container["args"]
        try:
            parsed = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{name}: `glucobridge {' '.join(args)}` is not a command the CLI accepts")
        seen.add(parsed.handler.__name__)
    # The processes the deployment is made of (issue 13): the app, the job worker, the outbox worker, the schema.
    assert {"cmd_serve", "cmd_worker", "cmd_work", "cmd_db"} <= seen, seen


def test_every_variable_set_is_one_the_settings_read() -> None:
    known = variables_read() | LIBRARY_VARIABLES
    assert {"DATABASE_URL", "REDIS_URL", "SITES_DIR", "SMART_BACKEND_KEY_FILE"} <= known  # the recorder works
    for config in by_kind("ConfigMap"):
        if config["metadata"]["name"] == "glucobridge-config":
            unknown = set(config["data"]) - known
            assert not unknown, f"ConfigMap glucobridge-config sets variables nothing reads: {unknown}"
    for name, _, container in containers():
        unknown = {e["name"] for e in container.get("env", [])} - known
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


def test_secrets_are_referenced_never_given_and_each_is_documented() -> None:
    assert not by_kind("Secret"), "a Secret with values in the repository"
    doc = DOC.read_text()
    referenced: set[tuple[str, str | None]] = set()
    for name, spec, container in containers():
        for env in container.get("env", []):
            secret_like = re.search(r"KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL|REDIS_URL", env["name"])
            assert "value" not in env or not secret_like, f"{name}: {env['name']} given by value"
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                referenced.add((ref["name"], ref["key"]))
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                referenced.add((volume["secret"]["secretName"], None))
    assert referenced
    for secret, key in sorted(referenced, key=str):
        assert f"`{secret}`" in doc, f"docs/deploy.md does not name the Secret {secret}"
        if key:
            assert f"`{key}`" in doc, f"docs/deploy.md does not name the key {key} of the Secret {secret}"


def test_key_files_and_site_files_are_where_the_volumes_are_mounted() -> None:
    config = next(c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "glucobridge-config")["data"]
    for name, spec, container in containers():
        if container["args"][0] in ("db",):
            continue
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert volumes[mounts[config["SITES_DIR"]]]["configMap"]["name"] == "glucobridge-sites", name
        for variable in ("SMART_BACKEND_KEY_FILE",):
            folder = str(Path(config[variable]).parent)
            assert folder in mounts, (name, variable)
            assert "secret" in volumes[mounts[folder]], (name, variable)
        assert config["MPLCONFIGDIR"].startswith("/tmp/"), name
        assert "/tmp" in mounts, name  # the root file system is read-only: /tmp is a volume


@pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning")  # as tests/web does
@pytest.mark.filterwarnings("ignore:Deprecated 'query' parameter:DeprecationWarning")
def test_probe_paths_are_routes_of_the_app(tmp_path: Path) -> None:
    from app.web.app import create_app  # noqa: PLC0415

    store = Store(Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", secret_key="s" * 32))
    try:
        app = create_app(store.settings, store=store)
        paths = {route.path for route in app.routes}
    finally:
        store.dispose()
    probed = 0
    for name, _, container in containers():
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            spec = container.get(probe)
            if spec and "httpGet" in spec:
                assert spec["httpGet"]["path"] in paths, (name, probe, spec["httpGet"]["path"])
                probed += 1
    assert probed >= 3


def test_names_referred_to_exist() -> None:
    config_maps = {c["metadata"]["name"] for c in by_kind("ConfigMap")}
    deployments = {d["metadata"]["name"]: d for d in by_kind("Deployment")}
    for name, spec, container in containers():
        ports = {p["name"] for p in container.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            handler = container.get(probe, {})
            port = (handler.get("httpGet") or handler.get("tcpSocket") or {}).get("port")
            assert port is None or port in ports, (name, probe, port)
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps, name
        mounted = {m["name"] for m in container.get("volumeMounts", [])}
        assert mounted <= {v["name"] for v in spec.get("volumes", [])}, name
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (name, volume)
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert "memory" in resources["limits"], name
    for deployment in deployments.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for service in by_kind("Service"):
        selector = service["spec"]["selector"]
        matched = [
            d for d in deployments.values() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, (service["metadata"]["name"], selector, pod_labels)
        ports = {p["name"] for c in matched[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)
    for hpa in by_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment", target
        assert target["name"] in deployments, target
        requests = deployments[target["name"]]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert "cpu" in requests  # a CPU utilisation target needs a CPU request

"""deploy/kubernetes/ as a cluster would take it: core kinds against Kubernetes' own
schemas (kubernetes-validate), the Gateway API Inference Extension's kinds against its
pinned release (tests/deploy/gie.py), modeld's config through modeld's own loader, and
the references between them (the pool finds the hosts, the route finds the pool, the
picker finds its config)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from modeld.core.config import Config, parse_config
from modeld.core.config_checks import check_fits
from tests.deploy.gie import (
    GIE_RELEASE,
    EndpointPickerConfig,
    HTTPRoute,
    InferencePool,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
# The release's own CRD manifests, where a folder of them is at hand: MODELD_GIE_CRDS,
# else shared/crds beside the checkout (this repository vendors none: see its README).
CRDS = Path(os.environ.get("MODELD_GIE_CRDS") or ROOT.parent / "shared" / "crds")
# The oldest Kubernetes GIE v1 supports and the newest kubernetes-validate knows.
KUBERNETES = ["1.31.0", kubernetes_validate.latest_version()]
CORE_GROUPS = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1"}
GIE_KINDS: dict[str, type[BaseModel]] = {"InferencePool": InferencePool, "HTTPRoute": HTTPRoute}
# One node's GPUs as the DaemonSet asks for them, each an 80 GB card.
NODE_GPU_GB = 80.0


def documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in deploy/kubernetes/*.yaml, with where it is."""
    for path in sorted(DEPLOY.glob("*.yaml")):
        for number, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                yield f"{path.name}#{number} {doc.get('kind')}", doc


ALL = dict(documents())


def one(kind: str, name: str) -> dict[str, Any]:
    """The object of that kind and name."""
    found = [d for d in ALL.values() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """A pod template's container by name."""
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def mounted(pod: dict[str, Any], box: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume a container has mounted at `path` (or above it)."""
    mounts = [
        m
        for m in box["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"{box['name']}: nothing mounted at {path}"
    wanted = max(mounts, key=lambda m: len(m["mountPath"]))["name"]
    return next(v for v in pod["spec"]["volumes"] if v["name"] == wanted)


def host_config() -> Config:
    """modeld.toml from the hosts' ConfigMap, through modeld's own loader."""
    text = one("ConfigMap", "modeld-config")["data"]["modeld.toml"]
    return parse_config(tomllib.loads(text), "modeld-config/modeld.toml", text)


def test_every_object_is_one_this_suite_checks() -> None:
    """No manifest escapes the checks below: each is a core kind or a GIE kind."""
    assert ALL, "no manifests"
    for where, doc in ALL.items():
        assert doc["apiVersion"] in CORE_GROUPS or doc["kind"] in GIE_KINDS, where


@pytest.mark.parametrize("version", KUBERNETES)
def test_core_kinds_follow_the_kubernetes_schemas(version: str) -> None:
    """ConfigMaps, the DaemonSet, the EPP's Deployment, Service and RBAC validate
    strictly (no unknown field) against that Kubernetes version's schemas."""
    for where, doc in ALL.items():
        if doc["apiVersion"] in CORE_GROUPS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


def test_gie_kinds_follow_the_pinned_release() -> None:
    """The InferencePool and HTTPRoute validate against GIE's release, and the EPP's
    configuration as its loader would take it."""
    for doc in ALL.values():
        if doc["kind"] in GIE_KINDS:
            GIE_KINDS[doc["kind"]].model_validate(doc)
    text = one("ConfigMap", "modeld-epp-config")["data"]["epp-config.yaml"]
    EndpointPickerConfig.model_validate(yaml.safe_load(text))


def crd_schema(folder: Path, kind: str) -> dict[str, Any] | None:
    """A CRD's served v1 schema for `kind` from a folder of CRD manifests, if there."""
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            if doc["spec"]["names"]["kind"] == kind:
                for served in doc["spec"]["versions"]:
                    if served["name"] == "v1":
                        schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
                        return schema
    return None


@pytest.mark.skipif(
    not CRDS.is_dir(),
    reason=f"no folder of GIE {GIE_RELEASE} and Gateway API CRDs ({CRDS}, MODELD_GIE_CRDS)",
)
def test_gie_kinds_follow_the_release_crds() -> None:
    """Where the release's CRD manifests are at hand (a folder of their YAML files),
    the InferencePool and HTTPRoute also validate against their OpenAPI schemas."""
    for kind in GIE_KINDS:
        schema = crd_schema(CRDS, kind)
        assert schema is not None, f"{CRDS}: no CRD for {kind}"
        for doc in ALL.values():
            if doc["kind"] == kind:
                jsonschema.validate(doc, schema)


def test_the_pool_selects_the_hosts_on_the_gateways_port() -> None:
    """The InferencePool's selector matches the DaemonSet's pods, its target port is
    the port modeld-gateway listens on, and the probes and the picker's scrapes need no
    key (the model-server families alone: the gateway's own name every key)."""
    pool = one("InferencePool", "modeld")["spec"]
    pod = one("DaemonSet", "modeld")["spec"]["template"]
    assert pool["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    config = host_config()
    port = int(config.gateway.listen.rsplit(":", 1)[1])
    assert [p["number"] for p in pool["targetPorts"]] == [port]
    gateway = container(pod, "gateway")
    assert [p["containerPort"] for p in gateway["ports"]] == [port]
    probe = gateway["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health" and probe["port"] == gateway["ports"][0]["name"]
    assert config.gateway.health_without_key and config.gateway.model_server_metrics_without_key
    assert not config.gateway.metrics_without_key  # the gateway's own name every key
    assert config.gateway.max_queue is not None  # refuse at once: the picker goes on


def test_the_hosts_run_modeld_with_its_gpus_state_and_cache() -> None:
    """modeld gets the node's GPUs and starts vLLM as its own processes on Unix
    sockets; its socket is shared with the gateway; its state and cache directories,
    and the keys the gateway reads, are on volumes; the models fit a node's GPUs; a
    daemon that stops answering on its socket is restarted."""
    pod = one("DaemonSet", "modeld")["spec"]["template"]
    daemon, gateway = container(pod, "modeld"), container(pod, "gateway")
    config = host_config()
    gpus = int(daemon["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and "nvidia.com/gpu" not in gateway.get("resources", {}).get("limits", {})
    for model in config.models.values():
        assert model.runtime == "process" and model.socket_path is not None
        assert max(model.gpus) < gpus
    check_fits(config.models, {device: NODE_GPU_GB for device in range(gpus)})
    socket_dir = str(config.daemon.socket.parent)
    assert mounted(pod, daemon, socket_dir) is mounted(pod, gateway, socket_dir)
    assert "emptyDir" in mounted(pod, daemon, socket_dir)
    for path in (config.daemon.state_dir, config.daemon.cache_dir):
        assert "hostPath" in mounted(pod, daemon, str(path))
    for keys in (config.gateway.api_keys_file, config.gateway.inference_keys_file):
        assert keys is not None and "secret" in mounted(pod, gateway, str(keys))
    for box in (daemon, gateway):
        command = box["command"]
        config_file = command[command.index("--config") + 1]
        assert "configMap" in mounted(pod, box, config_file)
    assert pod["spec"]["terminationGracePeriodSeconds"] > config.daemon.shutdown_timeout_s
    ping = daemon["livenessProbe"]["exec"]["command"]
    assert ping[-1] == "ping" and ping[ping.index("--socket") + 1] == str(config.daemon.socket)


def test_the_picker_serves_the_pool_with_its_config() -> None:
    """The pool's endpointPickerRef is the EPP's Service and port; the EPP is told that
    pool and reads the configuration with the LoRA-affinity and queue scorers; its
    account may watch the pool and its pods."""
    ref = one("InferencePool", "modeld")["spec"]["endpointPickerRef"]
    service = one("Service", ref["name"])["spec"]
    port = next(p for p in service["ports"] if p["port"] == ref["port"]["number"])
    deployment = one("Deployment", ref["name"])["spec"]
    pod = deployment["template"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    epp = container(pod, "epp")
    assert port["targetPort"] in {p["name"] for p in epp["ports"]}
    args = epp["args"]
    assert args[args.index("--pool-name") + 1] == "modeld"
    config_file = args[args.index("--config-file") + 1]
    volume = mounted(pod, epp, config_file)
    config_map = one("ConfigMap", volume["configMap"]["name"])
    config = yaml.safe_load(config_map["data"][Path(config_file).name])
    profile = EndpointPickerConfig.model_validate(config).schedulingProfiles[0]
    used = {plugin.pluginRef for plugin in profile.plugins}
    assert {"lora-affinity-scorer", "queue-scorer"} <= used
    account = pod["spec"]["serviceAccountName"]
    binding = next(
        d
        for d in ALL.values()
        if d["kind"] == "RoleBinding" and any(s["name"] == account for s in d["subjects"])
    )
    rules = one("Role", binding["roleRef"]["name"])["rules"]
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("", "pods"), ("inference.networking.k8s.io", "inferencepools")} <= granted


def test_the_route_sends_inference_to_the_pool_and_waits_for_loads() -> None:
    """The HTTPRoute's backend is the InferencePool, and it waits longer than any
    model's load may take (a request may wait for its model to load)."""
    route = one("HTTPRoute", "modeld")["spec"]
    backends = [b for rule in route["rules"] for b in rule["backendRefs"]]
    assert backends == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "modeld"}
    ]
    seconds = int(route["rules"][0]["timeouts"]["request"].removesuffix("s"))
    assert seconds > max(m.load_timeout_s for m in host_config().models.values())

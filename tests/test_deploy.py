"""The Kubernetes manifests in deploy/, loaded and validated here, since no cluster is reachable: the
Deployment, Service and HorizontalPodAutoscaler through the kubernetes client's models (a field the
client does not know is lost on the way, and so fails the round trip), the KubeRay RayJob against a
JSON schema of its CRD's fields, its pods through the same models, and its entrypoint through our CLI."""
from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

import pytest

from service.cli import build_parser
from service.config import REPO_ROOT, Settings

kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client is not installed (make setup installs it with the dev extra)")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed (make setup installs it with the dev extra)")
import yaml  # noqa: E402 - the kubernetes client's dependency

DEPLOY = REPO_ROOT / "deploy"
SCHEMAS = Path(__file__).parent / "schemas"
MODELS = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service",
          ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler"}


def documents(name: str) -> list[dict]:
    with open(DEPLOY / name, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def round_trip(doc: dict, model: str) -> dict:
    """`doc` read into the client's model and written back: what the client understood of it.

    The models raise ValueError for a missing required field and drop fields they do not know."""
    client = kubernetes.client.ApiClient()
    return client.sanitize_for_serialization(client.deserialize(json.dumps(doc), model, "application/json"))


def normalised(doc: object) -> object:
    """`doc` as the client writes it back: integers kept, every other scalar as it was."""
    return json.loads(json.dumps(doc))


def test_the_round_trip_catches_a_misspelt_field():
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": 80}], "selectr": {"a": "b"}}}
    assert round_trip(doc, "V1Service") != doc
    with pytest.raises(ValueError):
        round_trip({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"name": "http"}]}}, "V1Service")


def test_service_manifests_are_valid_and_agree():
    docs = {doc["kind"]: doc for doc in documents("service.yaml")}
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in docs.values():
        assert round_trip(doc, MODELS[doc["apiVersion"], doc["kind"]]) == normalised(doc), doc["kind"]

    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 3000}  # BentoML's port in the image
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {kind: (probe["path"], probe["port"]) for kind, probe in probes.items()} == {
        "startupProbe": ("/readyz", "http"), "readinessProbe": ("/readyz", "http"), "livenessProbe": ("/livez", "http")}
    settings = {f"FACECHECK_{name.upper()}" for name in Settings.model_fields}
    assert {env["name"] for env in container["env"]} <= settings
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert container["resources"]["requests"]["cpu"]  # CPU utilisation is measured against the request


def test_the_rayjob_is_valid_and_runs_the_ray_engine():
    (job,) = documents("rayjob.yaml")
    schema = json.loads((SCHEMAS / "kuberay-rayjob-v1.json").read_text())
    jsonschema.validate(job, schema, cls=jsonschema.Draft202012Validator)
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        assert round_trip(group["template"], "V1PodTemplateSpec") == normalised(group["template"])
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    gpus = [g for g in cluster["workerGroupSpecs"] if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert [g["groupName"] for g in gpus] == ["gpu"]  # the classifier actors' nodes

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"ray[data]=={cluster['rayVersion']}" in extras["ray"]  # the cluster runs the Ray the package pins

    command, *argv = shlex.split(job["spec"]["entrypoint"])
    args = build_parser().parse_args(argv)
    assert command == "facecheck" and args.command == "classify"
    assert (args.engine, args.address) == ("ray", "auto") and args.parquet and "://" in args.path

"""deploy/k8s: the overlays render, validate against Kubernetes' and KEDA's schemas, hang together, and the
scaler's query, run against PostgreSQL, counts each lane's queue as jobs are queued, claimed and finished."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from deploy_helpers import K8S, OVERLAYS, yaml_documents
from jsonschema import Draft202012Validator
from psycopg import sql

from atelier.service.job_store import open_job_store
from atelier.service.jobs import JOB_KINDS

KEDA_SCHEMAS = json.loads((Path(__file__).parent / "keda_schemas.json").read_text(encoding="utf-8"))
KEDA_KINDS = ("ScaledObject", "TriggerAuthentication")
# The lanes: each worker Deployment and the ScaledObject that scales it.
LANES = {"generation": "atelier-worker-generation", "training": "atelier-worker-training"}


def _of_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _kinds_argument(deployment: dict[str, Any]) -> set[str]:
    args = _container(deployment)["args"]
    return set(args[args.index("--kinds") + 1].split(","))


def _query_kinds(query: str) -> set[str]:
    found = re.search(r"kind IN \(([^)]*)\)", query)
    assert found, f"the query names no kinds: {query}"
    return {kind.strip().strip("'") for kind in found.group(1).split(",")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_validate_against_the_kubernetes_schemas(rendered, overlay):
    import kubernetes_validate

    # The newest Kubernetes the package knows and an older one still in wide use (schemas bundled: no network).
    versions = [kubernetes_validate.latest_version(), "1.29.0"]
    resources = rendered[overlay]
    checked = 0
    for resource in resources:
        if resource["kind"] in KEDA_KINDS:
            continue
        for version in versions:
            kubernetes_validate.validate(resource, version, strict=True)
        checked += 1
    assert checked == len(resources) - 3  # two ScaledObjects and the TriggerAuthentication


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_keda_resources_validate_against_kedas_schema(rendered, overlay):
    resources = rendered[overlay]
    auths = _of_kind(resources, "TriggerAuthentication")
    for kind in KEDA_KINDS:
        validator = Draft202012Validator({**KEDA_SCHEMAS, "$ref": f"#/{kind}"})
        for resource in _of_kind(resources, kind).values():
            problems = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(resource)]
            assert problems == [], f"{kind} {resource['metadata']['name']}"
    for auth in auths.values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["parameter"] in KEDA_SCHEMAS["postgresqlAuthParameters"]
    # What KEDA's admission webhook checks beyond the schema, and what scaling to zero needs.
    for scaled in _of_kind(resources, "ScaledObject").values():
        spec = scaled["spec"]
        assert spec["minReplicaCount"] == 0 < spec["maxReplicaCount"]
        assert 0 < spec["pollingInterval"] <= 30, "a job waits up to one polling interval for a cold start"
        assert spec["cooldownPeriod"] >= 60
        names = [trigger.get("name") for trigger in spec["triggers"]]
        assert len(names) == len(set(names))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_in_the_manifests_finds_its_target(rendered, overlay):
    resources = rendered[overlay]
    deployments = _of_kind(resources, "Deployment")
    secrets = _of_kind(resources, "Secret")
    config_maps = _of_kind(resources, "ConfigMap")
    auths = _of_kind(resources, "TriggerAuthentication")
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        container = _container(deployment)
        for source in container.get("envFrom", []):
            ref = source.get("secretRef") or source.get("configMapRef")
            assert ref["name"] in (secrets if "secretRef" in source else config_maps), ref
        for variable in container.get("env", []):
            secret_ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if secret_ref:
                assert secret_ref["key"] in secrets[secret_ref["name"]]["data"]
        mounted = {mount["name"] for mount in container.get("volumeMounts", [])}
        assert mounted <= {volume["name"] for volume in pod["spec"]["volumes"]}
        # Read-only root file system: every place Atelier writes is a volume.
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"/tmp", "/data", "/cache"} <= {m["mountPath"] for m in container["volumeMounts"]}
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    api_labels = deployments["atelier-api"]["spec"]["template"]["metadata"]["labels"]
    (service,) = _of_kind(resources, "Service").values()
    (budget,) = _of_kind(resources, "PodDisruptionBudget").values()
    assert service["spec"]["selector"].items() <= api_labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= api_labels.items()
    for scaled in _of_kind(resources, "ScaledObject").values():
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
        for trigger in scaled["spec"]["triggers"]:
            auth = auths[trigger["authenticationRef"]["name"]]
            for ref in auth["spec"]["secretTargetRef"]:
                assert ref["key"] in secrets[ref["name"]]["data"], "KEDA reads the studio's database URL"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_grace_periods_and_lanes(rendered, overlay):
    resources = rendered[overlay]
    deployments = _of_kind(resources, "Deployment")
    (config,) = _of_kind(resources, "ConfigMap").values()
    stop_grace = float(config["data"]["ATELIER_STOP_GRACE_SECONDS"])
    api = _container(deployments["atelier-api"])
    assert api["args"] == ["serve", "--max-workers", "0"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/api/health"
    # Not /api/health/ready: with workers at zero the API would leave its Service, and no job could start one.
    assert api["readinessProbe"]["httpGet"]["path"] == "/api/health"
    assert api["startupProbe"]["httpGet"]["path"] == "/api/health"
    scaled_targets = {
        s["spec"]["scaleTargetRef"]["name"] for s in _of_kind(resources, "ScaledObject").values()
    }
    assert scaled_targets == set(LANES.values())
    for name in LANES.values():
        worker = deployments[name]
        assert _container(worker)["args"][0] == "worker"
        assert worker["spec"]["replicas"] == 0, "KEDA owns the replica count"
        assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > stop_grace
        resources_ = _container(worker)["resources"]
        pod = worker["spec"]["template"]["spec"]
        if overlay == "gpu":
            assert resources_["limits"]["nvidia.com/gpu"] == 1
            assert pod["nodeSelector"] and pod["tolerations"]
            assert {"name": "ATELIER_DEVICE", "value": "cuda"} in _container(worker)["env"]
        else:
            assert "nvidia.com/gpu" not in resources_.get("limits", {})
            assert "nodeSelector" not in pod
    assert _kinds_argument(deployments[LANES["training"]]) == {"train"}


def test_the_secrets_shipped_are_placeholders():
    for path in sorted((K8S / "base" / "secrets").glob("*.env")):
        values = [
            line.split("=", 1)[1]
            for line in path.read_text(encoding="utf-8").splitlines()
            if "=" in line and not line.startswith("#")
        ]
        secret_values = [v for v in values if v not in ("us-east-1",)]
        assert secret_values and all("CHANGE-ME" in value for value in secret_values), path.name


def _lanes_from_the_manifests() -> dict[str, tuple[str, set[str]]]:
    """Each lane's scaler query (exactly as deployed) and the kinds its worker Deployment takes."""
    scaled = _of_kind(yaml_documents(K8S / "base" / "keda.yaml"), "ScaledObject")
    workers = _of_kind(yaml_documents(K8S / "base" / "workers.yaml"), "Deployment")
    lanes = {}
    for lane, name in LANES.items():
        (trigger,) = scaled[name]["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        lanes[lane] = (trigger["metadata"]["query"], _kinds_argument(workers[name]))
    return lanes


def test_the_rendered_overlays_deploy_the_queries_this_file_tests(rendered):
    lanes = _lanes_from_the_manifests()
    for overlay in OVERLAYS:
        scaled = _of_kind(rendered[overlay], "ScaledObject")
        for lane, name in LANES.items():
            assert scaled[name]["spec"]["triggers"][0]["metadata"]["query"] == lanes[lane][0]


@pytest.fixture
def queue_database(postgres_url):
    """A fresh schema in the test PostgreSQL, and its URL (the scaler's unqualified `jobs` resolves to it)."""
    schema = f"keda_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return f"{postgres_url}?options=-csearch_path%3D{schema}"


def test_the_scaler_query_counts_each_lanes_queued_and_running_jobs(queue_database):
    lanes = _lanes_from_the_manifests()
    # Every lane's query counts the kinds its workers take, and every kind of job has a lane to start a worker.
    for query, kinds in lanes.values():
        assert _query_kinds(query) == kinds
    assert set().union(*(kinds for _query, kinds in lanes.values())) == set(JOB_KINDS)

    store = open_job_store(queue_database)
    try:

        def depth() -> dict[str, int]:
            # As KEDA runs it: the query text, as is, on its own connection.
            with psycopg.connect(queue_database, autocommit=True) as conn:
                return {lane: conn.execute(query).fetchone()[0] for lane, (query, _kinds) in lanes.items()}

        assert depth() == {"generation": 0, "training": 0}
        first = store.submit("generate", {"prompt": "a"})
        store.submit("generate", {"prompt": "b"})
        caption = store.submit("caption", {"image": "x"})
        store.submit("product", {"photo": "y"})
        run = store.submit("train", {"training_data": "training-data/a.zip"})
        assert depth() == {"generation": 4, "training": 1}
        # Claimed jobs still count: the worker running them must not be scaled away.
        assert store.claim("gpu-1", kinds=["generate"]).id == first.id
        assert store.claim("gpu-2", kinds=["train"]).id == run.id
        assert depth() == {"generation": 4, "training": 1}
        store.complete(first.id, "gpu-1", {"images": []})
        assert depth() == {"generation": 3, "training": 1}
        store.fail(run.id, "gpu-2", "out of memory", retry=False)
        assert depth() == {"generation": 3, "training": 0}
        # A failed attempt that will be retried goes back to the queue, and still counts.
        assert store.claim("gpu-1", kinds=["caption"]).id == caption.id
        store.fail(caption.id, "gpu-1", "database briefly unreachable", retry=True)
        assert store.get(caption.id).state == "queued"
        assert depth() == {"generation": 3, "training": 0}
        canceled = store.submit("train", {"training_data": "training-data/b.zip"})
        assert depth()["training"] == 1
        store.cancel(canceled.id)
        assert depth() == {"generation": 3, "training": 0}
        for job in store.list(state="queued"):
            claimed = store.claim("gpu-1", kinds=[job.kind])
            store.complete(claimed.id, "gpu-1", {})
        assert depth() == {"generation": 0, "training": 0}
    finally:
        store.close()

"""deploy/kubernetes: it renders with `kubectl kustomize`, every object is valid for Kubernetes
1.30, the KEDA objects hold only the fields KEDA documents, the pods are what the README promises,
and the SQL KEDA scales the pools by counts the jobs it should in a real database.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from datetime import timedelta
from typing import Any

import jsonschema
import kubernetes_validate
import psycopg
import pytest
import yaml
from sqlalchemy import create_engine, insert, text

from app.db import utcnow
from app.jobs.models import Job
from tests.processes import cli
from tests.services import ROOT, TEST_DATABASE, recreate_database

KUBERNETES_VERSION = "1.30.0"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
SHARED_POOLS = {"pull": "StatefulSet", "build": "StatefulSet", "maintenance": "Deployment"}


def kubectl() -> str:
    found = shutil.which("kubectl")
    assert found, "kubectl is missing: `make services` installs Debian's kubernetes-client"
    return found


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    rendered = subprocess.run([kubectl(), "kustomize", str(ROOT / "deploy/kubernetes")],
                              capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    return [o for o in yaml.safe_load_all(rendered.stdout) if o]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_object_is_valid_for_kubernetes(objects):
    kinds = {o["kind"] for o in objects}
    assert kinds == {"ConfigMap", "Secret", "PersistentVolumeClaim", "Job", "Deployment",
                     "Service", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy",
                     *KEDA_KINDS}, kinds
    for o in objects:
        assert "namespace" not in o["metadata"], o["metadata"]  # namespace-agnostic
        if o["kind"] not in KEDA_KINDS:
            # strict: a field Kubernetes does not know (a typo) fails too.
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)


# The fields of KEDA's ScaledObject and TriggerAuthentication (keda.sh/docs/2.15: reference/
# scaledobject-spec, concepts/authentication) and of its postgresql trigger (scalers/postgresql).
# Trigger metadata is a map of strings in KEDA's CRD.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_NAME = {"type": "object", "required": ["name"], "additionalProperties": False,
         "properties": {"name": {"type": "string", "minLength": 1}}}
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"},
                                   "envSourceContainerName": {"type": "string"}}},
                **{name: {"type": "integer", "minimum": 0} for name in (
                    "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                    "idleReplicaCount", "minReplicaCount", "maxReplicaCount")},
                "fallback": {"type": "object", "required": ["failureThreshold", "replicas"],
                             "additionalProperties": False,
                             "properties": {"failureThreshold": {"type": "integer"},
                                            "replicas": {"type": "integer"}}},
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": {"type": "string"},
                                           "behavior": {"type": "object"}}},
                        "scalingModifiers": {"type": "object"}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"}, "name": {"type": "string"},
                        "metadata": _STRINGS, "useCachedMetrics": {"type": "boolean"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "authenticationRef": {
                            "type": "object", "required": ["name"],
                            "additionalProperties": False, "properties": {
                                "name": {"type": "string"},
                                "kind": {"enum": ["TriggerAuthentication",
                                                  "ClusterTriggerAuthentication"]}}}},
                    "if": {"properties": {"type": {"const": "postgresql"}}},
                    "then": {"properties": {"metadata": {
                        "required": ["query", "targetQueryValue"],
                        "propertyNames": {"enum": [
                            "connectionFromEnv", "host", "userName", "passwordFromEnv", "port",
                            "dbName", "sslmode", "query", "targetQueryValue",
                            "activationTargetQueryValue", "metricName"]}}}}}},
            }},
    }}
TRIGGER_AUTHENTICATION = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "TriggerAuthentication"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object", "additionalProperties": False, "minProperties": 1,
            "properties": {
                "podIdentity": {"type": "object"},
                "secretTargetRef": {"type": "array", "items": {
                    "type": "object", "required": ["parameter", "name", "key"],
                    "additionalProperties": False, "properties": {
                        # The postgresql trigger's authentication parameters.
                        "parameter": {"enum": ["connection", "host", "userName", "password",
                                               "port", "dbName", "sslmode"]},
                        "name": {"type": "string"}, "key": {"type": "string"}}}},
                "env": {"type": "array"}, "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"}, "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"}}},
    }}


def test_the_keda_objects_hold_only_what_keda_documents(objects):
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    for o in scaled:
        jsonschema.Draft202012Validator(SCALED_OBJECT).validate(o)
        behavior = o["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get(
            "behavior")
        if behavior:  # KEDA hands it to the HPA as it is: it must be one
            kubernetes_validate.validate({
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": o["metadata"]["name"]},
                "spec": {"scaleTargetRef": {**o["spec"]["scaleTargetRef"]} | {
                    "kind": o["spec"]["scaleTargetRef"].get("kind", "Deployment")},
                    "maxReplicas": o["spec"]["maxReplicaCount"], "behavior": behavior},
            }, KUBERNETES_VERSION, strict=True)
    for o in objects:
        if o["kind"] == "TriggerAuthentication":
            jsonschema.Draft202012Validator(TRIGGER_AUTHENTICATION).validate(o)
    # The schema refuses what KEDA would not read.
    wrong = {**scaled[0], "spec": {**scaled[0]["spec"], "minReplicas": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCALED_OBJECT).validate(wrong)


def test_each_shared_pool_scales_on_its_queue_and_only_maintenance_to_zero(objects):
    scaled = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ScaledObject"}
    assert set(scaled) == {f"imagejobs-{pool}" for pool in SHARED_POOLS}
    secret = one(objects, "Secret", "imagejobs")
    for pool, kind in SHARED_POOLS.items():
        spec = scaled[f"imagejobs-{pool}"]["spec"]
        target = spec["scaleTargetRef"]
        assert target.get("kind", "Deployment") == kind
        workload = one(objects, kind, target["name"])
        # Nodes hold images: never zero. Maintenance holds nothing.
        assert spec["minReplicaCount"] == (0 if pool == "maintenance" else 1)
        assert spec["maxReplicaCount"] >= max(spec["minReplicaCount"], 1)
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "postgresql"
        assert f"queue = 'imagejobs-{pool}'" in trigger["metadata"]["query"]
        # The query counts pods, with the concurrency the pool's workers run.
        args = containers(workload)[0]["args"]
        concurrency = args[args.index("--concurrency") + 1]
        assert f"count(*) / {concurrency}.0" in trigger["metadata"]["query"]
        auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "imagejobs" and ref["key"] in secret["data"]


def test_selectors_select_the_pods_they_are_meant_for(objects):
    templates = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
                 for o in workloads(objects)}
    for o in workloads(objects):
        if o["kind"] != "Job":
            assert matches(o["spec"]["selector"]["matchLabels"], templates[o["metadata"]["name"]])
    for o in objects:
        if o["kind"] in ("Service", "PodDisruptionBudget"):
            selector = o["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert [n for n, labels in templates.items() if matches(selector, labels)] == [
                o["metadata"]["name"]], o["metadata"]["name"]
    policy = one(objects, "NetworkPolicy", "imagejobs-workers")
    selected = {n for n, labels in templates.items()
                if matches(policy["spec"]["podSelector"]["matchLabels"], labels)}
    assert selected == {f"imagejobs-{pool}" for pool in SHARED_POOLS}


def test_pods_run_as_uid_10001_with_resources_and_the_secret_except_the_engines(objects):
    for o in workloads(objects):
        pod = o["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        for container in containers(o):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
            security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            if container["name"] == "engine":
                assert container["image"].endswith("-dind") and security["privileged"] is True
                continue
            assert security["runAsUser"] == 10001 and security["runAsNonRoot"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert {"secretRef": {"name": "imagejobs"}} in container["envFrom"]
    secret = one(objects, "Secret", "imagejobs")
    assert {"IMAGEJOBS_SECRET_KEY", "DATABASE_URL"} <= set(secret["data"])


def test_the_api_is_probed_for_readiness_and_liveness(objects):
    (api,) = containers(one(objects, "Deployment", "imagejobs-api"))
    assert api["readinessProbe"]["httpGet"]["path"] == "/v1/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/v1/health"
    # The readiness check waits up to 2 s for each service.
    assert api["readinessProbe"]["timeoutSeconds"] > 4
    service = one(objects, "Service", "imagejobs-api")
    assert service["spec"]["ports"][0]["targetPort"] == api["ports"][0]["name"]


def test_workers_keep_their_node_id_outlive_their_shutdown_and_prove_they_consume(objects):
    settings = one(objects, "ConfigMap", "imagejobs-settings")["data"]
    shutdown = float(settings["IMAGEJOBS_SHUTDOWN_SECONDS"])
    for pool, kind in SHARED_POOLS.items():
        workload = one(objects, kind, f"imagejobs-{pool}")
        pod = workload["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > shutdown
        worker = next(c for c in containers(workload) if c["name"] == "worker")
        node_id = env_of(worker)["IMAGEJOBS_NODE_ID"]
        assert node_id == {"fieldRef": {"fieldPath": "metadata.name"}}
        queues = worker["args"][worker["args"].index("--queues") + 1].split(",")
        # Its own node queue, which only it consumes: the canary of its liveness probe goes there.
        assert queues == [f"imagejobs-{pool}", "imagejobs-node-$(IMAGEJOBS_NODE_ID)"]
        for probe in ("startupProbe", "livenessProbe"):
            command = worker[probe]["exec"]["command"]
            assert command[:2] == ["imagejobs", "health"] and "--queue" not in command
            timeout = float(command[command.index("--timeout") + 1])
            assert worker[probe]["timeoutSeconds"] > timeout


def test_each_node_pod_drives_its_own_engine_over_a_socket_kept_with_its_volume(objects):
    for pool in ("pull", "build"):
        stateful = one(objects, "StatefulSet", f"imagejobs-{pool}")
        by_name = {c["name"]: c for c in containers(stateful)}
        worker, engine = by_name["worker"], by_name["engine"]
        socket = env_of(worker)["DOCKER_HOST"].removeprefix("unix://")
        hosts = [a.removeprefix("--host=") for a in engine["args"] if a.startswith("--host=")]
        # Only the socket: an engine on TCP would take orders from anything in the cluster.
        assert hosts == [f"unix://{socket}"]
        assert "--group=10001" in engine["args"]  # the worker's group may use the socket
        mounts = {c: {m["mountPath"]: m["name"] for m in by_name[c]["volumeMounts"]}
                  for c in by_name}
        folder = os.path.dirname(socket)
        assert mounts["worker"][folder] == mounts["engine"][folder]
        claims = {t["metadata"]["name"] for t in stateful["spec"]["volumeClaimTemplates"]}
        assert mounts["engine"]["/var/lib/docker"] in claims
        assert stateful["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    maintenance = one(objects, "Deployment", "imagejobs-maintenance")
    assert [c["name"] for c in containers(maintenance)] == ["worker"]  # no engine


def test_workers_egress_reaches_dns_postgres_redis_and_the_internet_only(objects):
    policy = one(objects, "NetworkPolicy", "imagejobs-workers")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["ingress"] == []
    ports = set()
    internet = []
    for rule in policy["egress"]:
        blocks = [peer["ipBlock"] for peer in rule["to"] if "ipBlock" in peer]
        if blocks:
            internet += blocks
        else:
            ports |= {p["port"] for p in rule["ports"]}
    assert ports == {53, 5432, 6379}
    excepted = [ipaddress.ip_network(e) for block in internet for e in block["except"]]
    for address in ("10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                    "127.0.0.1", "fd00::1", "fe80::1"):
        assert any(ipaddress.ip_address(address) in n for n in excepted), address
    assert {b["cidr"] for b in internet} == {"0.0.0.0/0", "::/0"}


def queries(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {o["metadata"]["name"].removeprefix("imagejobs-"): o["spec"]["triggers"][0][
        "metadata"]["query"] for o in objects if o["kind"] == "ScaledObject"}


@pytest.fixture(scope="module")
def jobs_database() -> str:
    """A migrated database of its own: the queries count every job in it."""
    name = f"{TEST_DATABASE}_keda"
    recreate_database(name)
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    cli({**os.environ, "DATABASE_URL": url}, "db", "upgrade")
    return url


def job(queue: str, state: str, *, expired: bool = False, lease: bool = False,
        later: bool = False) -> dict[str, Any]:
    now = utcnow()
    return {"hub_id": "0" * 24, "action": "image.import", "queue": queue, "caption": "test",
            "input": {}, "tasks": [], "hash": os.urandom(16).hex(), "limit_duplicates": False,
            "creator_type": "api-key", "creator_id": "0" * 24, "state": state,
            "state_changed": now, "schedule": now + timedelta(seconds=60 if later else 0),
            "expires": now + timedelta(hours=-1 if expired else 1), "attempt": 1 if lease else 0,
            "lease_expires": now + timedelta(seconds=30) if lease else None}


def wanted(url: str, objects: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """With exactly `rows` in the jobs table, what each pool's query answers, run as KEDA runs
    it: over a plain postgresql:// connection."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM jobs"))
        if rows:
            connection.execute(insert(Job.__table__), rows)
    engine.dispose()
    answers = {}
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        for pool, query in queries(objects).items():
            (answers[pool],) = connection.execute(query).fetchone()
    return answers


PULL, BUILD, MAINTENANCE = "imagejobs-pull", "imagejobs-build", "imagejobs-maintenance"


def test_the_triggers_sql_asks_for_the_pods_the_queued_and_running_jobs_need(jobs_database,
                                                                             objects):
    assert wanted(jobs_database, objects, []) == {"pull": 0, "build": 0, "maintenance": 0}
    rows = [
        # pull: 2 queued (one waiting for its retry), 1 running: 3 jobs, 2 pods of 2 slots.
        job(PULL, "queued"), job(PULL, "queued", later=True), job(PULL, "running", lease=True),
        # Not work: expired before it started, or ended.
        job(PULL, "queued", expired=True), job(PULL, "queued", expired=True),
        job(PULL, "completed"), job(PULL, "error"),
        # build: 5 queued, 3 pods.
        *[job(BUILD, "queued") for _ in range(5)],
        # maintenance: 1 queued and 1 running; a prune waiting for its deletes holds no worker.
        job(MAINTENANCE, "queued"), job(MAINTENANCE, "running", lease=True),
        job(MAINTENANCE, "running"), job(MAINTENANCE, "expired"),
    ]
    assert wanted(jobs_database, objects, rows) == {"pull": 2, "build": 3, "maintenance": 1}


def test_a_node_pod_with_deletes_waiting_is_kept_or_brought_back(jobs_database, objects):
    rows = [
        # A delete for the images pull pod 4 holds (pods 0-4 needed), one ended for pod 7,
        # and one for a node that is no pod of the pool.
        job("imagejobs-node-imagejobs-pull-4", "queued"),
        job("imagejobs-node-imagejobs-pull-7", "completed"),
        job("imagejobs-node-elsewhere-9", "queued"),
        job("imagejobs-node-imagejobs-build-2", "running", lease=True),
        job(BUILD, "queued"),
    ]
    assert wanted(jobs_database, objects, rows) == {"pull": 5, "build": 3, "maintenance": 0}
    # More queued work than that wins.
    rows += [job(BUILD, "queued") for _ in range(8)]
    assert wanted(jobs_database, objects, rows)["build"] == 5

"""deploy/kuberay/'s RayJob and RayCluster, validated offline against KubeRay v1.7.0's CRDs
(../shared/k8s/kuberay-v1.7.0, beside the repo) the way KubeRay's own validation reads them: every
object schema without its own `additionalProperties` refuses unknown fields, and
`x-kubernetes-int-or-string` fields take an integer or a string. Then what the sweep needs of them:
the gloss image, a GPU worker group, the entrypoint, the SIGINT stop of docs/cluster.md's recipe."""

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO.parent / "shared" / "k8s" / "kuberay-v1.7.0"
MANIFESTS = REPO / "deploy" / "kuberay"


def strict(schema):
    """The CRD's schema as KubeRay validates with it (its scripts/openapi2jsonschema.py)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("x-kubernetes-int-or-string"):
        string = {"type": "string", **({"pattern": schema["pattern"]} if "pattern" in schema else {})}
        return {"oneOf": [{"type": "integer"}, string]}
    out = {key: strict(value) for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


@functools.cache
def validator(kind: str) -> jsonschema.Draft4Validator:
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    assert path.is_file(), f"{path}: KubeRay's CRD is missing (the repo expects ../shared/k8s/kuberay-v1.7.0)"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1.4 MB of YAML
    assert crd["spec"]["names"]["kind"] == kind, path
    schema = strict(next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def errors(manifest: dict) -> list[str]:
    found = validator(manifest["kind"]).iter_errors(manifest)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found)


def load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def recipe_stop_env() -> dict:
    """The env_vars of docs/cluster.md's `ray job submit --runtime-env-json`."""
    guide = (REPO / "docs" / "cluster.md").read_text()
    runtime_env = re.search(r"--runtime-env-json '(\{.*?\})'", guide, re.S).group(1)
    return json.loads(runtime_env)["env_vars"]


@pytest.mark.parametrize("name,kind", [("rayjob.yaml", "RayJob"), ("raycluster.yaml", "RayCluster")])
def test_manifests_validate_against_the_kuberay_crds(name, kind):
    manifest = load(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert errors(manifest) == [], name
    spec = cluster_spec(manifest)
    containers = [spec["headGroupSpec"]["template"]["spec"]["containers"][0]]
    gpu_groups = [group for group in spec["workerGroupSpecs"]
                  if int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) > 0]
    assert gpu_groups, f"{name}: no worker group with an nvidia.com/gpu limit"
    containers += [group["template"]["spec"]["containers"][0] for group in gpu_groups]
    assert all(re.search(r"/gloss:[\w.-]+$", c["image"]) for c in containers), [c["image"] for c in containers]


def test_the_rayjob_runs_a_sweep_that_stops_with_sigint_and_shuts_down():
    job = load("rayjob.yaml")["spec"]
    words = shlex.split(job["entrypoint"])
    assert words[:3] == ["gloss", "sweep", "run"]
    assert (REPO / words[3].removeprefix("/opt/gloss/")).is_file(), words[3]  # the image's WORKDIR is /opt/gloss
    assert words[words.index("--tracking-uri") + 1].startswith("http://")
    assert words[words.index("--storage-path") + 1].startswith("s3://")
    stop_env = yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]
    assert stop_env == recipe_stop_env() and stop_env["RAY_JOB_STOP_SIGNAL"] == "SIGINT"
    assert job["shutdownAfterJobFinishes"] is True
    assert job["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"] == load("raycluster.yaml")["spec"][
        "workerGroupSpecs"][0]["groupName"]


def test_the_validator_refuses_a_misspelled_field_and_a_wrong_type():
    job = load("rayjob.yaml")
    misspelled = copy.deepcopy(job)
    misspelled["spec"]["entrypoit"] = misspelled["spec"].pop("entrypoint")
    assert any("'entrypoit' was unexpected" in e for e in errors(misspelled)), errors(misspelled)
    deep = copy.deepcopy(job)  # an unknown field deep in the embedded pod template
    deep["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "x"
    assert any("imagePullPolicyy" in e for e in errors(deep)), errors(deep)
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any(e.startswith("spec.rayClusterSpec.workerGroupSpecs.0.replicas:") for e in errors(wrong_type))
    not_a_bool = copy.deepcopy(job)
    not_a_bool["spec"]["shutdownAfterJobFinishes"] = "yes"
    assert any(e.startswith("spec.shutdownAfterJobFinishes:") for e in errors(not_a_bool))


def test_int_or_string_fields_take_both_and_nothing_else():
    job = load("rayjob.yaml")
    limits = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"]
    for value, valid in ((1, True), ("1", True), ("500m", True), (1.5, False), ("lots", False), ([1], False)):
        limits["nvidia.com/gpu"] = value
        assert (errors(job) == []) is valid, (value, errors(job))

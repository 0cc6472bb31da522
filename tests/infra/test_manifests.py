"""Structural checks of infra/: every YAML parses, has what its kind needs, names images built from
Dockerfiles in the repo and commands the real CLI parser accepts, and holds no real secrets.
(No Kubernetes schema validator with bundled CRD schemas installs offline here: checks are structural.)"""
import re
import shlex
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
IMAGES = {"ghcr.io/YOUR_ORG/parakeet-ray:gpu": "Dockerfile.gpu", "ghcr.io/YOUR_ORG/parakeet-ray:cpu": "Dockerfile.cpu"}


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def containers(pod_template):
    return pod_template["spec"]["containers"]


def cluster_specs():
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for d in docs(path):
            if d["kind"] == "RayCluster":
                yield path.name, d["spec"]
            elif d["kind"] == "RayJob":
                yield path.name, d["spec"]["rayClusterSpec"]


def test_all_yaml_parses_with_api_fields():
    paths = sorted(INFRA.rglob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        for d in docs(path):
            if path.parent.name == "k8s":
                assert {"apiVersion", "kind", "metadata"} <= set(d), path
                assert d["metadata"].get("name"), path


def test_ray_clusters_have_head_and_gpu_workers():
    specs = list(cluster_specs())
    assert {name for name, _ in specs} == {"raycluster.yaml", "rayjob-transcribe.yaml", "rayjob-finetune.yaml"}
    for name, spec in specs:
        assert spec["rayVersion"] == "2.60.0"
        head = spec["headGroupSpec"]
        assert "rayStartParams" in head and containers(head["template"])
        groups = spec["workerGroupSpecs"]
        assert groups and all("rayStartParams" in g for g in groups)
        for g in groups:
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
            for c in containers(g["template"]):
                assert c["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        for c in containers(head["template"]) + [c for g in groups for c in containers(g["template"])]:
            assert c["image"] in IMAGES, (name, c["image"])
            assert (INFRA / IMAGES[c["image"]]).exists()
            assert {"secretRef": {"name": "parakeet-ray-s3"}} in c.get("envFrom", []), name
    autoscaled = dict(specs)["raycluster.yaml"]
    assert autoscaled["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("name", ["rayjob-transcribe.yaml", "rayjob-finetune.yaml"])
def test_rayjob_entrypoints_parse_with_the_real_cli(name):
    (job,) = docs(INFRA / "k8s" / name)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "parakeet-ray"
    args = build_parser().parse_args(argv[1:])  # raises SystemExit on an unknown option
    assert args.command == name.removeprefix("rayjob-").removesuffix(".yaml")
    assert args.address == "auto"
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_console_script_exists():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["parakeet-ray"] == "jobs.cli:entry"  # main() after the allocator re-exec


def _arg_default(text, name):
    match = re.search(rf"^ARG {name}=(\S+)$", text, re.M)
    assert match, f"ARG {name} with a default"
    return match.group(1)


@pytest.mark.parametrize("name,flavour", [("Dockerfile.gpu", "cu"), ("Dockerfile.cpu", "cpu")])
def test_dockerfiles_are_pinned_install_the_project_and_bake_no_secrets(name, flavour):
    text = (INFRA / name).read_text()
    assert re.search(rf"^rayproject/ray:2\.60\.0-py311-{flavour}\S*$", _arg_default(text, "RAY_IMAGE"), re.M)
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    # the torch pinned in the image is the one CI tests with
    ci_torch = re.search(r"torch==(\S+)", (ROOT / ".ci" / "run").read_text()).group(1)
    assert _arg_default(text, "TORCH_VERSION") == ci_torch
    assert _arg_default(text, "TORCH_INDEX").startswith("https://download.pytorch.org/whl/" + flavour)
    # every COPY source exists and is not dropped by .dockerignore; the project is pip-installed
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        sources = [s for s in line.split() if not s.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists() and src not in ignored, (name, src)
    copied = " ".join(re.findall(r"^COPY (.+)$", text, re.M))
    for needed in ("pyproject.toml", "README.md", "model", "pipeline", "jobs"):  # what `pip install .` reads
        assert re.search(rf"(^|\s){needed}(\s|$)", copied), (name, needed)
    assert "pip install --no-cache-dir ." in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert not re.search(r"AWS_(SECRET|ACCESS)|TOKEN\b|PASSWORD", text), name


def test_no_plaintext_secrets_anywhere():
    (secret,) = docs(INFRA / "k8s" / "secret-example.yaml")
    assert set(secret["stringData"]["AWS_ACCESS_KEY_ID"]) <= set("REPLACE_M")
    for path in INFRA.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path  # an AWS access key id
            assert not re.search(r"(?i)secret_access_key\s*[:=]\s*[A-Za-z0-9/+]{30,}", text), path


def test_cluster_launcher_and_runtime_env():
    (launcher,) = docs(INFRA / "cluster" / "aws-gpu.yaml")
    assert launcher["provider"]["type"] == "aws" and launcher["head_node_type"] in launcher["available_node_types"]
    assert launcher["docker"]["image"] in IMAGES
    assert any("ray start --head" in c for c in launcher["head_start_ray_commands"])
    (env,) = docs(INFRA / "runtime_env.yaml")
    assert env["working_dir"] == "." and "tests/" in env["excludes"]
    assert not any(k.startswith("AWS_") and "KEY" in k for k in env["env_vars"])


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_images_preload_the_tcmalloc_they_install(name):
    text = (ROOT / "infra" / name).read_text()
    assert "libtcmalloc-minimal4" in text
    preload = re.search(r"^ENV LD_PRELOAD=(\S+)$", text, re.M).group(1)
    assert preload.endswith("/libtcmalloc_minimal.so.4")  # the file Debian's package installs

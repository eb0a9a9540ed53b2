"""Static checks of docker-compose.yml, cluster/Dockerfile and cluster/aws.yaml (no Docker, no cloud).

The compose checks are written as functions that return a list of problems, and each is
also run on a deliberately broken copy of the file, so a check that can never fail fails.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "cluster" / "Dockerfile"
AWS_YAML = REPO_ROOT / "cluster" / "aws.yaml"
SHARED_PATH = "/srv/ser_tune"
GIB = 1024**3
RAY_DAEMON_RESERVE_BYTES = 1 * GIB  # raylet, GCS, dashboard, agents per container

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _interpolate_defaults(text: str, values: dict[str, str] | None = None) -> str:
    """Compose variable syntax resolved to ``values`` (an --env-file's), else the file's defaults
    (the environment is ignored)."""

    def replace(match: re.Match) -> str:
        if values and match.group("name") in values:
            return values[match.group("name")]
        if match.group("op") in (":-", "-"):
            return match.group("arg")
        raise AssertionError(f"{COMPOSE_FILE.name}: variable {match.group(0)} has no default")

    return _VARIABLE.sub(replace, text)


def _load_compose(env_file: Path | None = None) -> dict:
    values = None
    if env_file is not None:
        lines = [line.strip() for line in env_file.read_text().splitlines()]
        values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return yaml.safe_load(_interpolate_defaults(COMPOSE_FILE.read_text(), values))


def _bytes(size) -> int:
    """Compose size ('6g', '1200m', 1073741824) in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", str(size).strip().lower())
    assert match, f"unreadable size {size!r}"
    factor = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": GIB}[match.group(2)]
    return int(float(match.group(1)) * factor)


def _env(service: dict) -> dict:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _ray_services(compose: dict) -> dict[str, dict]:
    # The Ray nodes (head and workers: started by cluster/start-*.sh); prometheus and grafana are not.
    return {name: svc for name, svc in compose["services"].items()
            if str((svc.get("command") or [""])[0]).startswith("cluster/start-")}


# ----- checks: each returns a list of human-readable problems -----

def published_port_problems(compose: dict) -> list[str]:
    problems = []
    for name, svc in compose["services"].items():
        if svc.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port on all interfaces")
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                if port.get("host_ip") != "127.0.0.1":
                    problems.append(f"{name}: port {port} not bound to host_ip 127.0.0.1")
            elif not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port '{port}' is not published on 127.0.0.1 only")
    return problems


def shared_volume_problems(compose: dict) -> list[str]:
    sources = {}
    for name, svc in _ray_services(compose).items():
        mounts = [v for v in svc.get("volumes", []) if str(v).split(":")[1:2] == [SHARED_PATH]]
        if len(mounts) != 1:
            sources[name] = None
            continue
        sources[name] = str(mounts[0]).split(":")[0]
    problems = [f"{name}: no volume mounted at {SHARED_PATH}" for name, src in sources.items() if src is None]
    if len({src for src in sources.values() if src is not None}) > 1:
        problems.append(f"services mount different sources at {SHARED_PATH}: {sources}")
    return problems


def resource_limit_problems(compose: dict) -> list[str]:
    problems = []
    for name, svc in _ray_services(compose).items():
        env = _env(svc)
        if "cpus" not in svc or "mem_limit" not in svc:
            problems.append(f"{name}: needs both cpus and mem_limit")
            continue
        for key in ("RAY_NUM_CPUS", "RAY_MEMORY_BYTES", "RAY_OBJECT_STORE_BYTES"):
            if not env.get(key, "").isdigit():
                problems.append(f"{name}: {key} must be set to an integer for ray start")
        if problems:
            continue
        if float(env["RAY_NUM_CPUS"]) != float(svc["cpus"]):
            problems.append(f"{name}: ray --num-cpus {env['RAY_NUM_CPUS']} != container cpus {svc['cpus']}")
        ray_total = int(env["RAY_MEMORY_BYTES"]) + int(env["RAY_OBJECT_STORE_BYTES"]) + RAY_DAEMON_RESERVE_BYTES
        if ray_total > _bytes(svc["mem_limit"]):
            problems.append(f"{name}: ray memory + object store + 1 GiB ({ray_total}) exceeds mem_limit {svc['mem_limit']}")
        if int(env["RAY_OBJECT_STORE_BYTES"]) > _bytes(svc.get("shm_size", "64m")):
            problems.append(f"{name}: object store larger than shm_size {svc.get('shm_size', '64m (default)')}")
    return problems


def auth_problems(compose: dict) -> list[str]:
    problems = []
    secrets = compose.get("secrets", {})
    for name, svc in _ray_services(compose).items():
        env = _env(svc)
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{name}: RAY_AUTH_MODE must be 'token'")
        if "RAY_AUTH_TOKEN" in env:
            problems.append(f"{name}: the token itself must not be in the compose file (use the secret)")
        token_path = env.get("RAY_AUTH_TOKEN_PATH", "")
        secret_name = token_path.removeprefix("/run/secrets/")
        used = [s if isinstance(s, str) else s.get("source") for s in svc.get("secrets", [])]
        if not token_path.startswith("/run/secrets/") or secret_name not in used:
            problems.append(f"{name}: RAY_AUTH_TOKEN_PATH must point at a compose secret the service uses")
        elif "file" not in secrets.get(secret_name, {}):
            problems.append(f"{name}: secret {secret_name} must be defined from a file")
    return problems


CHECKS = [published_port_problems, shared_volume_problems, resource_limit_problems, auth_problems]


# ----- the real file passes every check -----

@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_compose_file_passes(check):
    assert check(_load_compose()) == []


def test_compose_has_head_and_scalable_workers():
    compose = _load_compose()
    head, worker = compose["services"]["ray-head"], compose["services"]["worker"]
    assert head["command"][0] == "cluster/start-head.sh" and "--block" in head["command"]
    assert worker["command"][0] == "cluster/start-worker.sh" and "--block" in worker["command"]
    assert _env(worker)["RAY_HEAD_ADDRESS"] == "ray-head:6379"
    # --scale worker=N needs no fixed name and no host ports on the worker.
    assert "container_name" not in worker and not worker.get("ports")
    published = {str(p).split(":")[-1].split("/")[0] for p in head["ports"]}
    assert published == {"8265", "10001"}
    assert _env(head)["RAY_DASHBOARD_HOST"] == "0.0.0.0"  # inside the container; host side is loopback
    for svc in (head, worker):
        assert svc["build"] == {"context": ".", "dockerfile": "cluster/Dockerfile"}


# ----- sizes for one 8-core machine (cluster/sizes/*.env) -----

SIZES = sorted((REPO_ROOT / "cluster" / "sizes").glob("8core-*.env"))
MACHINE_CPUS, MACHINE_MEMORY = 8, 32 * GIB     # the machine those files are written for


def machine_fit_problems(compose: dict) -> list[str]:
    """Head + N workers together within one 8-core, 32 GiB machine, using all of its cores."""
    head, worker = compose["services"]["ray-head"], compose["services"]["worker"]
    workers = int(worker.get("scale", 1))
    cpus = float(head["cpus"]) + workers * float(worker["cpus"])
    memory = _bytes(head["mem_limit"]) + workers * _bytes(worker["mem_limit"])
    problems = []
    if cpus != MACHINE_CPUS:
        problems.append(f"{cpus:g} CPUs over head and {workers} workers, not the machine's {MACHINE_CPUS}")
    if memory > MACHINE_MEMORY:
        problems.append(f"memory limits add up to {memory / GIB:.1f} GiB, more than {MACHINE_MEMORY / GIB:.0f}")
    return problems


@pytest.mark.parametrize("env_file", SIZES, ids=lambda p: p.stem)
def test_8_core_sizes_fit_the_machine(env_file):
    compose = _load_compose(env_file)
    assert resource_limit_problems(compose) == []
    assert machine_fit_problems(compose) == []


def test_8_core_sizes_exist_and_a_misfit_is_caught():
    assert [p.stem for p in SIZES] == ["8core-head-and-3-workers", "8core-one-node"]
    compose = _load_compose(SIZES[0])
    compose["services"]["worker"]["scale"] = 4          # 10 CPUs
    assert machine_fit_problems(compose)


# ----- each check catches the fault it exists for -----

def _broken_copies():
    def unbound_port(c):
        c["services"]["ray-head"]["ports"][0] = "8265:8265"

    def host_network(c):
        c["services"]["worker"]["network_mode"] = "host"

    def other_volume(c):
        c["services"]["worker"]["volumes"] = ["./elsewhere:/srv/ser_tune"]

    def no_volume(c):
        c["services"]["ray-head"]["volumes"] = []

    def no_mem_limit(c):
        del c["services"]["worker"]["mem_limit"]

    def cpu_mismatch(c):
        c["services"]["worker"]["environment"]["RAY_NUM_CPUS"] = "16"

    def memory_over_limit(c):
        c["services"]["ray-head"]["environment"]["RAY_MEMORY_BYTES"] = str(64 * GIB)

    def small_shm(c):
        c["services"]["worker"]["shm_size"] = "64m"

    def auth_off(c):
        c["services"]["worker"]["environment"]["RAY_AUTH_MODE"] = "disabled"

    def literal_token(c):
        c["services"]["ray-head"]["environment"]["RAY_AUTH_TOKEN"] = "0" * 64

    def no_secret(c):
        c["services"]["worker"]["secrets"] = []

    return {
        "unbound_port": (unbound_port, published_port_problems),
        "host_network": (host_network, published_port_problems),
        "other_volume": (other_volume, shared_volume_problems),
        "no_volume": (no_volume, shared_volume_problems),
        "no_mem_limit": (no_mem_limit, resource_limit_problems),
        "cpu_mismatch": (cpu_mismatch, resource_limit_problems),
        "memory_over_limit": (memory_over_limit, resource_limit_problems),
        "small_shm": (small_shm, resource_limit_problems),
        "auth_off": (auth_off, auth_problems),
        "literal_token": (literal_token, auth_problems),
        "no_secret": (no_secret, auth_problems),
    }


@pytest.mark.parametrize("fault", sorted(_broken_copies()))
def test_check_catches(fault):
    breaker, check = _broken_copies()[fault]
    compose = copy.deepcopy(_load_compose())
    breaker(compose)
    assert check(compose), f"{check.__name__} missed {fault}"


def test_every_variable_has_a_default():
    # Compose must come up with no .env file at all; _interpolate_defaults raises otherwise.
    _interpolate_defaults(COMPOSE_FILE.read_text())


def test_prometheus_and_grafana_read_rays_session_and_the_dashboard_finds_them():
    compose = _load_compose()
    services = compose["services"]
    assert set(_ray_services(compose)) == {"ray-head", "worker"}
    head, prometheus, grafana = services["ray-head"], services["prometheus"], services["grafana"]
    session = "ray-session:/tmp/ray"
    assert session in head["volumes"] and "ray-session" in compose["volumes"]
    for svc in (prometheus, grafana):   # read-only views of the head's session folder
        assert f"{session}:ro" in svc["volumes"]
        assert svc["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "--config.file=/tmp/ray/session_latest/metrics/prometheus/prometheus.yml" in prometheus["command"]
    assert _env(grafana)["GF_PATHS_PROVISIONING"] == "/tmp/ray/session_latest/metrics/grafana/provisioning"
    env = _env(head)
    assert env["RAY_PROMETHEUS_HOST"] == "http://prometheus:9090" and env["RAY_GRAFANA_HOST"] == "http://grafana:3000"
    assert env["RAY_GRAFANA_IFRAME_HOST"] == "http://127.0.0.1:3000"
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"] and grafana["ports"] == ["127.0.0.1:3000:3000"]


# ----- validation by docker-compose itself, where installed -----

def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config_validates():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed "
                    "(Debian: apt-get install -y docker-compose)")
    env = dict(os.environ)
    done = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    # Scaling through the variable is accepted too.
    done = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "config"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env={**env, "WORKERS": "3", "WORKER_CPUS": "4"})
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert rendered["services"]["worker"]["scale"] == 3
    assert _env(rendered["services"]["worker"])["RAY_NUM_CPUS"] == "4"
    assert {"prometheus", "grafana"} <= set(rendered["services"])


# ----- image -----

def test_dockerfile_installs_the_package_from_the_repo_root():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M), "the image must install the package with pip install ."
    assert re.search(r"^COPY \. ", text, re.M)
    ignored = (REPO_ROOT / "cluster" / "Dockerfile.dockerignore").read_text().split()
    for path in (".venv", "cluster/secrets", "cluster/shared", ".git"):
        assert path in ignored, f"{path} must stay out of the image build context"


# ----- cluster launcher -----

def test_aws_launcher_config_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(AWS_YAML.read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))
    assert raw["file_mounts"]["~/.ray/auth_token"] == "cluster/secrets/ray_auth_token"
    assert raw["file_mounts"]["~/ser_tune"] == "."
    assert any("RAY_AUTH_MODE=token" in cmd for cmd in raw["setup_commands"])
    assert any("pip install -e ~/ser_tune" in cmd for cmd in raw["setup_commands"])
    for key, script in (("head_start_ray_commands", "start-head.sh"), ("worker_start_ray_commands", "start-worker.sh")):
        assert any(script in cmd for cmd in raw[key]), f"{key} must use cluster/{script}"


def test_aws_node_resources_match_the_start_commands():
    raw = yaml.safe_load(AWS_YAML.read_text())
    types = raw["available_node_types"]
    head_cmd = " ".join(raw["head_start_ray_commands"])
    worker_cmd = " ".join(raw["worker_start_ray_commands"])
    worker_types = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert len(worker_types) == 1
    for node_type, cmd in ((types[raw["head_node_type"]], head_cmd), (worker_types[0], worker_cmd)):
        cpus = int(re.search(r"RAY_NUM_CPUS=(\d+)", cmd).group(1))
        assert node_type["resources"]["CPU"] == cpus
        assert re.search(r"RAY_MEMORY_BYTES=\d+", cmd) and re.search(r"RAY_OBJECT_STORE_BYTES=\d+", cmd)

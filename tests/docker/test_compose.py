"""The compose deployment, checked without a Docker engine (there is none on these machines).

The file is parsed with PyYAML and its ``${VAR...}`` references are resolved the way Compose
does, so the invariants that make it work are checked on what Compose would actually run: the
published port ranges equal the ranges the programs bind, both services have health checks, the
secrets have no default, and coturn's peer filter lets clients relay to the service and nowhere
else private.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "compose.yml"
TURNSERVER_CONF = DOCKER / "coturn" / "turnserver.conf"
ENV_EXAMPLE = DOCKER / ".env.example"

# What an operator's docker/.env would hold (test values only).
ENV = {
    "TURN_SECRET": "0123456789abcdef0123456789abcdef",
    "TURN_EXTERNAL_IP": "198.51.100.7",
    "TURN_HOST": "turn.example.org",
    "REENACT_API_KEYS": '{"k1": "0123456789abcdef0123"}',
}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|API_KEY|CREDENTIAL", re.I)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
REFERENCE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def references(value: str) -> list[tuple[str, str | None, str]]:
    """Every ``${...}`` in ``value`` (``$$`` is a literal dollar, not a reference)."""
    return [
        (m["name"], m["op"], m["arg"] or "") for m in REFERENCE.finditer(value.replace("$$", ""))
    ]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution, for the forms this file uses."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"], m["arg"] or ""
        current = env.get(name)
        unset_or_empty = not current if op and op.startswith(":") else current is None
        if op in (":?", "?") and unset_or_empty:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and unset_or_empty:
            return arg
        return current or ""

    parts = value.split("$$")
    return "$".join(REFERENCE.sub(substitute, part) for part in parts)


def load(env: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = interpolate(yaml.safe_load(COMPOSE.read_text()), env)
    return document


def conf_values(name: str) -> list[str]:
    """Every value of option ``name`` in docker/coturn/turnserver.conf."""
    values = []
    for line in TURNSERVER_CONF.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            if key.strip() == name:
                values.append(value.strip())
    return values


def conf_flags() -> set[str]:
    return {
        line.strip()
        for line in TURNSERVER_CONF.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#") and "=" not in line
    }


def published(service: dict[str, Any], protocol: str) -> list[tuple[range, range]]:
    """(host ports, container ports) of each short-syntax mapping for ``protocol``."""

    def ports(text: str) -> range:
        low, _, high = text.partition("-")
        return range(int(low), int(high or low) + 1)

    out = []
    for entry in service.get("ports", []):
        spec, _, proto = str(entry).partition("/")
        if (proto or "tcp") != protocol:
            continue
        *host_part, container = spec.split(":")
        out.append((ports(host_part[-1]), ports(container)))
    return out


def env_range(environment: dict[str, str]) -> range:
    return range(
        int(environment["REENACT_RTC_PORT_MIN"]), int(environment["REENACT_RTC_PORT_MAX"]) + 1
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(ENV)


def test_it_refuses_to_start_without_each_secret_and_address() -> None:
    for name in ENV:
        partial = {k: v for k, v in ENV.items() if k != name}
        with pytest.raises(MissingVariable, match=name):
            load(partial)
        with pytest.raises(MissingVariable, match=name):  # empty counts as unset
            load({**partial, name: ""})


def test_no_secret_has_a_default_or_a_literal_value() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    for service_name, service in raw["services"].items():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key):
                refs = references(str(value))
                assert refs, f"{service_name}.{key} is a literal: {value!r}"
                for name, op, _ in refs:
                    assert op == ":?", f"{service_name}.{key}: ${{{name}}} must use :? (required)"
    for name, op, _ in references(COMPOSE.read_text()):
        if SECRET_NAME.search(name):
            assert op == ":?", f"${{{name}}} has a default or may be empty"
    assert not conf_values("static-auth-secret")  # appended at start from the environment


def test_the_published_media_range_is_the_range_the_service_binds(
    compose: dict[str, Any],
) -> None:
    reenact = compose["services"]["reenact"]
    rtc = env_range(reenact["environment"])
    assert len(rtc) == 100
    udp = published(reenact, "udp")
    assert udp == [(rtc, rtc)]  # 1:1: candidates carry the port the client must send to
    tcp = published(reenact, "tcp")
    assert [container for _, container in tcp] == [range(8000, 8001)]
    assert reenact["environment"]["REENACT_PORT"] == "8000"
    assert reenact["environment"]["REENACT_HOST"] == "0.0.0.0"
    assert reenact["ports"][0].startswith("127.0.0.1:")  # HTTP behind a TLS proxy by default


def test_coturn_publishes_its_listener_and_exactly_its_relay_range(
    compose: dict[str, Any],
) -> None:
    coturn = compose["services"]["coturn"]
    relay = range(int(conf_values("min-port")[0]), int(conf_values("max-port")[0]) + 1)
    listener = range(3478, 3479)
    assert conf_values("listening-port") == ["3478"]
    assert sorted(published(coturn, "udp"), key=lambda p: p[0].start) == [
        (listener, listener),
        (relay, relay),
    ]
    assert published(coturn, "tcp") == [(listener, listener)]
    rtc = env_range(compose["services"]["reenact"]["environment"])
    assert not set(relay) & set(rtc)


def test_both_services_have_health_checks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert not check.get("disable"), name
        assert check["timeout"] and check["interval"], name
    reenact = " ".join(compose["services"]["reenact"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/healthz" in reenact
    coturn = " ".join(compose["services"]["coturn"]["healthcheck"]["test"])
    assert "turnutils_stunclient -p 3478 127.0.0.1" in coturn


def test_the_service_gets_turn_urls_and_the_shared_secret(compose: dict[str, Any]) -> None:
    env = compose["services"]["reenact"]["environment"]
    urls = json.loads(env["REENACT_TURN_URLS"])  # JSON, like every list setting
    assert urls == [
        "turn:turn.example.org:3478?transport=udp",
        "turn:turn.example.org:3478?transport=tcp",
    ]
    assert json.loads(env["REENACT_API_KEYS"]) == {"k1": "0123456789abcdef0123"}
    coturn_env = compose["services"]["coturn"]["environment"]
    assert env["REENACT_TURN_SECRET"] == coturn_env["TURN_SECRET"] == ENV["TURN_SECRET"]
    assert "use-auth-secret" in conf_flags()
    assert conf_values("realm")


def test_coturn_is_pinned_and_hardened(compose: dict[str, Any]) -> None:
    image = compose["services"]["coturn"]["image"]
    assert re.fullmatch(r"coturn/coturn:\d+\.\d+\.\d+-r\d+-\w+", image), image
    assert {"no-cli", "no-tcp-relay", "no-tlsv1", "no-tlsv1_1", "no-multicast-peers"} <= (
        conf_flags()
    )


def test_coturn_relays_to_the_service_and_to_no_other_private_address(
    compose: dict[str, Any],
) -> None:
    def span(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        low, _, high = text.partition("-")
        return ipaddress.ip_address(low), ipaddress.ip_address(high or low)

    def denied(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(
            lo.version == ip.version and lo <= ip <= hi  # type: ignore[operator]
            for lo, hi in map(span, conf_values("denied-peer-ip"))
        )

    for private in ("10.1.2.3", "172.17.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1"):
        assert denied(private), private
    assert denied("fd00::1") and denied("fe80::1") and not denied("8.8.8.8")

    service_ip = compose["services"]["reenact"]["networks"]["media"]["ipv4_address"]
    subnet = ipaddress.ip_network(compose["networks"]["media"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(service_ip) in subnet
    assert denied(service_ip)  # private: only the explicit exception lets it through
    assert conf_values("allowed-peer-ip") == [service_ip]
    assert compose["services"]["coturn"]["networks"] == ["media"]


def test_env_example_lists_every_required_variable_without_a_value() -> None:
    required = {name for name, op, _ in references(COMPOSE.read_text()) if op == ":?"}
    assert required == set(ENV)
    example: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key.strip()] = value.strip()
    assert required <= set(example)
    assert all(example[name] == "" for name in required)  # copying it unedited fails loudly


def test_dockerfiles_expose_and_default_to_the_same_ranges(compose: dict[str, Any]) -> None:
    rtc = env_range(compose["services"]["reenact"]["environment"])
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        assert f"EXPOSE {rtc.start}-{rtc.stop - 1}/udp" in text, dockerfile
        assert f"REENACT_RTC_PORT_MIN={rtc.start}" in text, dockerfile
        assert f"REENACT_RTC_PORT_MAX={rtc.stop - 1}" in text, dockerfile
        assert "/healthz" in text and "HEALTHCHECK" in text, dockerfile


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        (ENV["TURN_SECRET"], True),
        ("short", False),
        ("0123456789abcdef0123456789abcdef;x", False),  # would be a second config line
        ("0123456789abcdef 0123456789abcdef", False),
    ],
)
def test_coturn_start_script_checks_the_secret_and_keeps_it_off_argv(
    tmp_path: Path, secret: str, ok: bool
) -> None:
    """The compose entrypoint script, run by a real /bin/sh with its paths moved to tmp."""
    script = load(ENV)["services"]["coturn"]["command"][0]
    assert load(ENV)["services"]["coturn"]["entrypoint"] == ["/bin/sh", "-ec"]
    script = script.replace("/etc/coturn/reenact.conf", str(TURNSERVER_CONF))
    script = script.replace("/tmp/turnserver.conf", str(tmp_path / "turnserver.conf"))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "turnserver").write_text('#!/bin/sh\necho "argv: $*"\n')
    (fake / "turnserver").chmod(0o755)
    env = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "TURN_SECRET": secret,
        "TURN_EXTERNAL_IP": "198.51.100.7",
    }
    done = subprocess.run(
        ["/bin/sh", "-ec", script], env=env, capture_output=True, text=True, timeout=10
    )
    if not ok:
        assert done.returncode == 64 and "TURN_SECRET" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout  # argv is world-readable on the host
    written = tmp_path / "turnserver.conf"
    assert (written.stat().st_mode & 0o077) == 0
    lines = written.read_text().splitlines()
    assert f"static-auth-secret={secret}" in lines and "external-ip=198.51.100.7" in lines

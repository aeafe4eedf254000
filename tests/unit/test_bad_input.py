"""The corpus of bad input: one row per case, each run through `dsas config` in process.

Every case must end in exit 2 with one line naming its source (file:line and key path,
or the STAGE argument), never a traceback or exit 4. A new class of bad input gets a
row here: files to write over the base project, the stage argument, the expected line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import pytest

from dsasdeploy import cli
from tests.support.configs import PROJECT


STAGE = """\
hosts:
  - name: web1
    address: 10.0.0.1
    roles: [web]
  - name: lb1
    address: 10.0.0.9
    roles: [lb]
"""

Text = Union[str, bytes]


@dataclass(frozen=True)
class Case:
    """One bad input: files replacing the base ones, the stage argument, what stderr must say."""

    id: str
    files: dict[str, Text] = field(default_factory=dict)
    expect: tuple[str, ...] = ()
    stage: str = "production"


def project(**overrides: str) -> str:
    """PROJECT with keys replaced (value None drops the key) or appended."""
    lines = PROJECT.splitlines()
    out = [line for line in lines if line.split(":")[0] not in overrides]
    out += [f"{key}: {value}" for key, value in overrides.items() if value is not None]
    return "\n".join(out) + "\n"


def stage_with(host_extra: str = "", top: str = "") -> str:
    """STAGE with lines added to the first host and/or at the top."""
    return top + STAGE.replace("    roles: [web]\n", "    roles: [web]\n" + host_extra, 1)


def nested(depth: int) -> str:
    return "x: " + "[" * depth + "]" * depth + "\n"


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))

DRBD = """drbd:
  - name: r0
    nodes: [web1, lb1, db1]
    mount: /srv/data
"""

CASES = [
    # --- 1c. deploy_to
    Case("deploy_to-root", {"dsas.yaml": project(deploy_to="/")}, ("dsas.yaml:5: deploy_to: must not be /",)),
    Case("deploy_to-slashes", {"dsas.yaml": project(deploy_to="'///'")}, ("deploy_to: must not be /",)),
    Case("deploy_to-dotdot", {"dsas.yaml": project(deploy_to="/srv/../etc")},
         ("dsas.yaml:5: deploy_to: must not contain '.' or '..' components",)),
    Case("deploy_to-dot", {"dsas.yaml": project(deploy_to="/srv/./shop")}, ("'.' or '..' components",)),
    Case("deploy_to-control", {"dsas.yaml": project(deploy_to='"/srv/sh\\top"')},
         ("dsas.yaml:5: deploy_to: must not contain control characters",)),
    Case("deploy_to-newline", {"dsas.yaml": project(deploy_to='"/srv/shop\\nrm -rf /"')},
         ("deploy_to: must not contain control characters",)),
    Case("host-deploy_to-root", {"stages/production.yaml": stage_with("    deploy_to: /\n")},
         ("stages/production.yaml:5: hosts[0].deploy_to: must not be /",)),
    Case("deploy_to-relative", {"dsas.yaml": project(deploy_to="srv/shop")}, ("must be an absolute path",)),
    # --- 1b. names are names
    Case("application-path", {"dsas.yaml": project(application="../../x")},
         ("dsas.yaml:5: application: expected a name of letters, digits",)),
    Case("application-slash", {"dsas.yaml": project(application="a/b")}, ("application: expected a name of letters",)),
    Case("application-300-chars", {"dsas.yaml": project(application="a" * 300)},
         ("application: expected a name of at most 64 characters, got 300",)),
    Case("application-nul-escape", {"dsas.yaml": project(application='"sh\\0op"')},
         ("dsas.yaml:5: application: contains a NUL character",)),
    Case("application-dot", {"dsas.yaml": project(application="..")}, ("application: expected a name of letters",)),
    Case("host-name-path", {"stages/production.yaml": STAGE.replace("name: web1", "name: ../web1")},
         ("stages/production.yaml:2: hosts[0].name: expected a name of letters",)),
    Case("host-name-long", {"stages/production.yaml": STAGE.replace("name: web1", "name: " + "w" * 300)},
         ("hosts[0].name: expected a name of at most 64 characters",)),
    Case("host-user-shell", {"stages/production.yaml": stage_with("    user: 'root;id'\n")},
         ("stages/production.yaml:5: hosts[0].user: expected a user name of",)),
    Case("ssh-user-space", {"dsas.yaml": PROJECT + "ssh:\n  user: deploy user\n"},
         ("dsas.yaml:7: ssh.user: expected a user name of",)),
    Case("stage-arg-relative-path", {}, ("STAGE: expected a name of letters", "a stage is the name of a file in stages/"),
         stage="../../outside"),
    Case("stage-arg-absolute", {}, ("STAGE: expected a name of letters",), stage="/etc/passwd"),
    Case("stage-arg-long", {}, ("STAGE: expected a name of at most 64 characters",), stage="s" * 300),
    Case("stage-arg-dotdot", {}, ("STAGE: expected a name",), stage=".."),
    # --- 3. files that are not configuration
    Case("not-utf8", {"dsas.yaml": PROJECT.encode() + b"branch: caf\xe9\n"},
         ("dsas.yaml:6: not UTF-8 text (byte 0xe9)",)),
    Case("nul-byte", {"stages/production.yaml": STAGE.encode().replace(b"web1", b"we\x00b1", 1)},
         ("stages/production.yaml:2: contains a NUL byte",)),
    Case("nested-5000", {"stages/production.yaml": STAGE + nested(5000)},
         ("stages/production.yaml:8: YAML syntax error: nested deeper than 64 levels",)),
    Case("billion-laughs", {"stages/production.yaml": STAGE + BILLION_LAUGHS},
         ("YAML syntax error: more than 100000 values once aliases are expanded",)),
    Case("too-large", {"dsas.yaml": PROJECT + "#" * (2 * 1024 * 1024) + "\n"},
         ("dsas.yaml: larger than 1024 KiB",)),
    Case("duplicate-key", {"dsas.yaml": PROJECT + "deploy_to: /srv/other\n"}, ("dsas.yaml:6: deploy_to: duplicate key",)),
    Case("many-errors", {"dsas.yaml": PROJECT + "".join(f"unknown_{i}: 1\n" for i in range(30))},
         ("unknown_0", "... and 10 more problem(s) not shown")),
    # --- 3. values checked by `dsas config`, not at connect time
    Case("address-shell", {"stages/production.yaml": STAGE.replace("10.0.0.1", "'10.0.0.1; id'")},
         ("stages/production.yaml:3: hosts[0].address: expected an IP address or a host name",)),
    Case("address-url", {"stages/production.yaml": STAGE.replace("10.0.0.1", "ssh://web1")},
         ("hosts[0].address: expected an IP address or a host name",)),
    Case("gateway-port", {"dsas.yaml": PROJECT + "ssh:\n  gateway: bastion:99999\n"},
         ("dsas.yaml:7: ssh.gateway: expected [user@]host[:port]: port must be 1-65535",)),
    Case("gateway-user", {"dsas.yaml": PROJECT + "ssh:\n  gateway: 'a b@bastion'\n"},
         ("ssh.gateway: expected [user@]host[:port]: expected a user name",)),
    Case("health-path", {"dsas.yaml": PROJECT + "health:\n  path: healthz\n"},
         ("dsas.yaml:7: health.path: expected a path starting with '/'",)),
    Case("health-status", {"dsas.yaml": PROJECT + "health:\n  expect_status: [200, 99]\n"},
         ("dsas.yaml:7: health.expect_status[1]: expected an HTTP status 100-599, got 99",)),
    Case("warm-memcached", {"dsas.yaml": PROJECT + "warm:\n  memcached: ['10.0.0.5:cache']\n"},
         ("warm.memcached[0]: expected host[:port]: port must be 1-65535",)),
    Case("drbd-three-nodes", {"dsas.yaml": PROJECT + DRBD}, ("drbd[0].nodes: takes at most 2 items, got 3",)),
    Case("drbd-name-path", {"dsas.yaml": PROJECT + DRBD.replace("name: r0", "name: ../../r0")
                            .replace("[web1, lb1, db1]", "[web1, db1]")}, ("drbd[0].name:",)),
    Case("maintenance-file-outside-deploy_to",
         {"dsas.yaml": PROJECT + "lb:\n  driver: lvs\n  keepalived: maintenance_file\n  maintenance_file: /etc/nologin\n"},
         ("dsas.yaml:9: lb.maintenance_file: '/etc/nologin' is outside deploy_to /srv/shop",)),
    Case("maintenance-file-dotdot",
         {"dsas.yaml": PROJECT + "lb:\n  driver: lvs\n  keepalived: maintenance_file\n  maintenance_file: ../x\n"},
         ("lb.maintenance_file: must be a file inside deploy_to (relative to it, no '..')",)),
    Case("lvs-without-lb-host", {"dsas.yaml": PROJECT + "lb:\n  driver: lvs\n",
                                 "stages/production.yaml": STAGE.replace("roles: [lb]", "roles: [web]")},
         ("dsas.yaml:7: lb.driver: lb.driver 'lvs' needs a host with role 'lb'",)),
    Case("linked-dir-dot", {"dsas.yaml": PROJECT + "linked_dirs: [log/./app]\n"},
         ("linked_dirs[0]: must be a path inside the release",)),
]


def run_config(tmp_path: Path, monkeypatch, capsys, stage: str) -> tuple[int, str]:
    """`dsas config STAGE` in this process: (exit code, stderr)."""
    monkeypatch.setenv("DSAS_PROJECT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # keep pytest's SIGTERM handler
    try:
        cli.main(["dsas", "config", stage])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def write(tmp_path: Path, files: dict[str, Text]) -> None:
    base = {"dsas.yaml": PROJECT, "stages/production.yaml": STAGE, **files}
    for name, content in base.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_config_error_naming_its_source(case, tmp_path, monkeypatch, capsys):
    write(tmp_path, case.files)
    started = time.monotonic()
    code, err = run_config(tmp_path, monkeypatch, capsys, case.stage)
    assert time.monotonic() - started < 5, "bad input must be refused at once"
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert all(line.startswith("dsas: error: ") for line in err.splitlines()), err
    for expected in case.expect:
        assert expected in err, err


def test_the_base_project_is_valid(tmp_path, monkeypatch, capsys):
    write(tmp_path, {})
    code, err = run_config(tmp_path, monkeypatch, capsys, "production")
    assert code == 0, err


def test_merge_keys_with_overrides_are_not_duplicates(tmp_path, monkeypatch):
    from dsasdeploy.config.load import load_stage

    write(tmp_path, {"stages/production.yaml": (
        "hosts:\n"
        "  - &web1 {name: web1, address: 10.0.0.1, roles: [web], port: 2222}\n"
        "  - <<: *web1\n"
        "    name: web2\n"
        "    address: 10.0.0.2\n"
        "  - {name: lb1, address: 10.0.0.9, roles: [lb]}\n")})
    stage = load_stage("production", tmp_path)
    assert [(h.name, h.address, h.port) for h in stage.hosts[:2]] == [("web1", "10.0.0.1", 2222),
                                                                       ("web2", "10.0.0.2", 2222)]


def test_valid_names_addresses_and_endpoints_pass(tmp_path):
    from dsasdeploy.config.load import load_stage

    write(tmp_path, {
        "dsas.yaml": PROJECT.replace("application: shop", "application: shop-api_v2.1")
        + "ssh:\n  user: deploy\n  gateway: ops@bastion.example.com:2222\n"
        + "health:\n  path: /health?full=1\n  expect_status: [200, 204]\n"
        + "warm:\n  memcached: ['10.0.0.5:11211', 'cache1', '[::1]:11211']\n",
        "stages/production.yaml": STAGE.replace("10.0.0.1", "web1.example.com").replace("10.0.0.9", "'fd00::9'")})
    stage = load_stage("production", tmp_path)
    assert [h.address for h in stage.hosts] == ["web1.example.com", "fd00::9"]

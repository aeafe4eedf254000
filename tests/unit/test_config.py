"""Config validation: one line per problem, naming file, line and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsasdeploy.config.load import load_stage, stage_as_dict
from dsasdeploy.errors import ConfigError
from tests.support.configs import PROJECT

STAGE = """\
hosts:
  - name: web1
    address: 10.0.0.1
    roles: [web]
  - name: db1
    address: 10.0.0.2
    roles: [db]
    primary: true
"""


def write(tmp_path: Path, project: str = PROJECT, stage: str = STAGE, name: str = "production") -> Path:
    (tmp_path / "dsas.yaml").write_text(project)
    (tmp_path / "stages").mkdir(exist_ok=True)
    (tmp_path / "stages" / f"{name}.yaml").write_text(stage)
    return tmp_path


def problems(tmp_path: Path, stage_name: str = "production") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_stage(stage_name, tmp_path)
    return info.value.problems


def test_valid_stage_resolves_defaults(tmp_path):
    stage = load_stage("production", write(tmp_path))
    web1, db1 = stage.hosts
    assert (web1.port, web1.deploy_to, web1.roles) == (22, "/srv/shop", ("web",))
    assert stage.release_hosts() == (web1,)  # db gets no release by default
    assert stage.primary("db") is db1
    assert stage.restart_commands(web1) == [("web", "sh bin/restart")]
    assert stage_as_dict(stage)["hosts"][1]["primary"] == ["db"]


def test_stage_overrides_project_keys_and_merges_ssh(tmp_path):
    write(tmp_path, PROJECT + "ssh:\n  port: 2222\n  user: deploy\n",
          "branch: release\nssh:\n  user: ci\n" + STAGE)
    stage = load_stage("production", tmp_path)
    assert stage.settings.branch == "release"
    assert (stage.hosts[0].user, stage.hosts[0].port) == ("ci", 2222)


def test_unknown_key_gets_did_you_mean_with_line(tmp_path):
    write(tmp_path, PROJECT + "keep_relases: 3\n")
    assert problems(tmp_path) == [
        "dsas.yaml:6: keep_relases: unknown key 'keep_relases' (did you mean 'keep_releases'?)"]


def test_unknown_nested_key_in_stage_file(tmp_path):
    write(tmp_path, stage=STAGE.replace("    roles: [web]", "    roles: [web]\n    prot: 22"))
    assert problems(tmp_path) == [
        "stages/production.yaml:5: hosts[0].prot: unknown key 'prot' (did you mean 'port'?)"]


def test_wrong_type_names_the_value(tmp_path):
    write(tmp_path, PROJECT + "keep_releases: five\n")
    assert problems(tmp_path) == ["dsas.yaml:6: keep_releases: expected an integer, got a string 'five'"]


def test_quoted_port_is_a_string_not_a_port(tmp_path):
    write(tmp_path, stage=STAGE.replace("address: 10.0.0.1", "address: 10.0.0.1\n    port: '22'"))
    assert problems(tmp_path) == ["stages/production.yaml:4: hosts[0].port: expected an integer, got a string '22'"]


def test_missing_key(tmp_path):
    write(tmp_path, PROJECT.replace("deploy_to: /srv/shop\n", ""))
    assert problems(tmp_path) == ["dsas.yaml:1: deploy_to: missing required key"]


def test_unknown_role_with_suggestion(tmp_path):
    write(tmp_path, stage=STAGE.replace("roles: [web]", "roles: [wbe]"))
    assert problems(tmp_path) == [
        "stages/production.yaml:4: hosts[0].roles[0]: unknown role 'wbe' (did you mean 'web'?) "
        "(known roles: db, file, lb, memcached, pxe, web)"]


def test_project_defined_role_is_known(tmp_path):
    write(tmp_path, PROJECT + "roles:\n  worker: {release: true}\n",
          STAGE.replace("roles: [web]", "roles: [web, worker]"))
    stage = load_stage("production", tmp_path)
    assert stage.role_gets_release("worker")


def test_duplicate_host_name_and_address(tmp_path):
    write(tmp_path, stage=STAGE + "  - name: web1\n    address: 10.0.0.1\n    roles: [web]\n")
    assert problems(tmp_path) == [
        "stages/production.yaml:9: hosts[2].name: duplicate host 'web1' (also hosts[0])",
        "stages/production.yaml:10: hosts[2].address: duplicate host 10.0.0.1:22 (also hosts[0])",
    ]


def test_relative_deploy_to(tmp_path):
    write(tmp_path, PROJECT.replace("/srv/shop", "srv/shop"))
    assert problems(tmp_path) == ["dsas.yaml:3: deploy_to: must be an absolute path, got 'srv/shop'"]


def test_two_primaries_for_one_role(tmp_path):
    write(tmp_path, stage=STAGE + "  - name: db2\n    address: 10.0.0.3\n    roles: [db]\n    primary: true\n")
    assert problems(tmp_path) == [
        "stages/production.yaml:12: hosts[2].primary: second primary for role 'db' (hosts[1] is already primary)"]


def test_unknown_stage_lists_known_ones(tmp_path):
    write(tmp_path)
    assert problems(tmp_path, "prodution") == [
        "stages/: unknown stage 'prodution' (did you mean 'production'?) (known stages: production)"]


def test_duplicate_yaml_key(tmp_path):
    write(tmp_path, PROJECT + "application: other\n")
    assert problems(tmp_path) == ["dsas.yaml:6: application: duplicate key"]


def test_yaml_syntax_error_has_line(tmp_path):
    write(tmp_path, stage="hosts:\n  - name: [web1\n")
    (line,) = problems(tmp_path)
    assert line.startswith("stages/production.yaml:3: YAML syntax error:")


def test_hook_needs_one_kind(tmp_path):
    write(tmp_path, PROJECT + "hooks:\n  after_publish:\n    - {local: a, remote: b}\n")
    assert problems(tmp_path) == [
        "dsas.yaml:8: hooks.after_publish[0]: a hook needs exactly one of 'local' or 'remote'"]


def test_several_problems_reported_together(tmp_path):
    write(tmp_path, PROJECT + "parallelism: 0\nbranch: 3\n")
    assert problems(tmp_path) == [
        "dsas.yaml:7: branch: expected a string, got an integer 3",
        "dsas.yaml:6: parallelism: input should be greater than or equal to 1, got an integer 0",
    ]

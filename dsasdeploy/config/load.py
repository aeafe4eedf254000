"""Load dsas.yaml and stages/<stage>.yaml into a validated Stage.

Every problem is one line: `file:line: key.path: what is wrong`, all problems at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from ..errors import ConfigError, UsageError
from ..identity import local_user
from .messages import did_you_mean, error_message
from .names import check_name
from .rules import check_rules
from .schema import StageSpec
from .source import YamlDocument, format_key_path, load_yaml
from .stage import Host, Stage

PROJECT_FILE = "dsas.yaml"
STAGES_DIR = "stages"
# keys whose file:line a later error names (a bad branch, repo or key file found at run time)
BLAMED_KEYS = (("repo",), ("branch",), ("application",), ("ssh", "identity_file"), ("ssh", "known_hosts"),
               ("ssh", "ssh_config"))
MERGED_SECTIONS = ("ssh", "roles", "restart", "hooks", "lb", "rollout", "health", "warm", "provision")  # a stage overrides these key by key


def find_project_dir(start: Optional[Path] = None) -> Path:
    """The directory holding dsas.yaml: $DSAS_PROJECT, else `start` or cwd and its parents."""
    explicit = os.environ.get("DSAS_PROJECT")
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not (path / PROJECT_FILE).is_file():
            raise UsageError(f"DSAS_PROJECT={explicit}: no {PROJECT_FILE} there")
        return path
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / PROJECT_FILE).is_file():
            return candidate
    raise UsageError(f"no {PROJECT_FILE} in {here} or any parent directory (run `dsas init` to create one)")


def known_stages(project_dir: Path) -> list[str]:
    return sorted(p.stem for p in (project_dir / STAGES_DIR).glob("*.yaml"))


class _Origins:
    """Which file a key path of the merged data came from."""

    def __init__(self, project: YamlDocument, stage: YamlDocument):
        self.project, self.stage = project, stage

    def document(self, path: tuple) -> YamlDocument:
        if not path or path[0] == "hosts":
            return self.stage
        top = path[0]
        if top not in self.stage.data:
            return self.project
        if top in MERGED_SECTIONS and len(path) > 1 and isinstance(self.stage.data.get(top), dict):
            return self.stage if path[1] in self.stage.data[top] else self.project
        return self.stage

    def where(self, path: tuple, *, key: bool = False) -> str:
        return self.document(path).where(path, key=key)


def merge_settings(project: dict, stage: dict) -> dict:
    """Stage keys override project keys; the MERGED_SECTIONS mappings merge key by key."""
    merged = dict(project)
    for key, value in stage.items():
        if key in MERGED_SECTIONS and isinstance(value, dict) and isinstance(project.get(key), dict):
            merged[key] = {**project[key], **value}
        else:
            merged[key] = value
    return merged


def load_stage(stage_name: str, project_dir: Optional[Path] = None) -> Stage:
    """Read, merge and validate; raise ConfigError listing every problem found."""
    project_dir = project_dir or find_project_dir()
    stages = known_stages(project_dir)
    bad_name = check_name(stage_name)
    if bad_name:
        raise ConfigError(f"STAGE: {bad_name}; a stage is the name of a file in {STAGES_DIR}/ "
                          f"(known stages: {', '.join(stages) or 'none'})")
    stage_path = project_dir / STAGES_DIR / f"{stage_name}.yaml"
    if not stage_path.is_file():
        known = ", ".join(stages) or "none"
        raise ConfigError(
            f"{STAGES_DIR}/: unknown stage '{stage_name}'{did_you_mean(stage_name, stages)} (known stages: {known})"
        )
    project = load_yaml(project_dir / PROJECT_FILE, PROJECT_FILE)
    stage = load_yaml(stage_path, f"{STAGES_DIR}/{stage_name}.yaml")
    origins = _Origins(project, stage)
    problems: list[str] = []
    if "hosts" in project.data:
        problems.append(f"{project.where(('hosts',), key=True)}: hosts: hosts belong in a stage file, not in {PROJECT_FILE}")
    merged = merge_settings({k: v for k, v in project.data.items() if k != "hosts"}, stage.data)
    try:
        spec = StageSpec.model_validate(merged)
    except ValidationError as exc:
        for error in exc.errors():
            path = tuple(error["loc"])
            unknown = error["type"] == "extra_forbidden"
            if error["type"] == "missing":  # the file that should hold it; the line of its parent
                prefix = origins.document(path).where(path[:-1])
            else:
                prefix = origins.where(path, key=unknown)
            problems.append(f"{prefix}: {format_key_path(path)}: {error_message(error, StageSpec)}")
        raise ConfigError(problems) from None
    for path, message in check_rules(spec):
        problems.append(f"{origins.where(path)}: {format_key_path(path)}: {message}")
    if problems:
        raise ConfigError(problems)
    sources = {format_key_path(path): origins.where(path) for path in BLAMED_KEYS}
    return resolve_stage(stage_name, project_dir, spec, tuple(stages), sources)


def resolve_stage(name: str, project_dir: Path, spec: StageSpec, stages: tuple[str, ...],
                  sources: Optional[dict[str, str]] = None) -> Stage:
    """Apply defaults (ssh user/port, deploy_to) so every Host is complete."""
    default_user = spec.ssh.user or local_user()
    hosts = []
    for h in spec.hosts:
        primary = frozenset(h.roles if h.primary is True else (h.primary or []))
        hosts.append(Host(
            name=h.name, address=h.address, port=h.port or spec.ssh.port,
            user=h.user or default_user, roles=tuple(h.roles),
            primary_roles=primary, deploy_to=(h.deploy_to or spec.deploy_to).rstrip("/") or "/",
            mac=h.mac,
        ))
    settings = spec.model_copy(update={"hosts": []})
    return Stage(name=name, project_dir=project_dir, settings=settings, hosts=tuple(hosts), known_stages=stages,
                 sources=sources or {})


def stage_as_dict(stage: Stage) -> dict:
    """The resolved configuration, as `dsas config STAGE` prints it."""
    data = stage.settings.model_dump(mode="json", exclude={"hosts"})
    data["stage"] = stage.name
    data["hosts"] = [
        {"name": h.name, "address": h.address, "port": h.port, "user": h.user, "roles": list(h.roles),
         "primary": sorted(h.primary_roles), "deploy_to": h.deploy_to,
         "gets_release": bool(stage.release_hosts([h]))}
        for h in stage.hosts
    ]
    return data

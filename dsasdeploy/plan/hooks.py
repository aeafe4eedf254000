"""Pure: which hook commands run where, for a phase."""

from __future__ import annotations

from typing import Sequence

from ..config.stage import Host, Stage


def hook_name(when: str, phase: str, index: int) -> str:
    return f"{when}_{phase}[{index}]"


def remote_hooks(stage: Stage, when: str, phase: str, host: Host, run_hosts: Sequence[Host]) -> list[tuple[str, str]]:
    """(name, command) of the remote hooks of `when_phase` that run on `host`."""
    selected = []
    for index, hook in enumerate(stage.settings.hooks.for_phase(when, phase)):
        if hook.remote is None:
            continue
        eligible = [h for h in run_hosts if hook.roles is None or any(r in h.roles for r in hook.roles)]
        if hook.once:
            eligible = eligible[:1]
            if hook.roles:
                primary = stage.primary(hook.roles[0])
                if primary is not None and primary in run_hosts:
                    eligible = [primary]
        if host in eligible:
            selected.append((hook_name(when, phase, index), hook.remote))
    return selected


def local_hooks(stage: Stage, when: str, phase: str) -> list[tuple[str, str]]:
    """(name, command) of the local hooks of `when_phase`, in order."""
    return [(hook_name(when, phase, i), h.local) for i, h in enumerate(stage.settings.hooks.for_phase(when, phase))
            if h.local is not None]


def unmatched_remote_hooks(stage: Stage, run_hosts: Sequence[Host]) -> list[str]:
    """Hooks whose roles no host of this run holds (worth a warning: they will not run)."""
    found = []
    for name in type(stage.settings.hooks).model_fields:
        for index, hook in enumerate(getattr(stage.settings.hooks, name)):
            if hook.remote is not None and hook.roles and not any(r in h.roles for h in run_hosts for r in hook.roles):
                found.append(f"{name}[{index}]")
    return found

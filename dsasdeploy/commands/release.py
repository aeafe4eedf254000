"""Pure builders of the release phases' remote scripts, and the probe parser.

One script per host per phase:
  probe    (read-only; takes the lock when asked)  -> HostProbe
  prepare  (stdin = release archive): unpack, REVISION, shared links, hooks
  publish  switch `current` by rename, restart per role, hooks
  finish   revisions.log, prune, unlock
and the undo scripts: discard (before the switch) and revert (after it).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..paths import ReleasePaths, is_release_id
from . import manifest
from .base import Marker, mark, mark_literal, q
from .lock import LockOwner, acquire_lines, release_lines, report_lines
from .revlog import LogEntry, parse_lines

LOG_TAIL_LINES = 200


@dataclass(frozen=True)
class HostProbe:
    """What a probe found on one host."""

    exists: bool = False
    writable: bool = False
    current: Optional[str] = None
    releases: dict[str, str] = field(default_factory=dict)  # id -> revision ('' if unknown)
    missing_linked_files: tuple[str, ...] = ()
    disk_free_kb: Optional[int] = None
    lock: str = "unknown"  # acquired | held | free
    lock_owner: Optional[LockOwner] = None
    lock_heartbeat_age: Optional[int] = None  # seconds since the holder's last heartbeat (host clock)
    log: tuple[LogEntry, ...] = ()
    tar: bool = False
    base_intact: bool = False  # the current release's tree is exactly what was shipped (its manifest)

    @property
    def release_ids(self) -> list[str]:
        return sorted(self.releases)


def probe_script(paths: ReleasePaths, linked_files: Sequence[str], lock: Optional[LockOwner],
                 create: bool) -> list[str]:
    """Read the host's release state; `create` makes the layout, `lock` takes the lock."""
    d = q(paths.deploy_to)
    lines = []
    if create:
        lines.append(f"mkdir -p {q(paths.releases)} {q(paths.shared)} 2>/dev/null || true")
    lines += [
        f"if [ -d {d} ]; then " + mark("exists", "yes") + "; else " + mark("exists", "no") + "; fi",
        # writable: the deploy dir itself, or the nearest existing parent that would hold it
        f"w={d}; while [ ! -e \"$w\" ]; do w=$(dirname \"$w\"); done",
        "if [ -w \"$w\" ]; then " + mark("writable", "yes") + "; else " + mark("writable", "no") + "; fi",
        "if command -v tar >/dev/null 2>&1; then " + mark("tar", "yes") + "; fi",
        "df -Pk \"$w\" | awk 'NR==2 {print \"DSAS disk_free_kb \" $4}'",
        f"if [ -L {q(paths.current)} ]; then " + mark("current", f"$(readlink {q(paths.current)})") + "; fi",
        f"for r in {q(paths.releases)}/*; do",
        "  [ -d \"$r\" ] && [ ! -L \"$r\" ] || continue",
        "  " + mark("release", "$(basename \"$r\") $(head -c 80 \"$r/REVISION\" 2>/dev/null | head -n 1)"),
        "done",
    ]
    for item in linked_files:
        lines.append(f"[ -e {q(paths.shared_path(item))} ] || " + mark_literal("missing_linked_file", item))
    lines += manifest.verify_current_lines(paths)
    for log in (paths.revisions_log, paths.dsas_log):  # Capistrano's lines, then dsas's own
        lines.append(f"tail -n {LOG_TAIL_LINES} {q(log)} 2>/dev/null | sed 's/^/DSAS log /' || true")
    if lock is not None:
        lines += [f"[ -d {d} ] || exit 0"] + acquire_lines(paths, lock)
    else:
        lines += report_lines(paths)
    return lines


def parse_probe(markers: Sequence[Marker]) -> HostProbe:
    """Turn the probe's markers into a HostProbe."""
    releases: dict[str, str] = {}
    missing: list[str] = []
    lock_lines: list[str] = []
    log_lines: list[str] = []
    values: dict[str, str] = {}
    for m in markers:
        if m.key == "release":
            rid, _, revision = m.value.partition(" ")
            if is_release_id(rid):
                releases[rid] = revision.strip()
        elif m.key == "missing_linked_file":
            missing.append(m.value)
        elif m.key == "lockinfo":
            lock_lines.append(m.value)
        elif m.key == "log":
            log_lines.append(m.value)
        else:
            values[m.key] = m.value
    current = values.get("current")
    current_id = posixpath.basename(current.rstrip("/")) if current else None
    free = values.get("disk_free_kb", "")
    return HostProbe(
        exists=values.get("exists") == "yes",
        writable=values.get("writable") == "yes",
        current=current_id if current_id and is_release_id(current_id) else None,
        releases=releases,
        missing_linked_files=tuple(missing),
        disk_free_kb=int(free) if free.isdigit() else None,
        lock=values.get("lock", "unknown"),
        lock_owner=LockOwner.from_lines(lock_lines) if lock_lines else None,
        lock_heartbeat_age=_int_or_none(values.get("lockbeat", "")),
        log=tuple(parse_lines(log_lines)),
        tar=values.get("tar") == "yes",
        base_intact=bool(current_id) and values.get("base") == f"{current_id} intact",
    )


def _int_or_none(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class ReleaseContext:
    """What every phase script of one deploy knows (exported to hooks and restarts)."""

    stage: str
    release_id: str
    revision: str
    previous: Optional[str]  # the release `current` pointed to before this deploy

    def env(self, paths: ReleasePaths) -> dict[str, str]:
        return {
            "DSAS_STAGE": self.stage,
            "DSAS_RELEASE": self.release_id,
            "DSAS_RELEASE_PATH": paths.release(self.release_id),
            "DSAS_REVISION": self.revision,
            "DSAS_PREVIOUS_RELEASE": self.previous or "",
            "DSAS_DEPLOY_TO": paths.deploy_to,
        }


def _exports(ctx: ReleaseContext, paths: ReleasePaths) -> list[str]:
    return [f"export {k}={q(v)}" for k, v in ctx.env(paths).items()]


def run_in(directory: str, command: str, step: str) -> list[str]:
    """Announce a step, then run a user command in `directory` with its stdout on stderr.

    stdin is /dev/null: in the prepare phase stdin is the release archive, which a hook
    must never read from.
    """
    return [mark_literal("step", step), f"(cd {q(directory)} && sh -c {q(command)}) </dev/null 1>&2"]


def guarded(lines: list[str], error: str) -> str:
    """Run `lines` in a child shell that stops at the first failure; on failure set rc=1 and
    print an error marker. (`if ( set -e; ... )` would NOT stop: shells ignore -e there.)"""
    body = "\n".join(lines)
    return f"if sh -ec {q(body)}; then :; else rc=1; {mark_literal('error', error)}; fi"


def real_parents_lines(release: str, item: str, key: str) -> list[str]:
    """Refuse (exit 3, nothing written yet) when a parent of `item` inside `release` is a
    symlink or not a directory: the repository may commit `logs -> /elsewhere`, and
    mkdir, rm and ln must never act through it (nothing outside deploy_to is written)."""
    parts = [p for p in item.split("/") if p][:-1]
    lines = []
    for depth in range(1, len(parts) + 1):
        path = posixpath.join(release, *parts[:depth])
        where = f"{key} {item}: {path}"
        lines += [
            f"if [ -L {q(path)} ]; then printf '%s%s%s\\n' {q(where + ' is a symlink (to ')}"
            f" \"$(readlink {q(path)})\" {q('); refusing to write through it')} >&2; exit 3; fi",
            f"if [ -e {q(path)} ] && [ ! -d {q(path)} ]; then echo {q(where + ' is not a directory')} >&2; exit 3; fi",
        ]
    return lines


@dataclass(frozen=True)
class Delta:
    """A delta release: built on release `base` (hard links), minus `remove`, plus stdin's files."""

    base: str
    remove: tuple[str, ...]


def prepare_script(paths: ReleasePaths, ctx: ReleaseContext, linked_files: Sequence[str],
                   linked_dirs: Sequence[str], before: Sequence[tuple[str, str]] = (),
                   after: Sequence[tuple[str, str]] = (), delta: Optional[Delta] = None) -> list[str]:
    """Unpack the archive arriving on stdin into releases/<id> (on top of the base release's
    tree with a `delta`), record its manifest, and link shared paths.

    A failure (or a dropped connection) removes the half-made release dir and its manifest.
    Hooks are (name, command): `before` run in deploy_to, `after` in the new release.
    """
    r = paths.release(ctx.release_id)
    trash = " ".join(q(f) for f in manifest.manifest_files(paths, ctx.release_id))
    lines = _exports(ctx, paths)
    for name, command in before:
        lines += run_in(paths.deploy_to, command, f"hook {name}")
    lines += [
        f"R={q(r)}",
        f"trap 'rm -rf -- \"$R\" '{q(trash)} EXIT",
        "trap 'exit 129' HUP INT TERM PIPE",
        mark_literal("step", "unpack"),
        "mkdir -- \"$R\"",
        *(manifest.delta_lines(paths, delta.base, delta.remove) if delta is not None else []),
        "tar -xzf - -C \"$R\"",
        mark_literal("step", "manifest"),
        *manifest.write_lines(paths, ctx.release_id, [*linked_dirs, *linked_files]),
        mark_literal("step", "revision"),
        "rm -rf -- \"$R/REVISION\"",  # a REVISION committed as a symlink must not be written through
        f"printf '%s\\n' {q(ctx.revision)} > \"$R/REVISION\"",
    ]
    for item in linked_dirs:
        src, dst = paths.shared_path(item), posixpath.join(r, item)
        lines += [
            mark_literal("step", f"link_dir {item}"),
            *real_parents_lines(r, item, "linked_dirs"),
            f"mkdir -p {q(src)} {q(posixpath.dirname(dst))}",
            f"rm -rf -- {q(dst)}",
            f"ln -s {q(src)} {q(dst)}",
        ]
    for item in linked_files:
        src, dst = paths.shared_path(item), posixpath.join(r, item)
        lines += [
            mark_literal("step", f"link_file {item}"),
            f"[ -e {q(src)} ] || {{ echo {q(f'missing linked file {src}')} >&2; exit 3; }}",
            *real_parents_lines(r, item, "linked_files"),
            f"mkdir -p {q(posixpath.dirname(dst))}",
            f"rm -rf -- {q(dst)}",
            f"ln -s {q(src)} {q(dst)}",
        ]
    for name, command in after:
        lines += run_in(r, command, f"hook {name}")
    lines += ["trap - EXIT", mark_literal("prepared", ctx.release_id)]
    return lines


def switch_lines(paths: ReleasePaths, target: Optional[str]) -> list[str]:
    """Point `current` at releases/<target> with rename(2): `current` is never missing.

    target None removes `current` (undo of a first deploy, where nothing was live).
    """
    if target is None:
        return [mark_literal("step", "switch"), f"rm -f -- {q(paths.current)}", mark_literal("switched", "-")]
    tmp = posixpath.join(paths.releases, "current")
    return [
        mark_literal("step", "switch"),
        f"[ -d {q(paths.release(target))} ] || {{ echo {q(f'release {target} is missing')} >&2; exit 3; }}",
        f"rm -f -- {q(tmp)}",
        f"ln -s {q('releases/' + target)} {q(tmp)}",
        # mv into the directory renames over the old link; never `ln -sfn`, never GNU `mv -T`
        f"mv -- {q(tmp)} {q(paths.deploy_to + '/')}",
        mark_literal("switched", target),
    ]


def publish_script(paths: ReleasePaths, ctx: ReleaseContext, restarts: Sequence[tuple[str, str]],
                   before: Sequence[tuple[str, str]] = (), after: Sequence[tuple[str, str]] = (),
                   target: Optional[str] = None) -> list[str]:
    """Switch to `target` (default: this release) and restart each role's service."""
    target = target or ctx.release_id
    lines = _exports(ctx, paths)
    for name, command in before:
        lines += run_in(paths.release(target), command, f"hook {name}")
    lines += switch_lines(paths, target)
    for role, command in restarts:
        lines += run_in(paths.current, command, f"restart {role}")
    for name, command in after:
        lines += run_in(paths.current, command, f"hook {name}")
    lines.append(mark_literal("published", target))
    return lines


def log_lines(paths: ReleasePaths, entry: LogEntry) -> list[str]:
    """Append `entry` to dsas's log and, in Capistrano's format, to revisions.log."""
    lines = [f"printf '%s\\n' {q(entry.line())} >> {q(paths.dsas_log)}"]
    cap = entry.capistrano_line()
    if cap is not None:
        lines.append(f"printf '%s\\n' {q(cap)} >> {q(paths.revisions_log)}")
    return lines


def finish_script(paths: ReleasePaths, log_entry: LogEntry, prune: Sequence[str], lock_token: str,
                  hooks: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Record the deploy, remove pruned releases, release the lock."""
    lines = [mark_literal("step", "log"), *log_lines(paths, log_entry)]
    if prune:
        lines.append(mark_literal("step", "prune"))
        lines += [f"rm -rf -- {q(paths.release(rid))} {' '.join(map(q, manifest.manifest_files(paths, rid)))} && "
                  + mark_literal("pruned", rid) for rid in prune]
    for name, command in hooks:
        lines += run_in(paths.deploy_to, command, f"hook {name}")
    lines += release_lines(paths, lock_token)
    return lines


def migrate_script(ctx: ReleaseContext, paths: ReleasePaths, cwd: str, command: str,
                   before: Sequence[tuple[str, str]] = (), after: Sequence[tuple[str, str]] = (),
                   fallback_to_root: bool = False) -> list[str]:
    """The migration, once, on the db primary, with its hooks, in `cwd` (or / if it is
    missing and `fallback_to_root`: a db host usually has no deploy_to)."""
    lines = _exports(ctx, paths) + [f"MIGRATE_DIR={q(cwd)}"]
    if fallback_to_root:
        lines.append('[ -d "$MIGRATE_DIR" ] || MIGRATE_DIR=/')
    steps = [*(("hook " + n, c) for n, c in before), ("migrate", command), *(("hook " + n, c) for n, c in after)]
    for step, text in steps:
        lines += [mark_literal("step", step), f'(cd "$MIGRATE_DIR" && sh -c {q(text)}) </dev/null 1>&2']
    return lines + [mark_literal("migrated", ctx.release_id)]


def log_and_unlock_script(paths: ReleasePaths, log_entry: Optional[LogEntry], lock_token: str) -> list[str]:
    """Append to revisions.log (if given) and release this run's lock."""
    lines = log_lines(paths, log_entry) if log_entry else []
    return lines + release_lines(paths, lock_token)


def discard_script(paths: ReleasePaths, release_id: Optional[str], lock_token: str) -> list[str]:
    """Undo before any switch: remove the new release dir, release the lock."""
    lines = []
    if release_id:
        lines += [f"rm -rf -- {q(paths.release(release_id))} {' '.join(map(q, manifest.manifest_files(paths, release_id)))}",
                  mark_literal("discarded", release_id)]
    return lines + release_lines(paths, lock_token)


def revert_script(paths: ReleasePaths, ctx: ReleaseContext, restarts: Sequence[tuple[str, str]],
                  log_entry: Optional[LogEntry], lock_token: Optional[str]) -> list[str]:
    """Undo after a switch: back to ctx.previous, restart, log the failure, unlock.

    Strictness is off on purpose: every line is attempted; the markers tell what worked.
    """
    serving = ReleaseContext(ctx.stage, ctx.previous or "", "", ctx.previous)  # restarts see the old release
    lines = _exports(serving, paths) + [f"export DSAS_FAILED_RELEASE={q(ctx.release_id)}", "rc=0"]
    switch = switch_lines(paths, ctx.previous)
    if ctx.previous is not None:  # verify, not trust: current must now name the previous release
        switch.append(f"[ \"$(readlink {q(paths.current)})\" = {q('releases/' + ctx.previous)} ]")
    lines.append(guarded(switch, "switch"))
    if ctx.previous is not None:
        for role, command in restarts:
            lines.append("[ $rc = 0 ] && " + guarded(run_in(paths.current, command, f"restart {role}"),
                                                     f"restart_{role}"))
    if log_entry is not None:
        lines += log_lines(paths, log_entry)
    # the lock stays when the way back failed: the next deploy must not start on a half state
    unlock = ["if [ $rc = 0 ]; then", *release_lines(paths, lock_token), "fi"] if lock_token else []
    return lines + unlock + ['[ $rc = 0 ] && ' + mark_literal("reverted", ctx.previous or "-"), 'exit "$rc"']

"""Release manifests and delta releases, on the host. Pure builders.

When a release is unpacked, the host records what the tree holds (before REVISION, links
and hooks touch it): `<deploy_to>/.dsas-manifests/<id>.paths` (every file and symlink,
NUL-separated, sorted), `<id>.files` (the regular files among them) and `<id>.sum` (one
digest over each entry's type, mode, symlink target and content). The next deploy's probe
recomputes that digest over the current release: `intact` means the tree is exactly what was
shipped, so a delta can be built on it. A delta release copies the base's recorded entries as
hard links, removes every path that changed or went away (so a changed file is always a new
inode: the base release never changes), then unpacks the changed files from stdin.

Paths under linked_dirs/linked_files are left out: they become links to shared/ anyway.
"""

from __future__ import annotations

import posixpath
import re
from typing import Sequence

from ..paths import ReleasePaths
from .base import mark, q

MANIFESTS = ".dsas-manifests"


def manifest_dir(paths: ReleasePaths) -> str:
    return posixpath.join(paths.deploy_to, MANIFESTS)


def manifest_files(paths: ReleasePaths, release_id: str) -> list[str]:
    """The files of one release's manifest (removed with the release)."""
    base = posixpath.join(manifest_dir(paths), release_id)
    return [f"{base}.paths", f"{base}.files", f"{base}.sum"]


def _pattern(item: str) -> str:
    """A `find -path` pattern matching exactly ./item (glob characters escaped)."""
    return "./" + re.sub(r"([\\*?\[\]])", r"\\\1", item.strip("/"))


def _entries(linked: Sequence[str], kind: str) -> str:
    """find over the current directory: files (`f`) or files and symlinks (`fl`), linked paths pruned."""
    prunes = "".join(f"-path {q(_pattern(item))} -prune -o " for item in ["REVISION", *linked])
    test = "-type f" if kind == "f" else "\\( -type f -o -type l \\)"
    return f"find . -mindepth 1 {prunes}{test} -print0 | LC_ALL=C sort -z"


def digest_command(release_dir: str, paths_file: str, files_file: str) -> str:
    """Print the digest of the entries `paths_file` lists in `release_dir` (missing ones change it)."""
    return (f"( cd {release_dir} && {{ LC_ALL=C xargs -0r stat -c '%F %a %N' -- < {paths_file}; "
            f"LC_ALL=C xargs -0r sha256sum -- < {files_file}; }} 2>/dev/null | sha256sum | cut -c1-64 )")


def write_lines(paths: ReleasePaths, release_id: str, linked: Sequence[str], release_var: str = '"$R"') -> list[str]:
    """In prepare, right after unpacking into `release_var`: record the pristine tree."""
    p, f, s = (q(x) for x in manifest_files(paths, release_id))
    return [
        f"mkdir -p {q(manifest_dir(paths))}",
        f"( cd {release_var} && {_entries(linked, 'fl')} ) > {p}",
        f"( cd {release_var} && {_entries(linked, 'f')} ) > {f}",
        f"{digest_command(release_var, p, f)} > {s}",
    ]


def verify_current_lines(paths: ReleasePaths) -> list[str]:
    """In the probe: `DSAS base <id> intact|changed` for the current release, if it has a manifest."""
    m = q(manifest_dir(paths))
    p, f, s = (f'{m}/"$c".{ext}' for ext in ("paths", "files", "sum"))
    current = q(paths.releases) + '/"$c"'
    return [
        f"c=$(basename \"$(readlink {q(paths.current)} 2>/dev/null)\")",
        f"if [ -n \"$c\" ] && [ -f {s} ] && [ -f {p} ] && [ -f {f} ] && [ -d {q(paths.releases)}/\"$c\" ]; then",
        f"  if [ \"$( {digest_command(current, p, f)} )\" = \"$(cat {s})\" ]; then "
        + mark("base", "$c intact") + "; else " + mark("base", "$c changed") + "; fi",
        "fi",
    ]


def delta_lines(paths: ReleasePaths, base_id: str, remove: Sequence[str], release_var: str = '"$R"') -> list[str]:
    """In prepare, in place of a full unpack: the base's recorded entries as hard links, then every
    changed or deleted path removed (parents before children: a symlink of the base is gone
    before anything below its name is touched), empty directories dropped; the caller unpacks the
    changed files from stdin next."""
    base = q(paths.release(base_id))
    listed = q(manifest_files(paths, base_id)[0])
    lines = [f"( cd {base} && xargs -0r cp -al --parents -t {release_var} -- < {listed} )"]
    lines += [f"rm -rf -- {release_var}/{q(path)}" for path in sorted(remove)]
    lines.append(f"find {release_var} -mindepth 1 -depth -type d -empty -delete")
    return lines

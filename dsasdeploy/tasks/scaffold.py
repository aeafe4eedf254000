"""`dsas init`: scaffold a deploy repository that passes `dsas config`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from invoke import Exit, task

FILES = ("dsas.yaml", "stages/staging.yaml", "stages/production.yaml", "recipes/example.py",
         # add-server's boot-loader and installer templates (edit them: they are yours)
         "recipes/templates/_boot_args.j2", "recipes/templates/pxelinux.cfg.j2", "recipes/templates/grub.cfg.j2",
         "recipes/templates/preseed.cfg.j2", "recipes/templates/kickstart.cfg.j2",
         "recipes/templates/lab-installer.sh.j2")


@task(auto_shortflags=False, help={"directory": "Where to create the project (default: the current directory).",
                                   "force": "Overwrite files that already exist."})
def init(c, directory=".", force=False):
    """Create dsas.yaml, stages/staging.yaml, stages/production.yaml, recipes/example.py and
    recipes/templates/ (add-server's PXE and installer templates), all commented.

    Then edit the addresses and run `dsas config staging` and `dsas check staging`.
    """
    target = Path(directory)
    existing = [name for name in FILES if (target / name).exists()]
    if existing and not force:
        raise Exit(f"dsas: error: {', '.join(existing)} already exist in {target.resolve()} "
                   f"(use --force to overwrite)", code=2)
    root = resources.files("dsasdeploy") / "templates" / "init"
    for name in FILES:
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((root / name).read_text())
        print(f"created {path}")
    (target / "stages" / "known_hosts").touch()
    print("next: edit the addresses, add host keys to stages/known_hosts "
          "(ssh-keyscan, checked out of band), then `dsas config staging` and `dsas check staging`")

"""A fleet unit's [Install] section, applied as `systemctl enable --runtime` would.

fleet enabled the units it loaded (fleet's TestInstallUnit): a unit with ``WantedBy=main.service``
is started by systemd whenever main.service starts. The links live where fleet links its unit
files (the manager's runtime unit directory), so they vanish with it at reboot, and they point
at the file fleet wrote. Only links this module made are ever removed: a link is ours when it
points at ``files_dir/<unit>``.

``link_installed`` after writing a unit file, ``unlink_installed`` before rewriting or removing
it (it reads the file as written, so the links of the old [Install] section are the ones removed).
"""

from __future__ import annotations

import logging
import os
import pathlib

from fleetd.systemd._manager import is_unit_name
from fleetd.unit import UnitError, UnitFile, expand_specifiers, parse_name

log = logging.getLogger("fleetd.systemd.install")

#: [Install] option -> suffix of the dependency directory `systemctl enable` links into.
DEPENDENCY_DIRS = {"WantedBy": ".wants", "RequiredBy": ".requires", "UpheldBy": ".upholds"}


def install_links(name: str, text: str) -> list[tuple[str, str]]:
    """(directory, link name) pairs, relative to the link directory, that enabling unit
    ``name`` with unit file ``text`` creates: ``main.service.wants/name`` for WantedBy=,
    ``.requires`` for RequiredBy=, ``.upholds`` for UpheldBy=, and ``("", alias)`` for Alias=.

    Values are whitespace-separated lists with specifiers (%n %N %p %i) expanded; an empty
    assignment clears the list, as in systemd. Invalid unit names are skipped with a warning.
    A file that does not parse has no links."""
    if "[Install]" not in text:
        return []
    try:
        unit_file = UnitFile.parse(text, name=name)
        unit_name = parse_name(name)
    except UnitError:
        return []
    lists: dict[str, list[str]] = {option: [] for option in (*DEPENDENCY_DIRS, "Alias")}
    for section, option, value in unit_file.options:
        if section != "Install" or option not in lists:
            continue
        items = value.split()
        if not items:
            lists[option] = []
        lists[option].extend(expand_specifiers(item, unit_name) for item in items)
    out: list[tuple[str, str]] = []
    for option, targets in lists.items():
        for target in dict.fromkeys(targets):
            if not is_unit_name(target) or target.endswith("@." + target.rsplit(".", 1)[-1]):
                log.warning("unit %s: [Install] %s=%s ignored: not a unit name", name, option,
                            target)
                continue
            if option == "Alias":
                if target != name and target.rsplit(".", 1)[1] == unit_name.suffix:
                    out.append(("", target))
                else:
                    log.warning("unit %s: [Install] Alias=%s ignored: an alias needs another "
                                "name with the same unit type", name, target)
            else:
                out.append((target + DEPENDENCY_DIRS[option], name))
    return out


def link_installed(name: str, text: str, link_dir: pathlib.Path,
                   files_dir: pathlib.Path) -> None:
    """Create the [Install] links of unit ``name`` (its file is ``files_dir/name``) under
    ``link_dir``; an existing path that is not our link is left alone (with a warning)."""
    target = files_dir / name
    for directory, link_name in install_links(name, text):
        folder = link_dir / directory if directory else link_dir
        link = folder / link_name
        if _is_ours(link, target):
            continue
        if link.exists() or link.is_symlink():
            log.warning("unit %s: not linking %s: it exists and was not made by fleet", name,
                        link)
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link)
        except OSError as e:
            log.warning("unit %s: linking %s failed: %s", name, link, e)


def unlink_installed(name: str, link_dir: pathlib.Path, files_dir: pathlib.Path) -> None:
    """Remove the [Install] links that the unit file ``files_dir/name``, as it is on disk now,
    made under ``link_dir`` (and dependency directories left empty by that)."""
    target = files_dir / name
    try:
        text = target.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return
    for directory, link_name in install_links(name, text):
        folder = link_dir / directory if directory else link_dir
        link = folder / link_name
        if not _is_ours(link, target):
            continue
        try:
            link.unlink()
            if directory and not any(folder.iterdir()):
                folder.rmdir()
        except OSError as e:
            log.warning("unit %s: removing %s failed: %s", name, link, e)


def _is_ours(link: pathlib.Path, target: pathlib.Path) -> bool:
    return link.is_symlink() and pathlib.Path(os.readlink(link)) == target

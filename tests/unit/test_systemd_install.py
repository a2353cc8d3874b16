"""[Install] sections as `systemctl enable --runtime` applies them (fleetd.systemd.install)."""

from __future__ import annotations

import os
import pathlib

import pytest

from fleetd.systemd.install import install_links, link_installed, unlink_installed

BODY = "[Service]\nExecStart=/bin/true\n"


@pytest.mark.parametrize(("name", "install", "links"), [
    pytest.param("d.service", "", [], id="no_install_section"),
    pytest.param("d.service", "[Install]\nWantedBy=main.service\n",
                 [("main.service.wants", "d.service")], id="wanted_by"),
    pytest.param("d.service", "[Install]\nWantedBy=a.service b.target\nRequiredBy=c.service\n",
                 [("a.service.wants", "d.service"), ("b.target.wants", "d.service"),
                  ("c.service.requires", "d.service")], id="lists_and_required_by"),
    pytest.param("d.service", "[Install]\nWantedBy=a.service\nWantedBy=\nWantedBy=b.service\n",
                 [("b.service.wants", "d.service")], id="empty_assignment_resets"),
    pytest.param("side@7.service", "[Install]\nWantedBy=web@%i.service\n",
                 [("web@7.service.wants", "side@7.service")], id="specifiers_expanded"),
    pytest.param("d.service", "[Install]\nUpheldBy=m.service\nAlias=dee.service\n",
                 [("m.service.upholds", "d.service"), ("", "dee.service")], id="upheld_alias"),
    pytest.param("d.service", "[Install]\nWantedBy=../../etc/x.service no/slash.service\n",
                 [], id="path_like_names_are_refused"),
    pytest.param("d.service", "[Install]\nAlias=d.socket d.service\n", [],
                 id="alias_of_another_type_or_itself_refused"),
    pytest.param("d.service", "[Install\nWantedBy=x.service\n", [], id="unparsable_file"),
])
def test_install_links(name: str, install: str, links: list[tuple[str, str]]) -> None:
    assert install_links(name, BODY + install) == links


def test_link_then_unlink_leaves_only_what_was_there(tmp_path: pathlib.Path) -> None:
    link_dir, files_dir = tmp_path / "systemd", tmp_path / "fleet"
    link_dir.mkdir()
    files_dir.mkdir()
    (link_dir / "main.service.wants").mkdir()
    os.symlink("/elsewhere/other.service", link_dir / "main.service.wants" / "other.service")
    text = BODY + "[Install]\nWantedBy=main.service x.target\n"
    (files_dir / "d.service").write_text(text)
    link_installed("d.service", text, link_dir, files_dir)
    assert os.readlink(link_dir / "main.service.wants" / "d.service") == str(
        files_dir / "d.service")
    assert (link_dir / "x.target.wants" / "d.service").is_symlink()
    link_installed("d.service", text, link_dir, files_dir)  # idempotent
    unlink_installed("d.service", link_dir, files_dir)
    assert sorted(p.name for p in link_dir.iterdir()) == ["main.service.wants"]
    assert [p.name for p in (link_dir / "main.service.wants").iterdir()] == ["other.service"]


def test_foreign_paths_are_never_replaced_or_removed(tmp_path: pathlib.Path) -> None:
    link_dir, files_dir = tmp_path / "systemd", tmp_path / "fleet"
    (link_dir / "main.service.wants").mkdir(parents=True)
    files_dir.mkdir()
    foreign = link_dir / "main.service.wants" / "d.service"
    os.symlink("/usr/lib/systemd/system/d.service", foreign)
    text = BODY + "[Install]\nWantedBy=main.service\n"
    (files_dir / "d.service").write_text(text)
    link_installed("d.service", text, link_dir, files_dir)
    unlink_installed("d.service", link_dir, files_dir)
    assert os.readlink(foreign) == "/usr/lib/systemd/system/d.service"

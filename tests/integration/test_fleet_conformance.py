"""fleet behaviours fleet users rely on (issue 9), through the real fleetctl on a real
3-machine cluster: instances started from a template file on disk, specifiers in a template's
[X-Fleet], global units with Conflicts, `--replace` of submit/load/start, MachineOf cycles,
list-unit-files as JSON. fleet's rules come from its fleetctl (lazyCreateUnits,
getUnitFileFromTemplate, checkReplaceUnitState) and api/units.go."""

from __future__ import annotations

import json
import pathlib

import pytest

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import machines_running, unit_rows, wait_until

SLEEPER = "[Unit]\nDescription=sleeps\n[Service]\nExecStart=/bin/sleep 3000\n"


pytestmark = pytest.mark.usefixtures("clean_units")


def unit_files(cluster: LocalCluster) -> list[str]:
    r = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def cat(cluster: LocalCluster, name: str) -> str:
    r = cluster.fleetctl("cat", name)
    assert r.returncode == 0, r.stderr
    return r.stdout


def write(directory: pathlib.Path, name: str, text: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return str(directory / name)


# --- 1: instances from a template file next to the argument ----------------------------------
def test_batch_of_instances_from_a_template_on_disk(cluster: LocalCluster,
                                                    tmp_path: pathlib.Path) -> None:
    write(tmp_path / "fixtures", "batch@.service", SLEEPER)
    paths = [str(tmp_path / "fixtures" / f"batch@{i:02d}.service") for i in range(1, 13)]
    r = cluster.fleetctl("submit", *paths)
    assert r.returncode == 0, r.stderr
    # Only the instances are submitted (fleet's WaitForNUnitFiles counts exactly them).
    assert unit_files(cluster) == [f"batch@{i:02d}.service" for i in range(1, 13)]
    assert cat(cluster, "batch@07.service") == SLEEPER
    r = cluster.fleetctl("start", *paths[:3])
    assert r.returncode == 0, r.stderr
    wait_until(lambda: all(machines_running(cluster, f"batch@{i:02d}.service")
                           for i in (1, 2, 3)), what="three instances active")
    r = cluster.fleetctl("load", "--no-block", str(tmp_path / "fixtures" / "batch@99.service"))
    assert r.returncode == 0, r.stderr
    assert "batch@99.service" in unit_files(cluster)


def test_instance_uses_the_clusters_template_over_the_local_one(cluster: LocalCluster,
                                                                tmp_path: pathlib.Path) -> None:
    assert cluster.fleetctl("submit", write(tmp_path / "a", "web@.service", SLEEPER)
                            ).returncode == 0
    local = SLEEPER.replace("sleeps", "sleeps, edited")
    path = write(tmp_path / "b", "web@.service", local)
    r = cluster.fleetctl("submit", str(pathlib.Path(path).parent / "web@1.service"))
    assert r.returncode == 0, r.stderr
    assert "differs" in r.stderr and "web@.service" in r.stderr
    assert cat(cluster, "web@1.service") == SLEEPER  # fleet: the cluster's template wins


def test_instance_without_any_template_is_a_clear_error(cluster: LocalCluster,
                                                        tmp_path: pathlib.Path) -> None:
    write(tmp_path, "ok.service", SLEEPER)
    r = cluster.fleetctl("submit", str(tmp_path / "ok.service"), str(tmp_path / "nope@1.service"))
    assert r.returncode == 1
    assert "nope@.service" in r.stderr and "Traceback" not in r.stderr
    assert unit_files(cluster) == []  # nothing submitted unless every argument is valid


def test_start_replace_of_an_instance_takes_the_new_template(cluster: LocalCluster,
                                                             tmp_path: pathlib.Path) -> None:
    write(tmp_path, "rep@.service", SLEEPER)
    inst = str(tmp_path / "rep@1.service")
    assert cluster.fleetctl("start", inst).returncode == 0
    [mid] = wait_until(lambda: machines_running(cluster, "rep@1.service"), what="rep@1 active")
    pid = cluster.machine(mid).main_pid("rep@1.service")
    v2 = SLEEPER.replace("3000", "3001")
    write(tmp_path, "rep@.service", v2)
    r = cluster.fleetctl("start", inst)  # without --replace: a warning, the unit is kept
    assert r.returncode == 0 and "add --replace" in r.stderr
    assert cat(cluster, "rep@1.service") == SLEEPER
    r = cluster.fleetctl("start", "--replace", inst)
    assert r.returncode == 0, r.stderr
    assert cat(cluster, "rep@1.service") == v2
    wait_until(lambda: cluster.machine(mid).main_pid("rep@1.service") not in (0, pid),
               what="rep@1 restarted with the new file")
    r = cluster.fleetctl("start", "--replace", inst)
    assert r.returncode == 0 and "nothing to do" in r.stdout


# --- 7: load --replace, and which states each command may replace in ---------------------------
def test_load_replace_and_fleets_replace_rules(cluster: LocalCluster,
                                               tmp_path: pathlib.Path) -> None:
    path = write(tmp_path, "lr.service", SLEEPER)
    assert cluster.fleetctl("load", path).returncode == 0
    v2 = SLEEPER.replace("sleeps", "sleeps v2")
    write(tmp_path, "lr.service", v2)
    r = cluster.fleetctl("submit", "--replace", path)  # submit may not touch a loaded unit
    assert r.returncode == 0 and "can not replace" in r.stderr
    assert cat(cluster, "lr.service") == SLEEPER
    r = cluster.fleetctl("load", "--replace", path)
    assert r.returncode == 0, r.stderr
    assert cat(cluster, "lr.service") == v2
    rows = wait_until(lambda: [row for row in unit_rows(cluster) if row["unit"] == "lr.service"],
                      what="lr.service loaded")
    assert rows[0]["active"] == "inactive"
    r = cluster.fleetctl("load", "--replace", str(tmp_path / "absent.service"))
    assert r.returncode == 1 and "absent.service" in r.stderr


# --- 2: specifiers in a template's [X-Fleet] ----------------------------------------------------
def test_template_specifiers_are_expanded_per_instance(cluster: LocalCluster,
                                                       tmp_path: pathlib.Path) -> None:
    pinned = SLEEPER + "[X-Fleet]\nMachineMetadata=region=%i\nConflicts=pinned@%i.service\n"
    tmpl = write(tmp_path, "pinned@.service", pinned)
    r = cluster.fleetctl("submit", tmpl)
    assert r.returncode == 0, r.stderr  # the template itself is valid
    r = cluster.fleetctl("start", str(tmp_path / "pinned@us-west.service"))
    assert r.returncode == 0, r.stderr
    west = cluster.machines[1].machine_id  # the only us-west machine
    wait_until(lambda: machines_running(cluster, "pinned@us-west.service") == [west],
               what="pinned@us-west on the us-west machine")
    r = cluster.fleetctl("start", "--no-block", "pinned@mars.service")
    assert r.returncode == 0, r.stderr
    why = cluster.fleetctl("why", "pinned@mars.service").stdout
    assert "region=mars" in why
    r = cluster.fleetctl("start", "--no-block", "pinned@.service")
    assert r.returncode == 1 and "cannot activate template" in r.stderr


# --- 3: Global=true with Conflicts -----------------------------------------------------------
def test_global_units_that_conflict_run_once_per_machine(cluster: LocalCluster,
                                                         tmp_path: pathlib.Path) -> None:
    body = SLEEPER + "[X-Fleet]\nGlobal=true\nConflicts=conflict-global.*.service\n"
    first = write(tmp_path, "conflict-global.1.service", body)
    second = write(tmp_path, "conflict-global.2.service", body)
    r = cluster.fleetctl("start", first)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: len(machines_running(cluster, "conflict-global.1.service")) == 3,
               what="first global everywhere")
    r = cluster.fleetctl("start", "--no-block", second)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: "Conflicts" in cluster.fleetctl("why", "conflict-global.2.service").stdout,
               what="second global judged")
    assert machines_running(cluster, "conflict-global.2.service") == []
    assert len(machines_running(cluster, "conflict-global.1.service")) == 3
    r = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit,dstate,state,tmachine")
    assert r.returncode == 0 and "deprecated" in r.stderr  # fleet's warning for tmachine
    assert r.stdout.split("\n")[0].split() == ["conflict-global.1.service", "launched", "-",
                                                "global"]


# --- 9: MachineOf cycles --------------------------------------------------------------------
def test_machine_of_cycle_is_refused_and_the_cluster_unchanged(cluster: LocalCluster,
                                                               tmp_path: pathlib.Path) -> None:
    a = write(tmp_path, "a.service", SLEEPER + "[X-Fleet]\nMachineOf=b.service\n")
    b = write(tmp_path, "b.service", SLEEPER + "[X-Fleet]\nMachineOf=c.service\n")
    c = write(tmp_path, "c.service", SLEEPER + "[X-Fleet]\nMachineOf=a.service\n")
    assert cluster.fleetctl("submit", a, b).returncode == 0
    for cmd in ("submit", "start", "load"):
        r = cluster.fleetctl(cmd, "--no-block", c) if cmd != "submit" else \
            cluster.fleetctl(cmd, c)
        assert r.returncode == 1, (cmd, r.stdout)
        assert "c.service -> a.service -> b.service -> c.service" in r.stderr, r.stderr
    assert unit_files(cluster) == ["a.service", "b.service"]


# --- 8: list-unit-files -o json ----------------------------------------------------------------
def test_list_unit_files_json_names_the_target_machine(cluster: LocalCluster,
                                                       tmp_path: pathlib.Path) -> None:
    assert cluster.fleetctl("start", write(tmp_path, "one.service", SLEEPER)).returncode == 0
    [mid] = machines_running(cluster, "one.service")
    r = cluster.fleetctl("list-unit-files", "-o", "json", "--fields",
                         "unit,hash,dstate,state,target,global,desc")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert row["target"] == mid  # the table shows it as id/ip; JSON has the full id
    assert row["dstate"] == "launched" and row["state"] == "launched"
    assert row["global"] is False and row["desc"] == "sleeps" and len(row["hash"]) == 40


# --- 4: [Install] sections (fleet's TestInstallUnit) ----------------------------------------------
def test_install_section_makes_a_loaded_unit_start_and_stop_with_its_main_unit(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    main = write(tmp_path, "main.service", SLEEPER)
    disc = write(tmp_path, "disc.service",
                 "[Unit]\nBindsTo=main.service\n[Service]\nExecStart=/bin/sleep 3000\n"
                 "[Install]\nWantedBy=main.service\n[X-Fleet]\nMachineOf=main.service\n")
    r = cluster.fleetctl("load", main, disc)
    assert r.returncode == 0, r.stderr
    rows = wait_until(lambda: [row for row in unit_rows(cluster) if row["unit"] == "disc.service"],
                      what="disc.service loaded")
    machine = cluster.machine(rows[0]["machine"])
    assert not machine.is_active("disc.service")
    assert cluster.fleetctl("start", main).returncode == 0
    wait_until(lambda: machine.is_active("disc.service"), what="disc started with main")
    assert machines_running(cluster, "disc.service") == [machine.machine_id]
    assert cluster.fleetctl("stop", main).returncode == 0
    wait_until(lambda: not machine.is_active("disc.service"), what="disc stopped with main")
    wants = machine.systemctl("show", "-p", "Wants", "main.service").stdout
    assert "disc.service" in wants
    # Destroying the unit removes its links: main no longer pulls it in.
    assert cluster.fleetctl("destroy", "disc.service").returncode == 0
    wait_until(lambda: "disc.service" not in machine.systemctl(
        "show", "-p", "Wants", "main.service").stdout, what="links removed")
    assert cluster.fleetctl("start", main).returncode == 0
    assert not machine.is_active("disc.service")

"""Run by the python-fleet virtualenv (not by pytest): drive fleet-py's HTTP API v1 with
python-fleet (PyPI "fleet", fleet's Python client) as its users do, print what it saw as JSON.

Usage: python python_fleet_driver.py HTTP_SOCKET_PATH
"""

import json
import sys
import time
import urllib.parse

import fleet.v1 as fleet

SLEEPER = "[Unit]\nDescription=python-fleet\n[Service]\nExecStart=/bin/sleep 3000\n"
PINNED = "[Service]\nExecStart=/bin/sleep 3000\n[X-Fleet]\nMachineMetadata=region=%i\n"


def error(fn):
    try:
        fn()
    except fleet.APIError as e:
        return [e.code, e.message]
    return None


def main():
    client = fleet.Client("http+unix://" + urllib.parse.quote(sys.argv[1], safe=""))
    out = {"machines": [m.as_dict() for m in client.list_machines()]}
    out["created"] = client.create_unit("pyf.service", fleet.Unit(from_string=SLEEPER)).as_dict()
    # a template created with python-fleet's default desiredState (launched) is kept submitted
    out["template"] = client.create_unit("pyt@.service",
                                         fleet.Unit(from_string=PINNED)).as_dict()
    client.create_unit("pyt@us-west.service", fleet.Unit(from_string=PINNED))
    out["activate_template"] = error(
        lambda: client.set_unit_desired_state("pyt@.service", "launched"))
    deadline = time.time() + 30
    active = set()
    while time.time() < deadline and active != {"pyf.service", "pyt@us-west.service"}:
        active = {s.name for s in client.list_unit_states() if s.systemdActiveState == "active"}
        time.sleep(0.2)
    out["states"] = [s.as_dict() for s in client.list_unit_states()]
    out["units"] = [u.as_dict() for u in client.list_units()]
    out["stopped"] = client.set_unit_desired_state("pyf.service", "loaded").as_dict()
    client.destroy_unit("pyf.service")
    out["missing"] = error(lambda: client.get_unit("pyf.service"))
    out["destroy_missing"] = error(lambda: client.destroy_unit("pyf.service"))
    out["invalid"] = error(lambda: client.create_unit(
        "bad.service", fleet.Unit(from_string="[X-Fleet]\nGlobal=true\nMachineOf=x.service\n")))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

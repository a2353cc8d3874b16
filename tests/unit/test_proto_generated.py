"""The committed gRPC code in fleetd/api/pb matches proto/, and the proto documents its fields."""

from __future__ import annotations

import importlib.util
import pathlib
import re
from types import ModuleType

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATE = ROOT / "proto" / "generate.py"
PROTO = ROOT / "proto" / "fleetpy" / "v1" / "fleet.proto"
COMMITTED = ROOT / "fleetd" / "api" / "pb"
EXPECTED_FILES = {"fleet_pb2.py", "fleet_pb2.pyi", "fleet_pb2_grpc.py", "fleet_lite.py"}
HINT = "generated code is stale: run `python proto/generate.py` and commit fleetd/api/pb/"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_proto_generate", GENERATE)
    assert spec is not None and spec.loader is not None, f"cannot import {GENERATE}"
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("pb")
    paths = _load_generator().generate(out)
    return {p.name: p.read_bytes() for p in paths}


def test_generator_writes_the_expected_files(generated: dict[str, bytes]) -> None:
    assert set(generated) == EXPECTED_FILES


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_committed_generated_file_is_up_to_date(generated: dict[str, bytes], name: str) -> None:
    committed = COMMITTED / name
    assert committed.exists(), f"{committed} is missing; {HINT}"
    assert committed.read_bytes() == generated[name], f"{committed} differs; {HINT}"


def test_generated_grpc_module_imports_from_the_package_not_the_proto_path(
        generated: dict[str, bytes]) -> None:
    text = generated["fleet_pb2_grpc.py"].decode()
    assert "from fleetd.api.pb import fleet_pb2" in text
    assert "from fleetpy.v1 import" not in text


# A field line inside a message: `[repeated|optional] type name = N;` or `map<K, V> name = N;`.
FIELD = re.compile(r"^\s*(?:(?:repeated|optional)\s+)?(?:map<[^>]+>|[\w.]+)"
                   r"\s+\w+\s*=\s*\d+\s*[;\[]")


def _undocumented_fields(lines: list[str]) -> list[str]:
    missing = []
    depth_in_message = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if re.match(r"^message\s+\w+\s*\{", stripped):
            depth_in_message += 1
        if depth_in_message and FIELD.match(line):
            prev = lines[i - 1].strip() if i else ""
            if not prev.startswith("//"):
                missing.append(f"{PROTO.name}:{i + 1}: {stripped}")
        if depth_in_message and "}" in stripped:
            depth_in_message -= stripped.count("}")
            depth_in_message = max(depth_in_message, 0)
    return missing


def test_every_message_field_is_preceded_by_a_comment() -> None:
    lines = PROTO.read_text().splitlines()
    assert any(FIELD.match(line) for line in lines), "no field found: the field regex is broken"
    missing = _undocumented_fields(lines)
    assert not missing, "undocumented proto fields:\n" + "\n".join(missing)


def test_field_comment_check_detects_an_undocumented_field() -> None:
    lines = ["message M {", "  // documented", "  string a = 1;", "  int32 b = 2;",
             "  map<string, string> c = 3;", "}"]
    assert _undocumented_fields(lines) == [
        f"{PROTO.name}:4: int32 b = 2;", f"{PROTO.name}:5: map<string, string> c = 3;"]


def test_unit_is_global_keeps_global_as_its_json_name() -> None:
    from google.protobuf import json_format

    from fleetd.api.pb import fleet_pb2 as pb

    assert json_format.MessageToDict(pb.Unit(name="g.service", is_global=True)) == {
        "name": "g.service", "global": True}
    assert json_format.Parse('{"global": true}', pb.Unit()).is_global is True

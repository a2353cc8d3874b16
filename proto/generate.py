"""Regenerate the committed gRPC code in fleetd/api/pb from proto/ (python proto/generate.py)."""

from __future__ import annotations

import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "fleetd" / "api" / "pb"
PROTOS = ["fleetpy/v1/fleet.proto"]


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write fleet_pb2.py, fleet_pb2.pyi and fleet_pb2_grpc.py into out_dir; return them."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *PROTOS]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted(pathlib.Path(tmp, "fleetpy", "v1").glob("fleet_pb2*")):
            text = src.read_text().replace("from fleetpy.v1 import fleet_pb2",
                                           "from fleetd.api.pb import fleet_pb2")
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
        return written


if __name__ == "__main__":
    for p in generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(p)

"""Regenerate the Python code for the .proto files under protos/ (run from anywhere).

Usage: ``python protos/generate.py [--out DIR]``; the default output is the repository root, so
``protos/digits/v1/digits.proto`` becomes ``digits/v1/digits_pb2.py`` and ``digits_pb2_grpc.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on every .proto; returns the relative .proto paths compiled."""
    out_dir.mkdir(parents=True, exist_ok=True)
    relative = [str(path.relative_to(PROTO_ROOT)) for path in proto_files()]
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto shipped with grpcio-tools
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *relative,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {relative}")
    return [Path(name) for name in relative]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: repository root)")
    args = parser.parse_args(argv)
    for name in generate(args.out):
        print(f"generated code for {name} under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Copy (trimmed) the upstream KServe and Katib schemas the deployment tests validate against.

    python scripts/vendor-crds.py [SOURCE_DIR]   # default: ../shared/crds beside the repository

Reads the upstream files named in tests/deploy/crds/README.md and writes, unchanged in content:
- ``kserve-<kind>.schema.json``: the ``openAPIV3Schema`` of each CRD version we ship (the rest of the
  CRD, printer columns and such, is dropped);
- ``katib-openapi.json``: Katib's OpenAPI 3 document cut down to the schemas reachable from
  ``v1beta1.Experiment`` (the Experiment CRD itself has no schema: x-kubernetes-preserve-unknown-fields).
Output is JSON with sorted keys, so a rerun on the same sources changes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "tests" / "deploy" / "crds"
KSERVE = {
    "kserve-inferenceservices.yaml": ("v1beta1", "kserve-inferenceservice.schema.json"),
    "kserve-servingruntimes.yaml": ("v1alpha1", "kserve-servingruntime.schema.json"),
    "kserve-clusterservingruntimes.yaml": ("v1alpha1", "kserve-clusterservingruntime.schema.json"),
}
KATIB_SPEC = "katib-api-openapi-spec.json"
KATIB_ROOT = "v1beta1.Experiment"
REF_PREFIX = "#/components/schemas/"


def crd_schema(path: Path, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return {
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version,
        "openAPIV3Schema": entry["schema"]["openAPIV3Schema"],
    }


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            found.add(ref[len(REF_PREFIX) :])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def katib_subset(spec: dict[str, Any], root: str) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    keep: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo.extend(refs(schemas[name]) - keep)
    return {
        "openapi": spec["openapi"],
        "info": spec["info"],
        "components": {"schemas": {name: schemas[name] for name in sorted(keep)}},
    }


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else REPO.parent / "shared" / "crds"
    if not source.is_dir():
        print(f"error: {source} is not a folder (pass the one with the upstream files)", file=sys.stderr)
        return 2
    TARGET.mkdir(parents=True, exist_ok=True)
    for name, (version, out) in KSERVE.items():
        write(TARGET / out, crd_schema(source / name, version))
    katib = json.loads((source / KATIB_SPEC).read_text())
    write(TARGET / "katib-openapi.json", katib_subset(katib, KATIB_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

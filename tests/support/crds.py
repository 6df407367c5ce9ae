"""Strict validation against the vendored upstream schemas (tests/deploy/crds/, scripts/vendor-crds.py).

The API server rejects (``kubectl``'s default ``--validate=strict``) every field a structural schema does
not list, unless that schema says ``x-kubernetes-preserve-unknown-fields``; JSON Schema allows unknown
fields unless ``additionalProperties: false``. :func:`strict` adds exactly that, so ``jsonschema``
checks what the API server checks: types, enums, patterns, required fields and no unknown fields.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import jsonschema

from tests.support import REPO

CRDS = REPO / "tests" / "deploy" / "crds"
PRESERVE = "x-kubernetes-preserve-unknown-fields"


def strict(schema: Any) -> Any:
    """A copy of ``schema`` where every object that lists ``properties`` rejects other keys."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and not schema.get(PRESERVE) and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


@functools.cache
def _crd(kind_file: str) -> dict[str, Any]:
    return json.loads((CRDS / kind_file).read_text())


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    """A strict validator for one vendored KServe kind (``InferenceService``, ``ServingRuntime``, ...)."""
    files = {
        "InferenceService": "kserve-inferenceservice.schema.json",
        "ServingRuntime": "kserve-servingruntime.schema.json",
        "ClusterServingRuntime": "kserve-clusterservingruntime.schema.json",
    }
    crd = _crd(files[kind])
    schema = strict(copy.deepcopy(crd["openAPIV3Schema"]))
    # apiVersion and kind are fixed by the CRD itself.
    schema["properties"]["apiVersion"] = {"const": f"{crd['group']}/{crd['version']}"}
    schema["properties"]["kind"] = {"const": crd["kind"]}
    return jsonschema.Draft7Validator(schema)


@functools.cache
def katib_validator(definition: str = "v1beta1.Experiment") -> jsonschema.protocols.Validator:
    """A strict validator for a type of Katib's OpenAPI document (references resolved inside it)."""
    document = strict(_crd("katib-openapi.json"))
    root = {"$ref": f"#/components/schemas/{definition}", "components": document["components"]}
    return jsonschema.Draft7Validator(root)


def schema_errors(validator: jsonschema.protocols.Validator, document: dict[str, Any]) -> list[str]:
    """Every violation as ``path: message`` (empty when the document is valid)."""
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]

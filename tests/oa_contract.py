"""Open-Assistant's HTTP contract at its newest commit (tests/data/oa_backend_openapi_head.json,
generated from OA's backend) and a validator of answers against its response schemas."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema

CONTRACT = json.loads((Path(__file__).parent / "data" / "oa_backend_openapi_head.json").read_text())


def _strict(node):
    """OA's schemas as its answers are: an optional field may be null (pydantic sends None),
    and no field outside the schema is allowed (so a misspelt one is caught)."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items()}
    if "properties" in node:
        required = set(node.get("required", ()))
        node["properties"] = {
            k: v if k in required else {"anyOf": [v, {"type": "null"}]} for k, v in node["properties"].items()
        }
        node.setdefault("additionalProperties", False)
    return node


COMPONENTS = _strict(copy.deepcopy(CONTRACT["components"]))


def success_status(path: str, method: str) -> int:
    return int(next(s for s in CONTRACT["paths"][path][method]["responses"] if s.startswith("2")))


def response_schema(path: str, method: str, status: int) -> dict | None:
    """The JSON schema of the answer (None: no body, or untyped JSON)."""
    content = CONTRACT["paths"][path][method]["responses"][str(status)].get("content")
    schema = (content or {}).get("application/json", {}).get("schema")
    return schema or None


def conforms(body, path: str, method: str, status: int = 200):
    """``body`` is what OA's contract says ``method path`` answers with ``status``."""
    schema = response_schema(path, method, status)
    assert schema is not None, (method, path, status)
    jsonschema.validate(body, {**_strict(schema), "components": COMPONENTS})
    return body

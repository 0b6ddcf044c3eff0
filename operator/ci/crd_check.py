#!/usr/bin/env python3
"""Offline checks a real API server would make on our CRDs, plus custom
resources validated against them.

usage: crd_check.py CRD_FILE [CR_FILE...]

- structural schema: every node typed (or int-or-string / preserve-unknown),
  no $ref, no properties+additionalProperties together, no type/default/
  nullable inside allOf/anyOf/oneOf/not, items a single schema;
- every `default` is valid against its own node;
- each custom resource in CR_FILE (documents of the CRDs' kinds; others
  are skipped) validates against the CRD schema, with unknown fields rejected
  (the API server would silently prune them, hiding a typo).
"""
import copy
import sys

import jsonschema
import yaml

FORBIDDEN = {"$ref", "definitions", "$schema", "additionalItems", "dependencies", "patternProperties", "id"}
NOT_IN_JUNCTORS = {"type", "default", "nullable", "description", "additionalProperties", "x-kubernetes-preserve-unknown-fields"}


def structural(node, path, errors):
    if not isinstance(node, dict):
        errors.append(f"{path}: schema is not an object")
        return
    for key in FORBIDDEN & node.keys():
        errors.append(f"{path}: '{key}' is not allowed in a structural schema")
    if node.get("uniqueItems") is True:
        errors.append(f"{path}: uniqueItems: true is not allowed")
    if "type" not in node and not node.get("x-kubernetes-int-or-string") and not node.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        errors.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: properties and additionalProperties together")
    for j in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(j, [])):
            bad = NOT_IN_JUNCTORS & set(sub.keys())
            if bad:
                errors.append(f"{path}.{j}[{i}]: {sorted(bad)} not allowed inside {j}")
    if "not" in node and NOT_IN_JUNCTORS & set(node["not"].keys()):
        errors.append(f"{path}.not: type/default/... not allowed inside not")
    if "default" in node:
        try:
            jsonschema.Draft4Validator(node).validate(node["default"])
        except jsonschema.ValidationError as e:
            errors.append(f"{path}: default {node['default']!r} is invalid: {e.message}")
    for name, sub in node.get("properties", {}).items():
        structural(sub, f"{path}.{name}", errors)
    if isinstance(node.get("additionalProperties"), dict):
        structural(node["additionalProperties"], f"{path}[*]", errors)
    if "items" in node:
        if isinstance(node["items"], list):
            errors.append(f"{path}.items: must be a single schema")
        else:
            structural(node["items"], f"{path}[]", errors)


def closed(node):
    """Copy of the schema that rejects unknown fields."""
    node = copy.deepcopy(node)

    def walk(n):
        if not isinstance(n, dict):
            return
        if "properties" in n and not n.get("x-kubernetes-preserve-unknown-fields"):
            n["additionalProperties"] = False
        for sub in n.get("properties", {}).values():
            walk(sub)
        if isinstance(n.get("items"), dict):
            walk(n["items"])
        if isinstance(n.get("additionalProperties"), dict):
            walk(n["additionalProperties"])

    walk(node)
    return node


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    errors = []
    schemas = {}
    for crd in yaml.safe_load_all(open(sys.argv[1])):
        if not crd:
            continue
        kind = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = v["schema"]["openAPIV3Schema"]
            structural(schema, f"{kind}/{v['name']}", errors)
            schemas[(crd["spec"]["group"] + "/" + v["name"], kind)] = schema
    checked = 0
    for f in sys.argv[2:]:
        for doc in yaml.safe_load_all(open(f)):
            if not doc:
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in schemas:
                continue
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
            schema = closed({k: v for k, v in schemas[key].items()})
            schema.setdefault("properties", {})
            for k in ("apiVersion", "kind", "metadata"):
                schema["properties"].pop(k, None)
            try:
                jsonschema.Draft4Validator(schema).validate(body)
                checked += 1
            except jsonschema.ValidationError as e:
                where = ".".join(str(p) for p in e.absolute_path)
                errors.append(f"{f}: {doc['kind']}/{doc['metadata'].get('name')}: {where}: {e.message}")
    for e in errors:
        print("FAIL", e)
    if errors:
        return 1
    print(f"ok: {len(schemas)} CRD version(s) structural, {checked} custom resource(s) valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())

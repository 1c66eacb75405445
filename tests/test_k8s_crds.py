"""The custom resources on paper, offline: each against the schema of its CustomResourceDefinition.

The HTTPRoutes, the Gateways and the KEDA ScaledObject, strictly, against the CRDs kept in
../shared/k8s-crds/ (skipped where that folder is absent). See docs/kubernetes.md, "Checked by the
test command".
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as schemas
from referencing import Registry, Resource

from tests.hosts import DEPLOY, OVERLAYS, ROOT, find, is_custom_resource, target

CRDS = ROOT.parent / "shared" / "k8s-crds"
EXAMPLES = sorted((DEPLOY / "k8s" / "gateway").glob("*.yaml"))
OVERLAY_IDS = [overlay.name for overlay in OVERLAYS]

if not CRDS.is_dir():
    pytest.skip(
        f"the CRD schemas are not here: {CRDS} is absent (a checkout without ../shared); "
        "the custom resources are not validated",
        allow_module_level=True,
    )


# --- Schemas ---------------------------------------------------------------------------------
def strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server applies it: unknown fields are errors."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in schema and "additionalProperties" not in schema and not keeps_unknown:
        result["additionalProperties"] = False
    return result


@cache
def object_meta() -> tuple[dict[str, Any], Registry]:
    """Kubernetes' own strict ObjectMeta schema, with the definitions it refers to."""
    version = schemas.latest_version()
    directory = f"kubernetes-json-schema/v{version}-local-strict"
    meta = schemas.schema_contents(f"{directory}/objectmeta-meta-v1.json", version)
    definitions = schemas.schema_contents(f"{directory}/_definitions.json", version)
    return meta, Resource.from_contents(definitions) @ (Resource.from_contents(meta) @ Registry())


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of every served version of every CRD in CRDS."""
    found = {}
    for path in sorted(CRDS.glob("*/*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served"):
                    continue
                schema = strict(version["schema"]["openAPIV3Schema"])
                api_version = f"{group}/{version['name']}"
                schema["properties"]["apiVersion"] = {"const": api_version}
                schema["properties"]["kind"] = {"const": kind}
                schema["properties"]["metadata"] = object_meta()[0]
                schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
                found[(api_version, kind)] = schema
    return found


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """What the API server would refuse in `doc`, by its CRD's schema; a kind no CRD defines is one."""
    label = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    schema = crd_schemas().get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return [f"{label}: no CRD in {CRDS} serves {doc.get('apiVersion')} {doc.get('kind')}"]
    validator = jsonschema.Draft202012Validator(schema, registry=object_meta()[1])
    return [f"{label}: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_crds_are_the_expected_releases():
    assert {path.name for path in CRDS.iterdir() if path.is_dir()} >= {"gateway-api-v1.6.1", "keda-v2.20.2"}
    kinds = {kind for _, kind in crd_schemas()}
    assert {"HTTPRoute", "Gateway", "GatewayClass", "ScaledObject"} <= kinds


# --- The manifests ---------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_every_overlays_custom_resources_match_their_crds(overlay: Path):
    custom = [doc for doc in target(f"kubernetes-{overlay.name}").notes["docs"] if is_custom_resource(doc)]
    assert find(custom, "HTTPRoute"), "every overlay routes the app through the Gateway API"
    errors = [error for doc in custom for error in crd_errors(doc)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_the_example_gateway_matches_its_crds(path: Path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    custom = [doc for doc in docs if is_custom_resource(doc)]
    assert find(custom, "Gateway")
    errors = [error for doc in custom for error in crd_errors(doc)]
    assert not errors, "\n".join(errors)


def test_some_overlay_scales_with_keda_and_its_scaledobject_matches_the_crd():
    scaled = [
        doc for overlay in OVERLAYS for doc in find(target(f"kubernetes-{overlay.name}").notes["docs"], "ScaledObject")
    ]
    assert scaled, "the keda component is rendered by an overlay (overlays/production-keda)"
    assert not [error for doc in scaled for error in crd_errors(doc)]


# --- The check can fail ------------------------------------------------------------------------
def production_docs() -> list[dict[str, Any]]:
    return copy.deepcopy(target("kubernetes-production").notes["docs"])


def test_a_typo_in_a_route_fails():
    (route,) = find(production_docs(), "HTTPRoute", "app")
    assert not crd_errors(route)
    rule = route["spec"]["rules"][0]
    rule["timeout"] = rule.pop("timeouts")
    assert any("timeout" in error for error in crd_errors(route)), crd_errors(route)


def test_a_wrong_value_in_a_route_fails():
    (route,) = find(production_docs(), "HTTPRoute", "app-live")
    route["spec"]["rules"][0]["timeouts"]["request"] = "75 seconds"
    assert any("timeouts.request" in error for error in crd_errors(route)), crd_errors(route)


def test_a_typo_in_a_routes_metadata_fails():
    (route,) = find(production_docs(), "HTTPRoute", "app")
    route["metadata"]["label"] = route["metadata"].pop("labels")
    assert any("label" in error for error in crd_errors(route)), crd_errors(route)


def test_a_typo_in_a_scaledobject_fails():
    docs = copy.deepcopy(target("kubernetes-production-keda").notes["docs"])
    (scaled,) = find(docs, "ScaledObject")
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    assert any("maxReplicas" in error for error in crd_errors(scaled)), crd_errors(scaled)


def test_a_kind_no_crd_defines_fails():
    (route,) = find(production_docs(), "HTTPRoute", "app")
    route["apiVersion"] = "gateway.networking.k8s.io/v1alpha9"
    assert crd_errors(route)

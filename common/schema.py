"""OpenAPI schema generation: drf-spectacular's AutoSchema plus the error answers every view can give.

The exception handler (common.api) answers refusals as data: 400 with messages by field, 401 without valid
credentials, 403 when the role may not, 404 for an unknown object or page, 409 for a conflicting repeat
(an idempotency key or client id reused with other terms, an object in the wrong state), 429 when a
throttle refuses. Each operation documents the ones it can give, so clients (and schemathesis's
status-code conformance check) know them.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.types import OPENAPI_TYPE_MAPPING, OpenApiTypes

# Decimals are strings on the wire (COERCE_DECIMAL_TO_STRING), also where a method field declares DECIMAL.
OPENAPI_TYPE_MAPPING[OpenApiTypes.DECIMAL] = {"type": "string", "format": "decimal", "pattern": r"^-?\d+(\.\d+)?$"}

ERROR_SCHEMA = {
    "description": "A refusal: `{\"detail\": message}`, or messages by field name (`non_field_errors` for the "
    "request as a whole; nested objects and lists for nested input); rarely a list of messages.",
    "anyOf": [
        {"type": "object", "additionalProperties": {}},
        {"type": "array", "items": {}},
    ],
}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class AutoSchema(SpectacularAutoSchema):
    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        component = ResolvedComponent(name="Error", type=ResolvedComponent.SCHEMA, object="Error", schema=ERROR_SCHEMA)
        self.registry.register_on_missing(component)
        responses = operation.setdefault("responses", {})
        if any(p.get("name") == "export" and "csv" in p.get("schema", {}).get("enum", ()) for p in operation.get("parameters", [])):
            # `?export=csv` answers the whole list as CSV instead of the JSON page.
            ok = responses.get("200", {}).setdefault("content", {})
            ok.setdefault("text/csv", {"schema": {"type": "string"}})
        for code, description in self._error_codes(operation):
            responses.setdefault(code, {"content": {"application/json": {"schema": component.ref}}, "description": description})
        return operation

    def _error_codes(self, operation: dict) -> list[tuple[str, str]]:
        params = operation.get("parameters", [])
        unsafe = self.method not in SAFE_METHODS
        codes = []
        if unsafe or any(p.get("in") == "query" for p in params):
            codes.append(("400", "Invalid input (messages by field)"))
        if getattr(self.view, "authentication_classes", None):
            codes.append(("401", "Credentials missing or invalid"))
        if getattr(self.view, "permission_classes", None):
            codes.append(("403", "Not allowed for this user or role"))
        # Unknown object or page; also a user without the organisation (or programme, ...) the answer is about.
        codes.append(("404", "No such object (or not yours), or no such page"))
        if unsafe:
            codes.append(("409", "Conflicts with the object's state or a previous request with the same key"))
        if getattr(self.view, "throttle_classes", None):
            codes.append(("429", "Throttled: retry after the Retry-After header's seconds"))
        return codes

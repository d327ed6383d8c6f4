"""OpenAPI: the API-key scheme, so the schema documents it (drf-spectacular warns on unknown authenticators)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "apikeys.authentication.ApiKeyAuthentication"
    name = "apiKeyAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey", "in": "header", "name": "Authorization",
            "description": "`Api-Key sl_<prefix>_<secret>` (or `Bearer sl_...`). Scopes: read (safe methods), "
                           "trade (other writes), withdraw (payouts, refunds).",
        }

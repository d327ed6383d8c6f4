from django.apps import AppConfig


class ApiKeysConfig(AppConfig):
    name = "apikeys"
    verbose_name = "API keys"

    def ready(self) -> None:
        from apikeys import schema, signals  # noqa: F401  (OpenAPI extension; sockets closed on revocation)

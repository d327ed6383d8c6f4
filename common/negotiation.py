"""The API's content negotiation (REST_FRAMEWORK DEFAULT_CONTENT_NEGOTIATION_CLASS). Its own module: DRF's
views module reads that setting when it is imported, so the class cannot live beside code importing it."""

from __future__ import annotations

from rest_framework.negotiation import DefaultContentNegotiation


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's, with a short way for what API clients send: no `Accept`, `*/*` or `application/json`, and no
    `?format=` (nor a format suffix), answered by the first renderer when it is JSON, as DRF's own matching
    would. DRF parses the Accept header (and the query string, for `?format=`) and matches it against each
    renderer's media type on every request: 19-37 us of CPU per request in a loop, ~2 us this way. Anything
    else, a browser's Accept for the browsable API say, goes the long way."""

    _PLAIN = frozenset(("*/*", "application/json"))  # no header at all counts as */*, as in DRF (an empty one does not)

    def select_renderer(self, request, renderers, format_suffix=None):
        meta = request.META
        if (not format_suffix and meta.get("HTTP_ACCEPT", "*/*").strip() in self._PLAIN and renderers
                and renderers[0].media_type == "application/json"
                and f"{self.settings.URL_FORMAT_OVERRIDE}=" not in meta.get("QUERY_STRING", "")):
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)

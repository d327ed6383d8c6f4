"""common.negotiation.ContentNegotiation answers as DRF's DefaultContentNegotiation does, by its short way or the long one."""

import pytest
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer, TemplateHTMLRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from common.negotiation import ContentNegotiation

ACCEPTS = [None, "", "*/*", " */* ", "application/json", "application/json; indent=4", "text/html",
           "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "application/*", "application/xml"]


def _request(accept, query=""):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    return Request(APIRequestFactory().get(f"/api/v1/orders/{query}", **headers))


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("query", ["", "?format=api", "?format=json", "?status=open"])
@pytest.mark.parametrize("renderer_classes", [(JSONRenderer, BrowsableAPIRenderer), (BrowsableAPIRenderer, JSONRenderer),
                                              (TemplateHTMLRenderer, JSONRenderer)])
def test_the_same_renderer_and_media_type_as_drfs(accept, query, renderer_classes):
    def pick(negotiation):
        renderers = [cls() for cls in renderer_classes]
        try:
            renderer, media_type = negotiation.select_renderer(_request(accept, query), renderers)
        except Exception as exc:  # e.g. 404 for an unknown format, 406 for nothing acceptable
            return type(exc).__name__
        return type(renderer).__name__, media_type

    assert pick(ContentNegotiation()) == pick(DefaultContentNegotiation())


def test_a_json_client_takes_the_short_way(monkeypatch):
    monkeypatch.setattr(DefaultContentNegotiation, "select_renderer", lambda *a, **k: pytest.fail("long way taken"))
    renderers = [JSONRenderer(), BrowsableAPIRenderer()]
    for accept in (None, "*/*", "application/json"):
        renderer, media_type = ContentNegotiation().select_renderer(_request(accept), renderers)
        assert (type(renderer), media_type) == (JSONRenderer, "application/json")

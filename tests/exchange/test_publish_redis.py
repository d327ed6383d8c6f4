"""Publishing over Redis: a batch's messages go only to groups that have a member; the others cost one
question for all of them, not two round trips each."""

import asyncio
import time

import pytest
from channels.layers import get_channel_layer

from exchange import publish

pytestmark = pytest.mark.redis


def spy(monkeypatch, owner, name: str) -> list:
    """Record the first argument of every call to the coroutine function `owner.name`, which still runs."""
    calls, real = [], getattr(owner, name)

    async def recorded(first, *args):
        calls.append(first)
        return await real(first, *args)

    monkeypatch.setattr(owner, name, recorded)
    return calls


def test_a_batch_is_sent_only_to_groups_with_a_live_member(monkeypatch):
    layer = get_channel_layer()
    sent = spy(monkeypatch, layer, "group_send")

    async def scenario():
        listening, gone = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("org.1", listening)
        await layer.group_add("org.3", gone)
        # A member that stopped refreshing its membership longer ago than the group expiry: not a listener.
        expired = int(time.time()) - layer.group_expiry - 10
        await layer.connection(layer.consistent_hash("org.3")).zadd(layer._group_key("org.3"), {gone: expired})
        messages = [("org.1", {"type": "user.event", "text": "a"}), ("org.2", {"type": "user.event", "text": "b"}),
                    ("org.3", {"type": "user.event", "text": "c"}), ("org.1", {"type": "user.event", "text": "d"})]
        await publish._send_all(layer, messages)
        got = await asyncio.wait_for(layer.receive(listening), 2)
        await layer.group_discard("org.1", listening)
        await layer.group_discard("org.3", gone)
        return got

    got = asyncio.run(scenario())
    assert got == {"type": publish.BATCH, "messages": [{"type": "user.event", "text": "a"}, {"type": "user.event", "text": "d"}]}
    assert sent == ["org.1"]


def test_a_single_group_is_sent_without_asking_first(monkeypatch):
    layer = get_channel_layer()
    asked = spy(monkeypatch, publish, "_listened")

    async def scenario():
        channel = await layer.new_channel()
        await layer.group_add("market.7", channel)
        await publish._send_all(layer, [("market.7", {"type": "market.message", "text": "x"})])
        got = await asyncio.wait_for(layer.receive(channel), 2)
        await layer.group_discard("market.7", channel)
        return got

    assert asyncio.run(scenario())["text"] == "x"
    assert asked == []

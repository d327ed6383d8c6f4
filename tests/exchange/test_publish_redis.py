"""Publishing over Redis: a batch's messages go only to groups that have a member; the others cost one
question for all of them, not two round trips each."""

import asyncio
import time

import pytest
from channels.layers import get_channel_layer

from exchange import publish

pytestmark = pytest.mark.redis


def test_a_batch_is_sent_only_to_groups_with_a_live_member(monkeypatch):
    layer = get_channel_layer()
    sent = []
    real_group_send = layer.group_send

    async def group_send(group, message):
        sent.append(group)
        await real_group_send(group, message)

    monkeypatch.setattr(layer, "group_send", group_send)

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
    asked = []
    real = publish._listened

    async def listened(layer, groups):
        asked.append(groups)
        return await real(layer, groups)

    monkeypatch.setattr(publish, "_listened", listened)

    async def scenario():
        channel = await layer.new_channel()
        await layer.group_add("market.7", channel)
        await publish._send_all(layer, [("market.7", {"type": "market.message", "text": "x"})])
        got = await asyncio.wait_for(layer.receive(channel), 2)
        await layer.group_discard("market.7", channel)
        return got

    assert asyncio.run(scenario())["text"] == "x"
    assert asked == []

"""The bounded channel between stages: order, back-pressure, and the end of the stream."""

from __future__ import annotations

import asyncio

import pytest

from engine._pipeline.channel import Channel, ClosedChannel, EndOfStream


async def test_items_come_out_in_order_then_the_stream_ends() -> None:
    channel: Channel[int] = Channel(4)
    for item in (1, 2, 3):
        await channel.send(item)
    channel.close()
    assert [item async for item in channel] == [1, 2, 3]
    with pytest.raises(EndOfStream):
        await channel.receive()  # and stays ended


async def test_closing_a_full_channel_keeps_every_item() -> None:
    channel: Channel[int] = Channel(2)
    await channel.send(1)
    await channel.send(2)
    channel.close()  # no room for a marker: the end shows once the channel is empty
    assert [item async for item in channel] == [1, 2]


async def test_closing_wakes_a_receiver_waiting_on_an_empty_channel() -> None:
    channel: Channel[int] = Channel(2)
    waiting = asyncio.ensure_future(channel.receive())
    await asyncio.sleep(0)  # one turn: the receiver is now waiting
    assert not waiting.done()
    channel.close()
    with pytest.raises(EndOfStream):
        await waiting


async def test_send_waits_for_room() -> None:
    channel: Channel[str] = Channel(1)
    await channel.send("a")
    second = asyncio.ensure_future(channel.send("b"))
    await asyncio.sleep(0)
    assert not second.done()  # full: the sender is held back
    assert await channel.receive() == "a"
    await second
    assert await channel.receive() == "b"


async def test_sending_after_close_is_refused_and_close_twice_is_harmless() -> None:
    channel: Channel[int] = Channel(1)
    channel.close()
    channel.close()
    with pytest.raises(ClosedChannel):
        await channel.send(1)
    assert [item async for item in channel] == []


async def test_ready_says_whether_receive_would_wait() -> None:
    channel: Channel[int] = Channel(2)
    assert not channel.ready()
    await channel.send(1)
    assert channel.ready()
    await channel.receive()
    assert not channel.ready()
    channel.close()
    assert channel.ready()  # the end of the stream is there to receive


def test_a_channel_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Channel(0)

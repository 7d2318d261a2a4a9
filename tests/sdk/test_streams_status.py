"""Bounded buffers (backpressure, closing, abandoned iterators) and the status board, no network."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from relay_client.errors import ClientClosedError
from relay_client.options import ClientOptions
from relay_client.status import ClientState, Status, StatusBoard
from relay_client.streams import Buffer, ChangeStream


async def test_full_buffer_makes_the_producer_wait_not_drop() -> None:
    buf: Buffer[int] = Buffer(2)
    assert await buf.put(1) and await buf.put(2)
    blocked = asyncio.create_task(buf.put(3))
    await asyncio.sleep(0.02)
    assert not blocked.done()  # backpressure
    assert await buf.get() == 1
    assert await asyncio.wait_for(blocked, 1) is True
    assert [await buf.get(), await buf.get()] == [2, 3]


async def test_close_ends_iteration_after_what_is_held_and_wakes_a_blocked_producer() -> None:
    buf: Buffer[int] = Buffer(1)
    await buf.put(1)
    blocked = asyncio.create_task(buf.put(2))
    await asyncio.sleep(0.01)
    buf.close()
    assert await asyncio.wait_for(blocked, 1) is False  # discarded, not stuck
    assert [x async for x in ChangeStream(buf)] == [1]
    err: Buffer[int] = Buffer(1)
    err.close(RuntimeError("gave up"))
    with pytest.raises(RuntimeError):
        await err.get()


async def test_an_abandoned_stream_never_blocks_the_producer() -> None:
    buf: Buffer[int] = Buffer(1)
    stream = ChangeStream(buf)
    await buf.put(1)
    async for _ in stream:
        break  # the consumer stops after one item and drops the iterator
    await buf.put(2)
    blocked = asyncio.create_task(buf.put(3))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    del stream
    gc.collect()
    assert await asyncio.wait_for(blocked, 1) is False
    assert buf.closed


async def test_aclose_discards_and_closes() -> None:
    buf: Buffer[int] = Buffer(4)
    async with ChangeStream(buf) as stream:
        await buf.put(1)
        assert len(stream) == 1
    assert buf.closed and len(buf) == 0


async def test_status_board_callbacks_iterators_and_waiters() -> None:
    board = StatusBoard(maxlen=2)
    seen: list[str] = []
    remove = board.subscribe(lambda s: seen.append(str(s)))
    stream = board.stream()
    waiter = asyncio.create_task(board.wait_for(lambda s: s.online, 1))
    assert board.set(ClientState.CONNECTING)
    assert not board.set(ClientState.CONNECTING)  # unchanged: nobody told
    assert board.set(ClientState.OFFLINE, "cannot connect")
    assert board.set(ClientState.OFFLINE, "connect timed out")  # a new reason is news
    assert board.set(ClientState.ONLINE)
    assert (await waiter).online
    assert seen == ["connecting", "offline (cannot connect)", "offline (connect timed out)", "online"]
    # the iterator kept only the latest two (drop-oldest), so it ends on the current status
    assert [s.state async for s in _take(stream, 2)] == [ClientState.OFFLINE, ClientState.ONLINE]
    remove()
    board.set(ClientState.CLOSED, "closed by client")
    assert len(seen) == 4
    board.end()
    assert [s.state async for s in stream] == [ClientState.CLOSED]
    with pytest.raises(ClientClosedError):
        await board.wait_for(lambda s: s.online, 1)


async def _take(stream: AsyncIterator[Status], n: int) -> AsyncIterator[Status]:
    for _ in range(n):
        yield await anext(stream)


@pytest.mark.parametrize(
    "kwargs",
    [{"hb_interval": 0}, {"timeout": -1}, {"max_retries": -1}, {"queue_size": 0}, {"initial_backoff": 0}],
)
def test_options_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClientOptions(**kwargs)


def test_heartbeat_timeout_defaults_to_the_interval() -> None:
    assert ClientOptions(hb_interval=3).heartbeat_timeout == 3
    assert ClientOptions(hb_interval=3, hb_timeout=1).heartbeat_timeout == 1

"""The blob service applies the chunks of one upload one at a time, and keeps no lock for an
upload nobody is writing to (an abandoned upload leaves nothing behind in the process)."""

from __future__ import annotations

import asyncio

import pytest

from blob_service.uploads import _UploadLocks


def test_chunks_of_one_upload_take_turns_and_leave_no_lock_behind() -> None:
    async def scenario() -> None:
        locks = _UploadLocks()
        order: list[str] = []

        async def chunk(name: str, upload: str, pause: float) -> None:
            async with locks.hold(upload):
                order.append(f"{name} starts")
                await asyncio.sleep(pause)
                order.append(f"{name} ends")

        await asyncio.gather(chunk("first", "u1", 0.05), chunk("second", "u1", 0))
        assert order == ["first starts", "first ends", "second starts", "second ends"]
        assert len(locks) == 0

        order.clear()
        await asyncio.gather(chunk("one", "u1", 0.05), chunk("other", "u2", 0))
        assert order.index("other ends") < order.index("one ends")  # different uploads: no wait
        assert len(locks) == 0

        with pytest.raises(RuntimeError):
            async with locks.hold("u3"):
                raise RuntimeError("the client went away")
        assert len(locks) == 0

    asyncio.run(scenario())

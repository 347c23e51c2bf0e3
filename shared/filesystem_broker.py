"""The broker of the embedded default: kombu's filesystem transport, with messages written
atomically.

kombu's own transport creates the message file under its final name and then writes it, so a
consumer listing the folder at that moment takes an empty file, fails to parse it and stops
(the worker exits, the message is lost). Here a message is written under a name the consumer
ignores and renamed into place once complete: a rename within a folder is atomic. And a file
that holds no complete message is skipped rather than allowed to stop the worker.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f"partial_{name}.part")
        try:
            with open(partial, "wb") as file:
                file.write(dumps(payload).encode())  # type: ignore[no-untyped-call]
            os.rename(partial, final)
        except OSError as exc:
            raise ChannelError(f"cannot add message {name!r} to the queue folder") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        # A file that holds no complete message (one left by a process killed while writing it
        # with kombu's own transport, say) is skipped, not allowed to stop the worker.
        while True:
            try:
                return super()._get(queue)  # type: ignore[no-untyped-call]
            except ValueError:
                log.warning(
                    "skipped a message file that is not a complete message, queue=%s", queue
                )


# How often a timed wait for a message looks whether its worker was asked to stop. Celery's
# worker looks at that request only between two waits, each of two seconds, and so would stop
# up to that much later.
STOP_CHECK_SECONDS = 0.2


def _worker_stopping() -> bool:
    state = sys.modules.get("celery.worker.state")  # imported by a worker only
    if state is None:
        return False
    return any(
        flag is not None and flag is not False
        for flag in (state.should_stop, state.should_terminate)
    )


class Transport(filesystem.Transport):
    Channel = Channel

    def drain_events(self, connection: Any, timeout: float | None = None) -> Any:  # type: ignore[override]
        if timeout is None:
            return super().drain_events(connection)  # type: ignore[no-untyped-call]
        deadline = monotonic() + timeout
        while True:
            wait = max(0.0, min(STOP_CHECK_SECONDS, deadline - monotonic()))
            try:
                return super().drain_events(connection, timeout=wait)  # type: ignore[no-untyped-call]
            except TimeoutError:  # socket.timeout
                if monotonic() >= deadline or _worker_stopping():
                    raise

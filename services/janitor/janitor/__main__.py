"""``python -m janitor worker|beat [options]``: Celery's ``worker`` and ``beat`` commands on the
janitor's application, as ``celery -A janitor.worker worker|beat`` runs them, without the
``celery`` command's plugins: those load Flower (and Tornado) into every process that starts
through it, about 14 MiB of memory the worker and beat never use. Flower and one-off commands
(``inspect ping``) still go through ``celery -A janitor.worker``."""

from __future__ import annotations

import sys

from celery.bin.base import CLIContext
from celery.bin.beat import beat
from celery.bin.worker import worker

from janitor.worker import app

COMMANDS = {"worker": worker, "beat": beat}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python -m janitor {{{'|'.join(COMMANDS)}}} [options]")
    command = COMMANDS[argv[0]]
    # What the celery command adds to its subcommands: the options the application declares.
    command.params.extend(app.user_options.get(argv[0], []))
    context = CLIContext(app=app, no_color=None, workdir=None)
    command.main(argv[1:], prog_name=f"python -m janitor {argv[0]}", obj=context)


if __name__ == "__main__":
    main(sys.argv[1:])

"""``python -m janitor worker|beat [options]``: Celery's ``worker`` and ``beat`` commands on the
janitor's application, as ``celery -A janitor.worker worker|beat`` runs them, without the
``celery`` command's plugins: those load Flower (and Tornado) into every process that starts
through it, about 14 MiB of memory the worker and beat never use. Flower and one-off commands
(``inspect ping``) still go through ``celery -A janitor.worker``.

A worker takes the janitor's queue and the notification deliveries' (both named by the
settings: ``REGISTRY_BROKER_QUEUE`` and ``<it>-notifications``); ``--takes janitor`` or
``--takes notifications`` gives it one of them (a worker for deliveries alone)."""

from __future__ import annotations

import sys

from celery.bin.base import CLIContext
from celery.bin.beat import beat
from celery.bin.worker import worker

from janitor import worker as janitor_worker
from janitor.worker import app
from shared import mirrors, notifications, policies
from shared.settings import get_settings

COMMANDS = {"worker": worker, "beat": beat}
TAKES = ("all", "janitor", "notifications")


def with_queues(args: list[str]) -> list[str]:
    """The worker's options, ``--takes`` made Celery's ``--queues`` by the settings' names."""
    args = list(args)
    takes = "all"
    if "--takes" in args:
        at = args.index("--takes")
        takes = args[at + 1] if at + 1 < len(args) else ""
        del args[at : at + 2]
    if takes not in TAKES:
        sys.exit(f"--takes: one of {', '.join(TAKES)}")
    settings = get_settings()
    queues = {
        "all": [settings.broker_queue, settings.notifications_queue],
        "janitor": [settings.broker_queue],
        "notifications": [settings.notifications_queue],
    }[takes]
    janitor_worker.takes_notifications = settings.notifications_queue in queues
    janitor_worker.takes_janitor = settings.broker_queue in queues
    return [*args, "--queues", ",".join(queues)]


def read_files() -> None:
    """Read the configuration files this worker's tasks read: one that cannot be used stops it
    at start, not its sweeps and deliveries. A worker for deliveries alone reads only the
    notifications file, and beat, which only schedules, reads none (Kubernetes and Compose
    mount only those)."""
    notifications.read_at_start()
    if janitor_worker.takes_janitor:
        policies.read_at_start()
        mirrors.read_at_start()


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python -m janitor {{{'|'.join(COMMANDS)}}} [options]")
    command = COMMANDS[argv[0]]
    options = argv[1:]
    if argv[0] == "worker":
        # Without mingle: at start a worker on Redis asks the others for their revoked tasks
        # and waits a second for answers (the janitor revokes none), before taking any task.
        options = [*with_queues(options), "--without-mingle"]
        read_files()
    # What the celery command adds to its subcommands: the options the application declares.
    command.params.extend(app.user_options.get(argv[0], []))
    context = CLIContext(app=app, no_color=None, workdir=None)
    command.main(options, prog_name=f"python -m janitor {argv[0]}", obj=context)


if __name__ == "__main__":
    main(sys.argv[1:])

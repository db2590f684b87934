"""Start a Celery worker or beat without the `celery` command line: `python -m celeryconf worker|beat ...`.

    python -m celeryconf worker -Q payments -n payments@%h --concurrency 1 -l INFO
    python -m celeryconf beat -l INFO

The options are the `celery worker` / `celery beat` ones (`python -m celeryconf worker --help`): this runs
Celery's own `worker` and `beat` commands (celery.bin.worker, celery.bin.beat) on this project's app, so a
worker started here is configured and runs its tasks exactly as `celery -A celeryconf worker` would.

What it leaves out is the rest of the `celery` program, which every process it starts keeps in memory:
`celery` imports every subcommand before it reads its arguments - `celery amqp`'s shell (click_repl,
prompt_toolkit, wcwidth) - and every installed `celery.commands` entry point: Flower's (tornado,
prometheus_client, humanize), ~11.5 MiB in each worker's main process and in every pool process it forks
(docs/worker-memory.md). Procfile and docker-compose.prod.yml start workers and beat this way.

Everything else stays `celery -A celeryconf ...`: Flower (`celery -A celeryconf flower`), and what operators
type (inspect, purge, call, status, shell...).
"""

from __future__ import annotations

import os
import sys

from celery.bin.base import CLIContext
from celery.bin.beat import beat
from celery.bin.worker import worker

from celeryconf.app import app

COMMANDS = {"worker": worker, "beat": beat}
USAGE = (
    "usage: python -m celeryconf worker|beat [OPTIONS]   (the options of `celery worker` / `celery beat`)\n"
    "Everything else: celery -A celeryconf COMMAND (flower, inspect, purge, status, call, shell...)."
)


def main(argv: list[str] | None = None) -> None:
    """Run `worker` or `beat` with the rest of the arguments; exits with the command's status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        sys.stderr.write(USAGE + "\n")
        sys.exit(0 if args[:1] in (["-h"], ["--help"]) else 2)
    name, options = args[0], args[1:]
    if {"-D", "--detach"} & set(options):
        # Celery's detach re-runs `python -m celery ...`: run this under a supervisor (honcho, Docker) instead.
        sys.exit(f"python -m celeryconf {name}: --detach is not supported here; run it under a supervisor")
    # What the `celery` program does before it runs one of its commands: the app, the output options (NO_COLOR
    # as `celery -C` reads it) and environment variables as `celery` reads them (CELERY_WORKER_CONCURRENCY...).
    obj = CLIContext(app=app, no_color=bool(os.environ.get("NO_COLOR")), workdir=None)  # type: ignore[arg-type]
    COMMANDS[name].main(
        args=options, prog_name=f"python -m celeryconf {name}", obj=obj, auto_envvar_prefix=f"CELERY_{name.upper()}"
    )


if __name__ == "__main__":
    main()

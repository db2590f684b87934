"""Flower's configuration file: `celery -A celeryconf flower --conf=celeryconf/flower.py` (Procfile, compose).

Flower reads it with tornado's `parse_config_file` (module-level names that are Flower options), after the
FLOWER_* environment variables and before the command line, which wins. Only what bounds Flower's memory is
set here; ports, the URL prefix and the password stay on each command line.

Flower keeps what it learns from the workers' events in memory (celery.events.state.State): the last
`max_tasks` tasks (each with its arguments' repr, its result and a search-index entry), up to 4 x `max_tasks`
event tuples in its time-ordered heap, and every worker it has heard of. Without bounds it grows with every
task (its default is 100,000). Measured in the whole stack (bench.stack, docs/worker-memory.md, "Soak"):
~61 MB idle, ~77 MB with a 1,000-task history, ~70 MB with 300; either way flat once the history is full.
"""

# The last 300 tasks: hours of a normal day, minutes of a 100 callbacks/s burst. Failures of
# every task are kept in the database anyway (the System page), so nothing is lost when one drops out.
max_tasks = 300
# Workers known: three today, but each restart under compose comes back under a new container hostname,
# and every name Flower has seen stays in memory with its counters and Prometheus series.
max_workers = 20
# Forget a worker offline for an hour (a replaced container, a scaled-down worker), with its series.
purge_offline_workers = 3600
# In memory only: no shelve file of the state written at exit or every N ms (it would grow on disk and be
# read back at start).
persistent = False
state_save_interval = 0

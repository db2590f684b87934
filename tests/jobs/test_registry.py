"""Job kinds declared lazily (their modules imported on first lookup) are what those modules register."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobs.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]


def fresh_process(code: str) -> str:
    """Run `code` in a new Python process from the project's root; what it printed (it must succeed)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_each_lazy_module_registers_exactly_the_kinds_it_is_declared_for() -> None:
    assert REGISTRY.lazy, "no kind is declared lazily: the test has nothing to check"
    REGISTRY.load_all()
    for key, module in REGISTRY.lazy.items():
        assert dict.__contains__(REGISTRY, key), f"{module} does not register {key}"
        assert REGISTRY[key].handler.__module__ == module


def test_a_lookup_imports_the_kind_module_in_a_fresh_process() -> None:
    """A Celery process starts without ReportLab; looking the PDF kind up imports it and finds it."""
    code = (
        "import sys; sys.argv = ['/usr/bin/celery', '-A', 'celeryconf', 'worker']\n"
        "import django; django.setup()\n"
        "from celeryconf.app import app; app.loader.import_default_modules()\n"
        "from jobs.registry import REGISTRY\n"
        "assert 'reportlab' not in sys.modules, 'ReportLab loaded at start'\n"
        "assert 'operations.admin' not in sys.modules, 'admin modules loaded at start'\n"
        "kind = REGISTRY.get('accounts.statement_pdf')\n"
        "assert kind is not None and kind.key == 'accounts.statement_pdf'\n"
        "assert 'reportlab' in sys.modules\n"
        "assert 'operations.customer_statements' in REGISTRY\n"
        "print('ok')\n"
    )
    assert fresh_process(code) == "ok"


def test_a_celery_process_knows_every_kind_the_web_process_knows() -> None:
    """The web process imports every admin module (and the kinds they import); a Celery process does
    not, so any kind registered only by an admin-imported module must be declared lazily."""
    from django.contrib import admin

    admin.autodiscover()
    # What the web process knows: the kinds registered, and those declared to load on first lookup.
    known = {*dict.keys(REGISTRY), *REGISTRY.lazy}
    web = sorted(k for k in known if not k.startswith("tests."))  # tests/worker_tasks.py's
    code = (
        "import sys; sys.argv = ['/usr/bin/celery', '-A', 'celeryconf', 'worker']\n"
        "import django; django.setup()\n"
        "from celeryconf.app import app; app.loader.import_default_modules()\n"
        "from jobs.registry import REGISTRY\n"
        "REGISTRY.load_all()\n"
        "print(','.join(sorted(dict.keys(REGISTRY))))\n"
    )
    assert fresh_process(code).split(",") == web


def test_an_excel_export_in_a_celery_process_loads_no_reportlab_urlconf_or_other_admins() -> None:
    """The export finds its ModelAdmin by importing the model's own app's admin module and builds the
    changelist request from the path the launch recorded: no other app's admin, no URLconf (every view,
    ReportLab with the PDF views), no ReportLab through the admin's PDF actions (docs/worker-memory.md)."""
    code = (
        "import sys; sys.argv = ['/usr/bin/celery', '-A', 'celeryconf', 'worker']\n"
        "import django; django.setup()\n"
        "from celeryconf.app import app; app.loader.import_default_modules()\n"
        "from django.contrib.auth.models import AnonymousUser\n"
        "from jobs.registry import REGISTRY\n"
        "REGISTRY.get('jobs.changelist_xlsx')\n"
        "from jobs.exports import _model_admin, changelist_request\n"
        "for label in ('operations.sale', 'operations.customer'):\n"
        "    model_admin = _model_admin(label)\n"
        "    request = changelist_request(model_admin=model_admin, user=AnonymousUser(), query='', path='/x/')\n"
        "    assert model_admin.model._meta.label_lower == label and request.path == '/x/'\n"
        "loaded = [m for m in ('reportlab', 'backoffice.urls', 'accounts.admin', 'jobs.admin') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert _model_admin('accounts.journalentry').model._meta.label_lower == 'accounts.journalentry'\n"
        "print('ok')\n"
    )
    assert fresh_process(code) == "ok"


def test_a_web_process_starts_without_reportlab() -> None:
    """gunicorn's workers import the admin (every admin module) and the URLconf (every page) and never
    draw a PDF themselves (a PDF is a job, drawn by a reports worker): ReportLab stays out of them
    (~4 MiB each, docs/worker-memory.md, "Web processes without ReportLab") until a PDF is asked of
    that process; the PDF kinds are still known there, and load when looked up."""
    code = (
        "import sys\n"
        "from backoffice.wsgi import application\n"
        "from django.urls import get_resolver; get_resolver().url_patterns\n"
        "assert 'reportlab' not in sys.modules, 'ReportLab loaded by the web process at start'\n"
        "from jobs.registry import REGISTRY\n"
        "assert {'backoffice.daily_summary', 'accounts.statement_pdf'} <= set(REGISTRY.lazy)\n"
        "assert REGISTRY.get('backoffice.daily_summary') is not None and 'reportlab' in sys.modules\n"
        "print('ok')\n"
    )
    assert fresh_process(code) == "ok"

"""Static checks of the production stack: docker-compose.prod.yml, the Dockerfile and deploy/.

No Docker engine is needed (nor a database): the compose file is parsed with PyYAML and its
properties are checked against the process table of docs/deploy.md and the memory budget of a 4 GB VPS.
Only yaml, pathlib and the standard library are imported, so these tests run even without Django:
`pytest tests/test_compose.py -p no:django`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.prod.yml"
DOCKERFILE = ROOT / "Dockerfile"

MIB = 1024 * 1024
GIB = 1024 * MIB
VPS_MEMORY = 4 * GIB
MIN_HEADROOM = 512 * MIB

LONG_RUNNING = (
    "web",
    "worker-payments",
    "worker-default",
    "worker-reports",
    "beat",
    "flower",
    "postgres",
    "redis",
    "proxy",
)
ONE_SHOT = ("migrate",)
REQUIRED = LONG_RUNNING + ONE_SHOT
APP_SERVICES = ("web", "worker-payments", "worker-default", "worker-reports", "beat", "flower", "migrate")
WORKERS = ("worker-payments", "worker-default", "worker-reports")

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": MIB, "mb": MIB, "g": GIB, "gb": GIB}


def parse_memory(value: str | int) -> int:
    """Bytes in a compose memory value: an int (bytes) or "512m", "1g", "256mb", "1.5g"..."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?b?)\s*", value.lower())
    if match is None:
        raise ValueError(f"not a memory size: {value!r}")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit])


def as_argv(command: str | list[str] | None) -> list[str]:
    """A compose command (string or list) as the argument list Docker gets."""
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(arg) for arg in command]


def command_text(service: dict[str, Any]) -> str:
    """Everything the container runs, as one string (covers `sh -c "..."` commands too)."""
    return " ".join(as_argv(service.get("command")))


def option_values(argv: list[str], *names: str) -> list[str]:
    """Values of an option given as `--name value`, `--name=value` or `-n value`."""
    values = []
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif arg.startswith(name + "="):
                values.append(arg.split("=", 1)[1])
    return values


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", [])
    return test if isinstance(test, str) else " ".join(str(part) for part in test)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


def test_parse_memory() -> None:
    assert parse_memory("512m") == 512 * MIB
    assert parse_memory("1g") == GIB
    assert parse_memory("1G") == GIB
    assert parse_memory("256mb") == 256 * MIB
    assert parse_memory("64k") == 64 * 1024
    assert parse_memory("1.5g") == 3 * GIB // 2
    assert parse_memory(1048576) == MIB
    with pytest.raises(ValueError):
        parse_memory("lots")


def test_every_required_service_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name in REQUIRED if name not in services]
    assert not missing, f"missing services: {missing}"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_restart_unless_stopped(services: dict[str, dict[str, Any]], name: str) -> None:
    assert services[name].get("restart") == "unless-stopped"


@pytest.mark.parametrize("name", ONE_SHOT)
def test_one_shot_services_do_not_restart(services: dict[str, dict[str, Any]], name: str) -> None:
    assert services[name].get("restart", "no") == "no"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_have_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    healthcheck = services[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable", False)
    test = healthcheck.get("test")
    assert test and test != ["NONE"], f"{name}: empty healthcheck"
    if isinstance(test, list):
        assert test[0] in {"CMD", "CMD-SHELL"}


def test_healthchecks_check_the_right_thing(services: dict[str, dict[str, Any]]) -> None:
    # web: only "does the HTTP server answer" - /healthz is 503 whenever a worker is down.
    web = healthcheck_text(services["web"])
    assert "8000" in web
    assert "/healthz" not in web
    assert "pg_isready" in healthcheck_text(services["postgres"])
    assert "redis-cli ping" in healthcheck_text(services["redis"])
    assert "healthcheck" in healthcheck_text(services["flower"])
    assert "wget" in healthcheck_text(services["proxy"])


def test_worker_and_beat_healthchecks_use_the_heartbeat_keys(services: dict[str, dict[str, Any]]) -> None:
    """The healthchecks read the keys celeryconf/heartbeat.py writes; keep the prefix in step."""
    source = (ROOT / "celeryconf" / "heartbeat.py").read_text()
    match = re.search(r'^KEY_PREFIX\s*=\s*"([^"]+)"', source, re.MULTILINE)
    assert match, "KEY_PREFIX not found in celeryconf/heartbeat.py"
    prefix = match.group(1)
    assert f"{prefix}:queue:payments:payments@" in healthcheck_text(services["worker-payments"])
    default = healthcheck_text(services["worker-default"])
    assert f"{prefix}:queue:default:default@" in default and ":reports:" not in default
    assert f"{prefix}:queue:reports:reports@" in healthcheck_text(services["worker-reports"])
    assert f"{prefix}:beat" in healthcheck_text(services["beat"])


@pytest.mark.parametrize("name", REQUIRED)
def test_every_service_has_a_memory_limit(services: dict[str, dict[str, Any]], name: str) -> None:
    limit = services[name].get("mem_limit")
    assert limit is not None, f"{name} has no mem_limit"
    assert parse_memory(limit) >= 32 * MIB


def test_memory_budget_fits_the_vps_with_headroom(services: dict[str, dict[str, Any]]) -> None:
    total = sum(parse_memory(service["mem_limit"]) for service in services.values())
    assert total < VPS_MEMORY
    assert VPS_MEMORY - total >= MIN_HEADROOM, f"only {(VPS_MEMORY - total) // MIB} MiB left for the host"


def test_redis_is_durable_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    argv = as_argv(redis["command"])
    assert option_values(argv, "--appendonly") == ["yes"]
    assert option_values(argv, "--appendfsync") == ["everysec"]
    assert option_values(argv, "--maxmemory-policy") == ["noeviction"]
    maxmemory = option_values(argv, "--maxmemory")
    assert len(maxmemory) == 1
    # Redis reads "mb" as 1024*1024 bytes, as parse_memory does.
    assert parse_memory(maxmemory[0]) < parse_memory(redis["mem_limit"])


@pytest.mark.parametrize(
    ("name", "mount_point"),
    [
        ("postgres", "/var/lib/postgresql/data"),
        ("redis", "/data"),
        ("worker-reports", "/app/var/backups"),
    ],
)
def test_data_lives_in_named_volumes(compose: dict[str, Any], name: str, mount_point: str) -> None:
    declared = compose.get("volumes") or {}
    sources = []
    for volume in compose["services"][name].get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source"), volume.get("target")
        else:
            source, _, rest = str(volume).partition(":")
            target = rest.split(":", 1)[0]
        if target == mount_point:
            sources.append(source)
    assert len(sources) == 1, f"{name}: nothing mounted at {mount_point}"
    assert sources[0] in declared, f"{name}: {sources[0]!r} is not a named volume declared at top level"


def test_the_callback_spool_is_one_volume_shared_by_web_and_the_payments_worker(compose: dict[str, Any]) -> None:
    """Web writes the callbacks PostgreSQL refused; the payments worker's sweeper imports them
    (docs/mpesa.md, "When PostgreSQL is down"): both must see the same directory, and it must survive."""
    spool_dir = compose["x-app-environment"]["MPESA_SPOOL_DIR"]
    assert f"MPESA_SPOOL_DIR={spool_dir}" in DOCKERFILE.read_text()
    for name in ("web", "worker-payments"):
        mounts = [str(v) for v in compose["services"][name].get("volumes", [])]
        assert f"mpesa_spool:{spool_dir}" in mounts, f"{name} does not mount the spool volume at {spool_dir}"
    assert "mpesa_spool" in (compose.get("volumes") or {})


def test_beat_runs_once_with_the_database_scheduler(services: dict[str, dict[str, Any]]) -> None:
    beat = services["beat"]
    replicas = (beat.get("deploy") or {}).get("replicas", 1)
    assert replicas <= 1
    assert beat.get("scale", 1) <= 1
    argv = as_argv(beat["command"])
    assert "beat" in argv
    assert option_values(argv, "--scheduler", "-S") == ["django_celery_beat.schedulers:DatabaseScheduler"]


def test_flower_has_basic_auth_and_bounded_history(services: dict[str, dict[str, Any]]) -> None:
    text = command_text(services["flower"])
    assert "flower" in text
    assert "--basic-auth=" in text
    assert "FLOWER_BASIC_AUTH" in text
    assert "--conf=celeryconf/flower.py" in text  # max_tasks, persistent=False...: tests/celeryconf/test_flower.py
    assert "--url-prefix=flower" in text


@pytest.mark.parametrize(
    ("name", "queue", "concurrency"),
    [("worker-payments", "payments", "2"), ("worker-default", "default", "2"), ("worker-reports", "reports", "1")],
)
def test_each_queue_has_its_own_worker(
    services: dict[str, dict[str, Any]], name: str, queue: str, concurrency: str
) -> None:
    """One queue per worker: two heavy reports never take the processes default-queue work needs."""
    argv = as_argv(services[name]["command"])
    assert "worker" in argv
    assert option_values(argv, "-Q", "--queues") == [queue]
    assert option_values(argv, "-n", "--hostname") == [f"{queue}@%h"]
    assert option_values(argv, "-c", "--concurrency") == [concurrency]
    assert services[name]["stop_signal"] == "SIGQUIT"


def test_every_queue_is_consumed_exactly_once(services: dict[str, dict[str, Any]]) -> None:
    consumed = [q for name in WORKERS for q in option_values(as_argv(services[name]["command"]), "-Q")[0].split(",")]
    assert sorted(consumed) == ["default", "payments", "reports"]


def test_reports_yield_the_cpu_to_web_and_payments(services: dict[str, dict[str, Any]]) -> None:
    reports = services["worker-reports"]
    assert as_argv(reports["command"])[:3] == ["chrt", "--idle", "0"]
    assert float(reports["cpus"]) <= 1.0
    assert int(reports["cpu_shares"]) < 1024  # Docker's default weight, which every other service keeps
    for name in ("web", "worker-payments", "worker-default", "postgres", "redis"):
        assert "cpu_shares" not in services[name] and "chrt" not in command_text(services[name]), name


def test_web_runs_gunicorn(services: dict[str, dict[str, Any]]) -> None:
    argv = as_argv(services["web"]["command"])
    assert argv[0] == "gunicorn"
    assert "backoffice.wsgi" in argv
    assert option_values(argv, "--bind", "-b") == ["0.0.0.0:8000"]
    assert option_values(argv, "--workers", "-w") == ["3"]


def test_app_services_share_the_image_and_environment(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        service = services[name]
        assert service.get("build"), f"{name} is not built from the Dockerfile"
        assert service.get("env_file") in (".env.prod", [".env.prod"])
        env = service.get("environment") or {}
        assert str(env.get("DATABASE_URL", "")).startswith("postgresql://"), name
        assert str(env.get("REDIS_URL", "")).startswith("redis://redis:"), name
        assert str(env.get("DJANGO_DEBUG")) == "0", name


def _url_user_variable(url: str) -> str:
    """The compose variable a postgresql:// URL takes its user name from (`${POSTGRES_APP_USER:?...}`)."""
    match = re.match(r"postgresql://\$\{(\w+)[:?}]", url)
    assert match, f"the user of {url!r} is not a ${{...}} variable"
    return match.group(1)


def test_app_services_connect_as_the_application_role(services: dict[str, dict[str, Any]]) -> None:
    # docs/deploy.md, "Database roles": web, workers, beat and flower never get the superuser's nor the
    # owner's credentials - neither in DATABASE_URL nor through env_file (blanked in `environment`).
    for name in APP_SERVICES:
        if name == "migrate":
            continue
        env = services[name]["environment"]
        assert _url_user_variable(env["DATABASE_URL"]) == "POSTGRES_APP_USER", name
        assert "${POSTGRES_APP_PASSWORD" in env["DATABASE_URL"], name
        for secret in ("POSTGRES_PASSWORD", "POSTGRES_OWNER_PASSWORD", "POSTGRES_USER}", "POSTGRES_OWNER_USER"):
            assert secret not in env["DATABASE_URL"], (name, secret)
        assert env.get("POSTGRES_PASSWORD") == "", name
        assert env.get("POSTGRES_OWNER_PASSWORD") == "", name
        assert env.get("DATABASE_OWNER_URL") == "", name  # flush's owner connection: development and tests only
        assert "DATABASE_APP_ROLE" not in env, name


def test_migrate_runs_as_the_owner_role_then_grants_the_application_role(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    env = migrate["environment"]
    assert _url_user_variable(env["DATABASE_URL"]) == "POSTGRES_OWNER_USER"
    assert "${POSTGRES_OWNER_PASSWORD" in env["DATABASE_URL"]
    assert env["DATABASE_APP_ROLE"].startswith("${POSTGRES_APP_USER")
    argv = as_argv(migrate["command"])
    assert argv[:2] == ["sh", "-c"]
    steps = [step.strip() for step in argv[2].split("&&")]
    assert steps.index("python manage.py migrate --noinput") < steps.index("python manage.py db_roles grant")
    # The rest of the app environment (the M-Pesa key for mpesa_reencrypt) is still there.
    assert env["MPESA_ENCRYPTION_KEY"] == services["web"]["environment"]["MPESA_ENCRYPTION_KEY"]


def test_postgres_creates_the_owner_and_application_roles(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    mounts = [str(v) for v in postgres["volumes"]]
    assert "./deploy/initdb-roles.sh:/docker-entrypoint-initdb.d/10-roles.sh:ro" in mounts
    for variable in ("POSTGRES_OWNER_USER", "POSTGRES_OWNER_PASSWORD", "POSTGRES_APP_USER", "POSTGRES_APP_PASSWORD"):
        assert postgres["environment"][variable].startswith("${" + variable), variable
    script = (ROOT / "deploy" / "initdb-roles.sh").read_text()
    assert script.count("NOSUPERUSER NOCREATEDB NOCREATEROLE") == 2
    assert 'ALTER DATABASE :"db" OWNER TO :"owner";' in script
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC;" in script
    assert 'REVOKE TEMPORARY ON DATABASE :"db" FROM PUBLIC;' in script
    assert "ON_ERROR_STOP=1" in script


def test_app_services_wait_for_migrations(services: dict[str, dict[str, Any]]) -> None:
    for name in ("web", "worker-payments", "worker-default", "worker-reports", "beat"):
        depends_on = services[name]["depends_on"]
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        assert depends_on["redis"]["condition"] == "service_healthy", name


def _published_container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            container = str(port).split("/")[0].rsplit(":", 1)[-1]
            ports.add(int(container.split("-")[0]))
    return ports


def test_only_the_proxy_publishes_ports(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "redis"):
        assert not services[name].get("ports"), f"{name} must not be published to the host"
        assert services[name].get("network_mode") != "host"
    for name, service in services.items():
        assert not ({5432, 6379} & _published_container_ports(service)), f"{name} publishes postgres/redis"
    assert _published_container_ports(services["proxy"]) == {80, 443}
    assert all(not services[name].get("ports") for name in services if name != "proxy")


def test_logs_are_rotated(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        logging = service.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        assert logging.get("options", {}).get("max-size"), name
        assert logging.get("options", {}).get("max-file"), name


def test_deploy_files_exist() -> None:
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    assert "{$SITE_DOMAIN}" in caddyfile
    assert "reverse_proxy web:8000" in caddyfile
    assert "reverse_proxy flower:5555" in caddyfile
    example = (ROOT / "deploy" / "env.prod.example").read_text()
    for variable in (
        "DJANGO_SECRET_KEY",
        "DJANGO_ALLOWED_HOSTS",
        "DJANGO_CSRF_TRUSTED_ORIGINS",
        "POSTGRES_PASSWORD",
        "POSTGRES_OWNER_USER",
        "POSTGRES_OWNER_PASSWORD",
        "POSTGRES_APP_USER",
        "POSTGRES_APP_PASSWORD",
        "SITE_DOMAIN",
        "FLOWER_BASIC_AUTH",
        "FLOWER_URL",
        "CELERY_VISIBILITY_TIMEOUT",
        "POSTGRES_BACKUP_USER",
        "POSTGRES_BACKUP_PASSWORD",
        "BACKUP_S3_BUCKET",
        "BACKUP_OFFSITE_DIR",
    ):
        assert re.search(rf"^#?\s*{variable}=", example, re.MULTILINE), f"{variable} missing from env.prod.example"


def test_dockerfile_installs_requirements_and_drops_root() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0].upper().startswith("FROM PYTHON:3.11-SLIM")
    assert re.search(r"pip install\b.*--no-cache-dir.*-r requirements\.txt", text)
    users = [line.split(None, 1)[1].strip() for line in instructions if line.upper().startswith("USER ")]
    assert users, "the image must not run as root (no USER line)"
    assert users[-1] not in {"root", "0", "0:0"}
    assert "collectstatic --noinput" in text
    assert any(line.upper().startswith("CMD") and "gunicorn" in line for line in instructions)


def test_app_services_get_the_mpesa_encryption_key(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Settings refuse to start in production without it; compose stops with a message when it is missing."""
    for name in APP_SERVICES:
        env = services[name].get("environment") or {}
        assert str(env.get("MPESA_ENCRYPTION_KEY", "")).startswith("${MPESA_ENCRYPTION_KEY:?"), name
    migrate = command_text(services["migrate"])
    assert "manage.py db_roles grant && python manage.py mpesa_reencrypt" in migrate
    example = (ROOT / "deploy" / "env.prod.example").read_text()
    assert re.search(r"^MPESA_ENCRYPTION_KEY=", example, re.MULTILINE)
    assert re.search(r"^#?\s*HEALTHZ_TOKEN=", example, re.MULTILINE)
    assert "MPESA_ENCRYPTION_KEY" in (ROOT / "Dockerfile").read_text()  # collectstatic's throwaway key


def test_gunicorn_runs_with_the_redacting_config(services: dict[str, dict[str, Any]]) -> None:
    """backoffice/gunicorn_conf.py keeps callback tokens out of the access log, in every way web starts."""
    config = "python:backoffice.gunicorn_conf"
    assert option_values(as_argv(services["web"]["command"]), "--config", "-c") == [config]
    cmd = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD"))
    assert '"--config", "python:backoffice.gunicorn_conf"' in DOCKERFILE.read_text() and "gunicorn" in cmd
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line)
    assert option_values(shlex.split(procfile["web"]), "--config", "-c") == [config]


def test_caddy_redacts_callback_tokens_in_its_logs() -> None:
    """The access log and Caddy's default log (its error lines carry the request) share one filter."""
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    snippet = re.search(r"^\(redact_callback_tokens\) \{\n(.*?)^\}", caddyfile, re.MULTILINE | re.DOTALL)
    assert snippet, "no (redact_callback_tokens) snippet"
    body = snippet.group(1)
    assert "format filter {" in body and "wrap json" in body
    rules = dict(re.findall(r'^\t+(request>\S+) regexp "([^"]+)" "\$\{1\}\$\{2\}\*\*\*"$', body, re.MULTILINE))
    assert set(rules) == {"request>uri", "request>headers>Referer"} and len(set(rules.values())) == 1
    # Go's RE2 and Python's re read this pattern alike: plain and percent-encoded forms are masked.
    pattern = re.compile(rules["request>uri"])
    for uri, logged in [
        ("/daraja/SECRET/c2b/confirm/?token=SECRET", "/daraja/***/c2b/confirm/?token=***"),
        ("/%64araja/SECRET/c2b/confirm/", "/%64araja/***/c2b/confirm/"),
        ("/daraja%2FSECRET/stk/", "/daraja%2F***/stk/"),
        ("/D%61RAJA%2fSECRET/stk/", "/D%61RAJA%2f***/stk/"),
        ("/healthz?%74oken=SECRET&x=1", "/healthz?%74oken=***&x=1"),
        ("/admin/?q=daraja", "/admin/?q=daraja"),
    ]:
        assert pattern.sub(lambda m: (m.group(1) or m.group(2)) + "***", uri) == logged, uri
    # Both logs import it: the site's access log and the global default logger.
    assert re.search(r"^\tlog default \{\n(?:\t\t.*\n)*?\t\timport redact_callback_tokens\n", caddyfile, re.MULTILINE)
    site_log = re.search(r"^\tlog \{\n((?:\t\t.*\n)*?)\t\}", caddyfile, re.MULTILINE)
    assert site_log and "import redact_callback_tokens" in site_log.group(1)
    assert "format json" not in caddyfile  # an unfiltered encoder would log the token


def test_ledger_anchors_live_on_their_own_volume_written_by_the_default_worker(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """The anchors must survive a database superuser: a named volume of their own (not pgdata), mounted
    into worker-default (the ledger.anchor task's queue), read-only into worker-reports (the backup copies
    them beside each dump)."""
    anchor_dir = compose["x-app-environment"]["LEDGER_ANCHOR_DIR"]
    assert f"LEDGER_ANCHOR_DIR={anchor_dir}" in DOCKERFILE.read_text()
    assert "ledger_anchors" in (compose.get("volumes") or {})
    worker = [str(v) for v in services["worker-default"].get("volumes", [])]
    assert f"ledger_anchors:{anchor_dir}" in worker
    assert "default" in option_values(as_argv(services["worker-default"]["command"]), "-Q")[0].split(",")
    reports = [str(v) for v in services["worker-reports"].get("volumes", [])]
    assert f"ledger_anchors:{anchor_dir}:ro" in reports
    for name, service in services.items():
        mounts = [str(v) for v in service.get("volumes", [])]
        assert not any(m.startswith("pgdata:") for m in mounts) or name == "postgres"
        assert not any(m.startswith("ledger_anchors:") for m in mounts) or name in {"worker-default", "worker-reports"}


def test_the_app_gets_the_ledger_anchor_key(services: dict[str, dict[str, Any]]) -> None:
    """Settings refuse to start in production without it; the backup signs the heads beside each dump."""
    for name in APP_SERVICES:
        env = services[name].get("environment") or {}
        assert str(env.get("LEDGER_ANCHOR_KEY", "")).startswith("${LEDGER_ANCHOR_KEY:?"), name
    for name in ("postgres", "redis", "proxy"):
        assert "LEDGER_ANCHOR_KEY" not in (services[name].get("environment") or {}), name
    example = (ROOT / "deploy" / "env.prod.example").read_text()
    assert re.search(r"^LEDGER_ANCHOR_KEY=", example, re.MULTILINE)
    assert "LEDGER_ANCHOR_KEY" in DOCKERFILE.read_text()  # collectstatic's throwaway key


def test_the_backup_runs_in_the_reports_worker_as_the_backup_role(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """backoffice.backup (reports queue): the backups volume at BACKUP_DIR, and the backup role (reads
    everything, creates the scratch database) in BACKUP_DATABASE_URL of worker-reports only."""
    reports = services["worker-reports"]
    assert option_values(as_argv(reports["command"]), "-Q") == ["reports"]
    env = reports["environment"]
    assert _url_user_variable(env["BACKUP_DATABASE_URL"]) == "POSTGRES_BACKUP_USER"
    assert "${POSTGRES_BACKUP_PASSWORD" in env["BACKUP_DATABASE_URL"]
    assert env["BACKUP_DATABASE_URL"].endswith(
        "@postgres:5432/${POSTGRES_DB:?set POSTGRES_DB in .env.prod and pass --env-file .env.prod}"
    )
    assert _url_user_variable(env["DATABASE_URL"]) == "POSTGRES_APP_USER"  # the app itself stays the app role
    assert env["AWS_SECRET_ACCESS_KEY"] == "${AWS_SECRET_ACCESS_KEY:-}"
    for name in APP_SERVICES:
        if name != "worker-reports":
            other = services[name]["environment"]
            assert other.get("BACKUP_DATABASE_URL") == "" and other.get("POSTGRES_BACKUP_PASSWORD") == "", name
            assert other.get("AWS_SECRET_ACCESS_KEY") == "", name
    backup_dir = re.search(r"BACKUP_DIR=(\S+)", DOCKERFILE.read_text())
    assert backup_dir, "the Dockerfile sets no BACKUP_DIR"
    assert f"backups:{backup_dir.group(1)}" in [str(v) for v in reports["volumes"]]
    assert "backups" in (compose.get("volumes") or {})
    # No second backup system: the old pg_dump container and its scripts are gone.
    assert "backup" not in services
    assert not (ROOT / "deploy" / "backup.sh").exists() and not (ROOT / "deploy" / "ledger-anchors.sh").exists()
    postgres = services["postgres"]["environment"]
    for variable in ("POSTGRES_BACKUP_USER", "POSTGRES_BACKUP_PASSWORD"):
        assert postgres[variable].startswith("${" + variable), variable
    script = (ROOT / "deploy" / "initdb-roles.sh").read_text()
    assert "CREATE ROLE :\"backup\" LOGIN PASSWORD :'backup_password'\n  NOSUPERUSER CREATEDB NOCREATEROLE" in script
    assert 'GRANT pg_read_all_data TO :"backup";' in script


def test_the_image_has_the_client_tools_of_the_servers_major() -> None:
    """pg_dump/pg_restore of the postgres image's major (the backup refuses any other, backoffice/backups.py)."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    image = compose["services"]["postgres"]["image"]
    major = re.fullmatch(r"postgres:(\d+)(?:[.-].*)?", image)
    assert major, image
    text = DOCKERFILE.read_text()
    assert f"ARG PG_MAJOR={major.group(1)}" in text
    assert '"postgresql-client-${PG_MAJOR}"' in text
    assert "ENV PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin" in text

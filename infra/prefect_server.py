"""A local Prefect server (`prefect server start`) as a subprocess: UI, API, scheduler, SQLite database.

Used by `lmforge ui`, by `lmforge run` (a server per run, its database in the run's folder) and by
the integration tests. The database lives under the given home folder (PREFECT_HOME), so a user
keeps their runs and schedules where they choose; a new home starts from a copy of a migrated empty
database (`seed_database`), which saves the server most of its start-up.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmforge.core.errors import ConfigError, LmforgeError
from lmforge.core.logs import get_logger
from lmforge.infra.remote_fs import lmforge_cache_dir

log = get_logger(__name__)
HOST = "127.0.0.1"
DEFAULT_PORT = 4200
API_URL_ENV = "PREFECT_API_URL"
DATABASE_FILE = "prefect.db"
# A database the user configured instead of $PREFECT_HOME/prefect.db.
DATABASE_URL_ENV = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
# How often a starting server's health is asked for (a run waits on it, so finely).
POLL_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class PrefectServer:
    """`prefect server start` bound to 127.0.0.1 with its database in `home`; `start()` waits for health."""

    def __init__(
        self,
        home: Path,
        port: int = DEFAULT_PORT,
        log_path: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.port = port
        self.log_path = log_path or self.home / "server.log"
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._launched_at = 0.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def environment(self) -> dict[str, str]:
        """The variables a client (CLI, runner, test) needs to talk to this server."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}

    def start(self, timeout: float = 90.0) -> PrefectServer:
        return self.launch().wait_ready(timeout)

    def launch(self) -> PrefectServer:
        """Start the server process and return at once (`wait_ready` waits for it): a caller has
        seconds of its own start-up to do meanwhile."""
        if self.healthy():
            raise ConfigError(f"something already answers on {self.url}; choose another --port")
        self.home.mkdir(parents=True, exist_ok=True)
        seeded = seed_database(self.home)
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": self.api_url,
            # A copy of this Prefect's template is migrated and holds its block types already.
            **(TEMPLATE_READY_ENV if seeded == "copied" else {}),
            **self.extra_env,
        }
        env.pop(API_URL_ENV, None)
        command = [_prefect_executable(), "server", "start", "--host", HOST, "--port", str(self.port)]
        with open(self.log_path, "ab") as sink:
            self.process = subprocess.Popen(
                command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._launched_at = time.monotonic()
        return self

    def wait_ready(self, timeout: float = 90.0) -> PrefectServer:
        """Wait until the launched server answers its health check (at most `timeout` s from launch)."""
        assert self.process is not None, "launch() first"
        deadline = self._launched_at + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LmforgeError(
                    f"prefect server exited with code {self.process.returncode}; see {self.log_path}"
                )
            if self.healthy():
                log.info("Prefect server up at %s (database in %s)", self.url, self.home)
                return self
            time.sleep(POLL_SECONDS)
        self.stop()
        raise LmforgeError(
            f"prefect server did not answer on {self.url} within {timeout:.0f} s; see {self.log_path}"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait(self) -> int:
        """Block until the server exits (Ctrl-C stops it; see `interrupt_on_termination`)."""
        assert self.process is not None
        try:
            code = self.process.wait()
        except KeyboardInterrupt:
            self.stop()
            return 0
        raise LmforgeError(f"prefect server exited with code {code}; see {self.log_path}")

    def stop(self, grace: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> PrefectServer:
        return self.start()

    @contextmanager
    def launched(self) -> Iterator[PrefectServer]:
        """Launched (not yet waited for) for the block, stopped after it."""
        self.launch()
        try:
            yield self
        finally:
            self.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# What a server started on a fresh copy of the template can skip: the migrations check and the
# registration of every block type (a few hundred schema upserts; its memo is keyed by the database
# path, so a new home always repeated it).
TEMPLATE_READY_ENV = {
    "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
}
# Migrates a database at $PREFECT_HOME/prefect.db and registers the block types of the installed
# Prefect and its collections, as a server does at start.
_TEMPLATE_SCRIPT = """
import asyncio

from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration


async def build():
    db = provide_database_interface()
    await db.create_db()
    session = await db.session()
    async with session:
        await run_block_auto_registration(session=session)


asyncio.run(build())
"""


def database_template() -> Path:
    """The empty, migrated SQLite database with registered block types, copied into each new server
    home: one per Prefect version and set of installed Prefect collections (they add block types)."""
    collections = sorted(
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in importlib.metadata.distributions()
        if (dist.metadata["Name"] or "").lower().startswith("prefect-")
    )
    tag = hashlib.sha256("\n".join(collections).encode()).hexdigest()[:8]
    version = importlib.metadata.version("prefect")
    return lmforge_cache_dir() / "prefect-db" / f"prefect-{version}-blocks-{tag}.db"


def seed_database(home: Path, template: Path | None = None) -> str:
    """Give a new server home a copy of the migrated template database: a fresh SQLite file takes
    the server ~5 s of migrations on 2 cores (the server still checks the copy's migrations, so a
    template a version behind is upgraded, not trusted). Without a template one is built in the
    background for the next server. Returns what was done: kept, copied, building or skipped."""
    database = home / DATABASE_FILE
    if database.exists():
        return "kept"
    if any(os.environ.get(name) for name in DATABASE_URL_ENV):
        return "skipped"  # the user's own database (Postgres, another file): nothing to seed
    template = template or database_template()
    if template.is_file():
        shutil.copyfile(template, database)
        return "copied"
    _build_template(template)
    return "building"


def _build_template(template: Path) -> None:
    """Migrate an empty database and register the block types in a scratch home beside `template`
    (`_TEMPLATE_SCRIPT`, in this Python), then rename it into place
    (atomic: concurrent builders never leave a half-written template). Detached, so it finishes
    even when the run that started it has ended."""
    template.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".build-", dir=template.parent)
    env = {**os.environ, "PREFECT_HOME": scratch, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for name in DATABASE_URL_ENV:
        env.pop(name, None)
    script = '"$0" -c "$3" && mv "$1/prefect.db" "$2"; rm -rf "$1"'
    subprocess.Popen(
        ["sh", "-c", script, sys.executable, scratch, str(template), _TEMPLATE_SCRIPT],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, like Ctrl-C, so `finally` blocks stop a server we
    started (it runs in its own session, so it never gets the terminal's signals itself)."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, interrupt)


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the lmforge process that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _prefect_executable() -> str:
    beside = Path(sys.executable).with_name("prefect")
    if beside.exists():
        return str(beside)
    found = shutil.which("prefect")
    if found is None:
        raise ConfigError("the `prefect` command is not installed in this environment")
    return found


def require_api_url() -> str:
    """The configured Prefect API URL; deployments and schedules need a real server."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError(
            "no Prefect server configured: deployments and schedules need one. Start it with "
            f"`lmforge ui` (or `make ui`), then `export PREFECT_API_URL=http://{HOST}:{DEFAULT_PORT}/api`"
        )
    return str(url)

"""A local Prefect server (`prefect server start`) as a subprocess: UI, API, scheduler, SQLite database.

Used by `lmforge ui` and by the integration tests. The database lives under the given home folder
(PREFECT_HOME), so a user keeps their runs and schedules where they choose.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from lmforge.core.errors import ConfigError, LmforgeError
from lmforge.core.logs import get_logger

log = get_logger(__name__)
HOST = "127.0.0.1"
DEFAULT_PORT = 4200
API_URL_ENV = "PREFECT_API_URL"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class PrefectServer:
    """`prefect server start` bound to 127.0.0.1 with its database in `home`; `start()` waits for health."""

    def __init__(self, home: Path, port: int = DEFAULT_PORT, log_path: Path | None = None) -> None:
        self.home = Path(home).expanduser().resolve()
        self.port = port
        self.log_path = log_path or self.home / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

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
        if self.healthy():
            raise ConfigError(f"something already answers on {self.url}; choose another --port")
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": self.api_url,
        }
        env.pop(API_URL_ENV, None)
        command = [_prefect_executable(), "server", "start", "--host", HOST, "--port", str(self.port)]
        with open(self.log_path, "ab") as sink:
            self.process = subprocess.Popen(
                command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LmforgeError(
                    f"prefect server exited with code {self.process.returncode}; see {self.log_path}"
                )
            if self.healthy():
                log.info("Prefect server up at %s (database in %s)", self.url, self.home)
                return self
            time.sleep(0.5)
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

    def __exit__(self, *exc: object) -> None:
        self.stop()


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

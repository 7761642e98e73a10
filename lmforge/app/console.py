"""A run's terminal: one progress display for the person, every byte of output in the run's log file.

`RunConsole` points the process's stdout and stderr at the log file at the file-descriptor level, so
C++ code (Ray, glog) and child processes started inside it (Ray's raylet, Prefect's temporary
server) write there too; routes Python logging there with timestamps and logger names; and drives a
progress view (`progress_view`) on a saved copy of the real terminal. `verbose` tees all of it to the
terminal as well.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from lmforge.app.progress_view import LiveView, PlainView, TerminalConsole
from lmforge.core.logs import ROOT_LOGGER
from lmforge.infra.progress import add_listener, remove_listener

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TEE_JOIN_SECONDS = 2.0


class RunConsole:
    """`with RunConsole(log_path, verbose) as console:` for the length of a run; see the module doc.

    live: the live panel (True) or plain lines (False); None picks the panel on a terminal only.

    A Ray runtime started inside the block is shut down on exit, while its last output still goes
    to the log (else Ray's driver prints its workers' last lines on the terminal after the summary).
    """

    def __init__(self, log_path: Path, verbose: bool = False, *, live: bool | None = None) -> None:
        self.log_path, self.verbose, self.live = Path(log_path), verbose, live
        self.view: LiveView | PlainView | None = None
        self._stack = contextlib.ExitStack()
        self._log_fd: int | None = None
        self._terminal: TextIO | None = None
        self._failed = False
        self._ray_was_running = False

    def print(self, text: str) -> None:
        """A line for the person at the terminal (kept in the log file too)."""
        if self.view is None or self._log_fd is None:  # not entered, or already left
            print(text, flush=True)
            return
        self.view.line(text)
        _write_all(self._log_fd, (text + "\n").encode())

    def __enter__(self) -> RunConsole:
        try:
            self._open()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._failed = exc_type is not None and not (isinstance(exc, SystemExit) and not exc.code)
        try:
            if not self._ray_was_running and _ray_running():
                from lmforge.infra.ray_runtime import shutdown_ray

                shutdown_ray()
        finally:
            with _interrupts_deferred():
                self._stack.close()
            self.view = None

    def _open(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._ray_was_running = _ray_running()
        _flush_std_streams()
        saved_out, saved_err = os.dup(1), os.dup(2)
        self._stack.callback(os.close, saved_err)
        self._stack.callback(os.close, saved_out)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._log_fd = log_fd
        self._stack.callback(self._close_log)
        stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        _write_all(log_fd, f"===== lmforge console log: {stamp}, pid {os.getpid()} =====\n".encode())
        terminal = open(  # closed by the exit stack
            os.dup(saved_out), "w", encoding=_terminal_encoding(), errors="replace", buffering=1
        )
        self._terminal = terminal
        self._stack.callback(self._close_terminal)
        self._stack.callback(self._tell_log_path_on_failure)
        self.view = self._make_view(terminal, saved_out)
        self._redirect(saved_out, saved_err, log_fd, self.view)
        routing = LogRouting(self.log_path, self.verbose, self.view)
        routing.install()
        self._stack.callback(routing.uninstall)
        self.view.start()
        self._stack.callback(self.view.stop)
        add_listener(self.view)
        self._stack.callback(remove_listener, self.view)

    def _make_view(self, terminal: TextIO, terminal_fd: int) -> LiveView | PlainView:
        console = TerminalConsole(terminal_fd, file=terminal)
        live = self.live
        if live is None:
            live = console.is_terminal and not console.is_dumb_terminal
        return LiveView(console) if live else PlainView(terminal)

    def _redirect(self, saved_out: int, saved_err: int, log_fd: int, view: LiveView | PlainView) -> None:
        """fds 1 and 2 onto the log file, or (verbose) onto a pipe whose reader tees to both."""
        if not self.verbose:
            self._stack.callback(_restore_fds, saved_out, saved_err)
            # Straight onto the file: children that outlive the run still write somewhere sane.
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            return
        read_fd, write_fd = os.pipe()
        tee = threading.Thread(target=_tee, args=(read_fd, log_fd, view), name="lmforge-tee", daemon=True)
        self._tee = tee
        # Exit runs callbacks last-in first-out: the join comes after the fds are restored, when
        # only children still hold the pipe's write end.
        self._stack.callback(self._join_tee, read_fd)
        self._stack.callback(_restore_fds, saved_out, saved_err)
        tee.start()
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.close(write_fd)

    def _join_tee(self, read_fd: int) -> None:
        self._tee.join(TEE_JOIN_SECONDS)
        if not self._tee.is_alive():
            os.close(read_fd)
        # else a child (Prefect's server until exit) still writes: the daemon thread keeps teeing,
        # and the fds it uses stay open.

    def _tee_running(self) -> bool:
        tee = getattr(self, "_tee", None)
        return tee is not None and tee.is_alive()

    def _tell_log_path_on_failure(self) -> None:
        if self._failed and self._terminal is not None:
            self._terminal.write(f"full log: {self.log_path}\n")
            self._terminal.flush()

    def _close_terminal(self) -> None:
        if self._terminal is not None and not self._tee_running():
            self._terminal.close()

    def _close_log(self) -> None:
        if self._log_fd is not None and not self._tee_running():
            os.close(self._log_fd)
        self._log_fd = None


class LogRouting:
    """Python logging for a run: every record to the log file with time and logger name; on the
    terminal (through the view) lmforge warnings and errors, or (verbose) every record.

    Handlers that write to stdout/stderr (Prefect's console handler, Ray's) are set aside while it
    is installed, so a record is written once; a logger that had one and does not propagate gets
    ours instead. Handlers that libraries install later write to stderr, i.e. the log file.
    """

    def __init__(self, log_path: Path, verbose: bool, view: LiveView | PlainView) -> None:
        self.file_handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        self.file_handler.setFormatter(RunFormatter(LOG_FORMAT))
        self.terminal_handler = ViewHandler(view)
        if verbose:
            self.terminal_handler.setFormatter(RunFormatter(LOG_FORMAT))
        else:
            self.terminal_handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
            self.terminal_handler.addFilter(lmforge_warnings)
        self._set_aside: list[tuple[logging.Logger, list[logging.Handler]]] = []
        self._ours_on: list[logging.Logger] = []
        self._captured_warnings = False

    def install(self) -> None:
        root = logging.getLogger()
        loggers = [root] + [
            item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)
        ]
        for logger in loggers:
            console = [handler for handler in logger.handlers if is_console_handler(handler)]
            for handler in console:
                logger.removeHandler(handler)
            if console:
                self._set_aside.append((logger, console))
            if logger is root or (console and not logger.propagate):
                logger.addHandler(self.file_handler)
                logger.addHandler(self.terminal_handler)
                self._ours_on.append(logger)
        self._captured_warnings = getattr(logging, "_warnings_showwarning", None) is not None
        logging.captureWarnings(True)

    def uninstall(self) -> None:
        logging.captureWarnings(self._captured_warnings)
        for logger in self._ours_on:
            logger.removeHandler(self.file_handler)
            logger.removeHandler(self.terminal_handler)
        for logger, handlers in self._set_aside:
            for handler in handlers:
                logger.addHandler(handler)
        self.file_handler.close()


class RunFormatter(logging.Formatter):
    """Names the Prefect flow or task run a record belongs to: `prefect.task_runs[clean-ab7]`."""

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        if not run or record.name.endswith("]"):
            return super().format(record)
        name = record.name
        record.name = f"{name}[{run}]"
        try:
            return super().format(record)
        finally:
            record.name = name


class ViewHandler(logging.Handler):
    """Log records as lines of the progress view (above its live panel)."""

    def __init__(self, view: LiveView | PlainView) -> None:
        super().__init__()
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.view.line(self.format(record))
        except Exception:
            self.handleError(record)


def lmforge_warnings(record: logging.LogRecord) -> bool:
    """Records for a non-verbose terminal: warnings and errors of lmforge's own loggers."""
    own = record.name == ROOT_LOGGER or record.name.startswith(ROOT_LOGGER + ".")
    return own and record.levelno >= logging.WARNING


def is_console_handler(handler: logging.Handler) -> bool:
    """A handler writing to the process's stdout or stderr (not a file, not a capture buffer)."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream: Any = handler.stream
    if stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        return True
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):
        return False


def _tee(read_fd: int, log_fd: int, view: LiveView | PlainView) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            return
        if not chunk:
            view.echo(decoder.decode(b"", final=True))
            return
        try:
            _write_all(log_fd, chunk)
            view.echo(decoder.decode(chunk))
        except Exception:  # the terminal or file went away: keep draining so writers never block
            pass


def _restore_fds(saved_out: int, saved_err: int) -> None:
    _flush_std_streams()
    os.dup2(saved_out, 1)
    os.dup2(saved_err, 2)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _terminal_encoding() -> str:
    return getattr(sys.__stdout__, "encoding", None) or "utf-8"


def _ray_running() -> bool:
    ray = sys.modules.get("ray")  # never imported here: a run that uses no Ray pays nothing
    return ray is not None and bool(ray.is_initialized())


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C while the terminal is put back, then hand it to the handler it was meant for."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # only the main thread may set handlers; None: a handler Python did not install
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):  # default_int_handler raises KeyboardInterrupt
        previous(signal.SIGINT, None)

"""Headless Chromium driven over the DevTools protocol: what a page's images did, and screenshots.

A test helper, not product code. It talks to the system Chromium through one websocket
(`websockets`), so no browser download is involved; `find_chromium()` returns None where none is
installed and callers skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NETWORK_SCHEMES = ("http://", "https://", "file://")
IMAGES_SCRIPT = (
    "Array.from(document.images, image => ({src: image.currentSrc || image.src, alt: image.alt,"
    " complete: image.complete, naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight}))"
)


@dataclass
class ImageState:
    """One <img> element: `complete` with a natural size of zero means it failed to load or decode."""

    src: str
    alt: str
    complete: bool
    natural_width: int
    natural_height: int

    @property
    def loaded(self) -> bool:
        return self.complete and self.natural_width > 0


@dataclass
class PageState:
    """What a loaded page showed: its <img> elements and the errors it logged."""

    url: str
    images: list[ImageState] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """$LMFORGE_CHROMIUM, else the first Chromium or Chrome on PATH; None when there is none.

    Looks in the same order as `.ci/run`, which installs Chromium only when this finds none.
    """
    names = (os.environ.get("LMFORGE_CHROMIUM", ""), *CHROMIUM_NAMES)
    return next((path for name in names if name and (path := shutil.which(name))), None)


def chromium_version(executable: str) -> str:
    # The Debian wrapper script may print shell noise on stderr; the version is on stdout.
    result = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip()


class Chromium:
    """One headless Chromium process and one page in it, as a context manager."""

    def __init__(self, executable: str, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.executable, self.width, self.height, self.timeout = executable, width, height, timeout
        self.events: list[dict] = []
        self._next_id = 0

    def __enter__(self) -> Chromium:
        from websockets.sync.client import connect

        self._workdir = tempfile.TemporaryDirectory(prefix="lmforge-chromium-")
        self._profile = Path(self._workdir.name) / "profile"
        self._log = Path(self._workdir.name) / "chromium.log"
        with self._log.open("wb") as log:
            self._process = self._start(log)
        try:
            self._socket = connect(self._browser_endpoint(), max_size=None, open_timeout=self.timeout)
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
            self._session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable", session=True)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
                session=True,
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, log: BinaryIO) -> subprocess.Popen:
        return subprocess.Popen(
            [
                self.executable,
                "--headless=new",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                f"--window-size={self.width},{self.height}",
                # CI containers often lack the namespaces the sandbox needs (and we may be root);
                # the pages loaded are our own reports and a local Prefect UI.
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-extensions",
                "about:blank",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,  # its renderer and GPU processes go with it on kill
        )

    def __exit__(self, *exc_info) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            try:
                self.call("Browser.close", timeout=5)
            except Exception:
                pass  # killed below
            socket.close()
        else:
            self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._workdir.cleanup()

    def _browser_endpoint(self) -> str:
        """Chromium writes its chosen port and browser path to DevToolsActivePort once listening."""
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self._log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.executable} exited with {self._process.returncode}:\n{output}")
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) == 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise TimeoutError(f"{self.executable} did not open its DevTools port in {self.timeout}s")

    def _receive(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no DevTools message in time")
        return json.loads(self._socket.recv(timeout=remaining))

    def call(
        self, method: str, params: dict | None = None, session: bool = False, timeout: float | None = None
    ) -> dict:
        """Send one DevTools command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._socket.send(json.dumps(message))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            else:
                return reply["result"]

    def wait_for_event(self, method: str, start: int = 0) -> dict:
        """The first event named `method` at or after index `start` of `self.events`."""
        deadline = time.monotonic() + self.timeout
        index = start
        while True:
            while index < len(self.events):
                if self.events[index].get("method") == method:
                    return self.events[index]
                index += 1
            self.events.append(self._receive(deadline))

    def wait_for_network_idle(self, start: int = 0, idle_seconds: float = 0.5) -> bool:
        """Wait until, counting from event `start`, no request has been open for `idle_seconds`.

        Only requests that go over the network (or read a file) count: blob: and data: loads
        (a web worker's script, an inline image) may never report finishing. A single-page app
        that keeps polling may never go idle; returns False after the timeout instead of raising,
        so a screenshot can still be taken.
        """
        in_flight: set[str] = set()
        deadline = time.monotonic() + self.timeout
        index, quiet_since = start, time.monotonic()
        while time.monotonic() < deadline:
            for event in self.events[index:]:
                method, params = event.get("method"), event.get("params", {})
                if method == "Network.requestWillBeSent" and params["request"]["url"].startswith(
                    NETWORK_SCHEMES
                ):
                    in_flight.add(params["requestId"])
                    quiet_since = time.monotonic()
                elif method in ("Network.loadingFinished", "Network.loadingFailed"):
                    if params["requestId"] in in_flight:
                        in_flight.discard(params["requestId"])
                        quiet_since = time.monotonic()
            index = len(self.events)
            if not in_flight and time.monotonic() - quiet_since >= idle_seconds:
                return True
            try:
                self.events.append(self._receive(min(deadline, time.monotonic() + 0.1)))
            except TimeoutError:
                pass
        return False

    def open(self, url: str, settle_seconds: float = 0.0) -> None:
        """Navigate, wait for the load event and network idle, then `settle_seconds` more."""
        start = len(self.events)
        navigation = self.call("Page.navigate", {"url": url}, session=True)
        if "errorText" in navigation:
            raise RuntimeError(f"could not open {url}: {navigation['errorText']}")
        self.wait_for_event("Page.loadEventFired", start)
        self.wait_for_network_idle(start)
        time.sleep(settle_seconds)

    def page_state(self, url: str) -> PageState:
        result = self.call(
            "Runtime.evaluate", {"expression": IMAGES_SCRIPT, "returnByValue": True}, session=True
        )
        images = [
            ImageState(
                item["src"], item["alt"], item["complete"], item["naturalWidth"], item["naturalHeight"]
            )
            for item in result["result"]["value"]
        ]
        return PageState(url, images, console_errors(self.events))

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params |= {"captureBeyondViewport": True}
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", params, session=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def console_errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser-logged errors (failed loads) among `events`."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            errors.append(f"{entry['text']} ({entry.get('url', '')})")
    return errors


def render(url: str, executable: str, width: int = 1280, height: int = 900) -> PageState:
    """Load `url` headless and report its images and console errors."""
    with Chromium(executable, width, height) as browser:
        browser.open(url)
        return browser.page_state(url)


def screenshot(
    url: str,
    path: Path,
    executable: str,
    width: int = 1280,
    height: int = 900,
    settle_seconds: float = 2.0,
    full_page: bool = False,
) -> Path:
    """Write a PNG of `url` at a `width` x `height` viewport, taken `settle_seconds` after network idle."""
    with Chromium(executable, width, height) as browser:
        browser.open(url, settle_seconds)
        return browser.screenshot(Path(path), full_page)

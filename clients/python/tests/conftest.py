"""Fixtures: real middleman brokers for the client tests.

How: the broker binary from `MIDDLEMAN_BIN`, else `<repo>/target/release/middleman` (built with
`cargo build --release --bin middleman` when missing), started on 127.0.0.1 with two shards and
the keys below; its `listening on ws://ADDR` line gives the port."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest
from hypothesis import settings

# No example database: the tests may run from the repository root, and a failing example is
# printed in full anyway.
settings.register_profile("middleman", database=None)
settings.load_profile("middleman")

SERVICE_KEY = "test-service-key"
CLIENT_KEY = "test-client-key"
REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 30.0


def broker_binary() -> str:
    path = os.environ.get("MIDDLEMAN_BIN")
    if path:
        return path
    built = REPO / "target" / "release" / "middleman"
    if not built.exists():
        subprocess.run(["cargo", "build", "--release", "--bin", "middleman"], cwd=REPO, check=True)
    return str(built)


class Broker:
    """One broker process; `url` is its ws:// address. `stop()` kills it (SIGKILL: no close
    frames, as when a machine dies); `start()` starts it again on the same port."""

    def __init__(self, extra: List[str]) -> None:
        self.extra = extra
        self.port = 0
        self.proc: Optional[subprocess.Popen[str]] = None
        self.output: List[str] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> None:
        args = [
            broker_binary(), "--listen", f"127.0.0.1:{self.port}", "--shards", "2",
            "--service-key", SERVICE_KEY, "--client-key", CLIENT_KEY, *self.extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEMAN_")}
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.proc = proc
        found = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:  # keeps reading so the pipe never fills
                self.output.append(line)
                prefix = "listening on ws://127.0.0.1:"
                if not found.is_set() and line.strip().startswith(prefix):
                    self.port = int(line.strip()[len(prefix):])
                    found.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not found.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                reader.join(5)
                raise RuntimeError(f"the broker did not start: {args}\n{''.join(self.output)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def terminate(self) -> None:
        """SIGTERM: the broker drains and closes every connection with 1001 `going away`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def restart(self) -> None:
        """Kills the broker and starts a new one on the same port (retrying while the port
        is still taken)."""
        self.stop()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture
def start_broker() -> Iterator[Callable[..., Broker]]:
    """`start_broker(*extra_flags)` starts a broker; all are killed after the test."""
    started: List[Broker] = []

    def start(*extra: str) -> Broker:
        broker = Broker(list(extra))
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """One broker shared by a module's tests (they use distinct topics)."""
    b = Broker(["--request-timeout", "2s"])
    b.start()
    yield b
    b.stop()

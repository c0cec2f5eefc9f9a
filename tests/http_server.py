"""A real `python -m serve.http` on 127.0.0.1 for the service's tests: started on a free port, ended by its pid."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from helpers import ROOT

API_KEY = "test-key-0123"


class Server:
    def __init__(self, model: Path, *args: str, api_key: str | None = API_KEY):
        env = {**os.environ, "CHARLSTM_API_KEY": api_key or ""}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serve.http", str(model), "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        first = self.process.stderr.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", first)
        if not match:
            self.process.kill()
            raise RuntimeError(f"the server did not start: {first}{self.process.stderr.read()}")
        self.url = match.group(1)
        self.model_id = model.name
        self.api_key = api_key
        self.stderr: list[str] = []  # what it writes later, kept so that the pipe never fills
        self.reader = threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {sample name with labels: value}."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def post(self, body: dict, timeout: float = 60) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + "/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **self.headers()},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def wait_for(self, check, timeout: float = 10, what: str = "a condition") -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

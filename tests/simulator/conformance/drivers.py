"""Two drivers of the same conformance scenarios: the real Python `fal_client` (in process) and the real
`@fal-ai/client` (js/conformance.mjs, in a Node subprocess). Each scenario returns the same plain JSON
outcome whichever client ran it, so one test asserts both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

import fal_client
import httpx

from klingflow.endpoint import ENDPOINT_ID

JS_DIR = Path(__file__).parent / "js"
JS_SCRIPT = JS_DIR / "conformance.mjs"
JS_PACKAGE = JS_DIR / "node_modules" / "@fal-ai" / "client" / "package.json"
JS_TIMEOUT_S = 180


class Driver(Protocol):
    """Runs one named scenario against a simulator and returns its outcome."""

    name: str

    def __call__(self, scenario: str, **args: Any) -> dict[str, Any]: ...


def js_missing_reason() -> str | None:
    """Why the JS driver cannot run here (None when node and the installed package are present)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not JS_PACKAGE.is_file():
        return f"@fal-ai/client is not installed: run `npm ci` in {JS_DIR}"
    return None


class JsDriver:
    """The real @fal-ai/client, through the Node script."""

    name = "js"

    def __init__(self, sim_url: str, key: str) -> None:
        self.sim_url, self.key = sim_url, key

    def __call__(self, scenario: str, **args: Any) -> dict[str, Any]:
        env = {**os.environ, "SIM_URL": self.sim_url, "FAL_KEY": self.key, "NO_PROXY": "127.0.0.1,localhost"}
        proc = subprocess.run(
            ["node", str(JS_SCRIPT), scenario, json.dumps(args)],
            cwd=JS_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=JS_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"node scenario {scenario} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _error(exc: fal_client.client.FalClientHTTPError) -> dict[str, Any]:
    try:
        body = exc.response.json()
    except ValueError:
        body = None
    return {"status": exc.status_code, "body": body}


def _failure(call: Any) -> dict[str, Any] | None:
    try:
        call()
    except fal_client.client.FalClientHTTPError as exc:
        return _error(exc)
    return None


class PythonDriver:
    """The real fal_client (pointed at the simulator by the `make_sim` fixture)."""

    name = "python"

    def __init__(self, sim_url: str, key: str) -> None:
        self.sim_url, self.key = sim_url, key
        self.client = fal_client.SyncClient(key=key)

    def __call__(self, scenario: str, **args: Any) -> dict[str, Any]:
        return getattr(self, scenario)(**args)

    def upload(self, path: str, content_type: str) -> dict[str, Any]:
        return {"url": self.client.upload_file(Path(path))}

    def subscribe(self, input: dict[str, Any]) -> dict[str, Any]:
        updates: list[fal_client.Status] = []
        data = self.client.subscribe(ENDPOINT_ID, input, with_logs=True, on_queue_update=updates.append)
        return {
            "request_id": None,  # fal_client's subscribe returns only the output
            "data": data,
            "statuses": [_status_name(u) for u in updates],
            "logs": [log["message"] for u in updates for log in (getattr(u, "logs", None) or [])],
        }

    def submit_status_result(self, input: dict[str, Any]) -> dict[str, Any]:
        handle = self.client.submit(ENDPOINT_ID, input)
        statuses = ["IN_QUEUE"]
        while not isinstance(status := handle.status(with_logs=True), fal_client.Completed):
            statuses.append(_status_name(status))
            time.sleep(0.05)
        statuses.append("COMPLETED")
        return {"request_id": handle.request_id, "statuses": statuses, "data": handle.get()}

    def stream_status(self, input: dict[str, Any]) -> dict[str, Any]:
        """fal_client 1.0.3 has no streaming-status API: read the same SSE route with its key over httpx."""
        handle = self.client.submit(ENDPOINT_ID, input)
        url = f"{handle.status_url}/stream"
        updates: list[dict[str, Any]] = []
        headers = {"Authorization": f"Key {self.key}", "Accept": "text/event-stream"}
        with httpx.stream("GET", url, params={"logs": "1"}, headers=headers, timeout=60) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    updates.append(json.loads(line[len("data: ") :]))
        sub = self.client.subscribe(ENDPOINT_ID, input)  # JS's second run is its streaming subscribe
        return {
            "request_id": handle.request_id,
            "statuses": [u["status"] for u in updates],
            "final_status": updates[-1]["status"],
            "logs": [log["message"] for u in updates for log in (u.get("logs") or [])],
            "data": handle.get(),
            "subscribe_data": sub,
        }

    def cancel(self, running_input: dict[str, Any], queued_input: dict[str, Any]) -> dict[str, Any]:
        running = self.client.submit(ENDPOINT_ID, running_input)
        _wait(running, fal_client.InProgress)
        queued = self.client.submit(ENDPOINT_ID, queued_input)
        before = _status_name(queued.status())
        queued.cancel()
        running.cancel()
        out = {}
        for name, handle in (("queued", queued), ("running", running)):
            _wait(handle, fal_client.Completed)
            out[name] = _failure(handle.get)
        return {"queued_status_before": before, **out}

    def run(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"request_id": None, "data": self.client.run(ENDPOINT_ID, input)}

    def webhook(self, input: dict[str, Any], webhook_url: str) -> dict[str, Any]:
        return {"request_id": self.client.submit(ENDPOINT_ID, input, webhook_url=webhook_url).request_id}

    def invalid(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"error": _failure(lambda: self.client.subscribe(ENDPOINT_ID, input))}

    def queue_full(self, input: dict[str, Any], max_queue_length: int) -> dict[str, Any]:
        """fal_client has no option for the query parameter; it rides on the application path."""
        application = f"{ENDPOINT_ID}?fal_max_queue_length={max_queue_length}"
        return {"request_id": self.client.submit(application, input).request_id}


def _status_name(status: fal_client.Status) -> str:
    return {fal_client.Queued: "IN_QUEUE", fal_client.InProgress: "IN_PROGRESS"}.get(type(status), "COMPLETED")


def _wait(handle: fal_client.SyncRequestHandle, wanted: type, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not isinstance(handle.status(), wanted):
        if time.monotonic() > deadline:
            raise AssertionError(f"{handle.request_id} never reached {wanted.__name__}")
        time.sleep(0.025)

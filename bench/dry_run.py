"""A 10,000-row dry run's rate and memory, and whether one trickling input URL holds up the others.

    python -m bench.dry_run
    python -m bench.dry_run --rows 10000 --clips 20 --trickle-rows 10 --trickle-s 60

(a) `klingflow run MANIFEST --dry-run` of `--rows` rows over `--clips` distinct compliant 1280x720
clips (make_clip, 3.0-4.9 s: 3 s is the endpoint's minimum, so no clip is shorter), each clip used
by rows/clips rows, every row a distinct prompt (so a distinct job). Rate after start-up is
(rows - 1) / (wall of the N-row run - wall of a 1-row run): the 1-row run has the same setup (fresh
state dir, same Prefect server, same clips) and is done twice, after a warm-up run, taking the
faster. Peak RSS is `os.wait4`'s ru_maxrss of the klingflow process (see bench.hashing). Targets:
exit 0 with every row `dry_run` in the report, ≥ 200 rows/s, peak RSS ≤ 1000 MB (10^6 bytes).

(b) A real run on the embedded simulator (`--concurrency 4`) of `--trickle-rows` rows: row 1's video is
an http URL served by a local server that sends 1 KiB every 0.5 s; after `--trickle-s` seconds it
sends the rest at once, so the run ends (under klingflow's own `--fetch-timeout`, 600 s, which would
fail that row alone). The other rows are local
files. From the report (`submitted_at` per row, `run_started_at`) and the server's clock: the last
non-trickling submission after flow start, against the end of the trickling fetch. Target: every
other row submitted, the last of them at least trickle-s/2 before the trickling fetch ended.

Both parts share one Prefect server started first (its start-up is not the pipeline's).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from bench.hashing import (
    MB,
    RunResult,
    klingflow_command,
    klingflow_env,
    latest_run,
    print_checks,
    run_measured,
    with_tmp,
    write_manifest,
)
from bench.prefect_server import prefect_server
from klingflow.media.synth import make_clip

ROWS_PER_S = 200.0
DRY_RSS_MB = 1000.0
TRICKLE_BYTES = 1024
TRICKLE_EVERY_S = 0.5
TRICKLE_CONCURRENCY = 4


# --- (a) the dry run ------------------------------------------------------------------------------


@dataclass
class DryFigures:
    rows: int
    startup: list[RunResult] = field(default_factory=list)
    run: RunResult | None = None
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def startup_s(self) -> float:
        return min(r.wall_s for r in self.startup)

    @property
    def rows_per_s(self) -> float:
        assert self.run is not None
        return (self.rows - 1) / max(self.run.wall_s - self.startup_s, 1e-9)


def make_clips(folder: Path, count: int) -> list[Path]:
    """Distinct compliant clips: 3.0, 3.1, ... s (a distinct duration makes distinct bytes)."""
    return [
        make_clip(folder / f"clip{i:02d}.mp4", seconds=3.0 + 0.1 * (i % 20), width=1280, height=720, fps=24 + i // 20)
        for i in range(count)
    ]


def dry_rows(clips: list[Path], rows: int) -> list[dict[str, str]]:
    return [
        {"id": f"job{i}", "prompt": f"Edit number {i} of @Video1", "video": str(clips[i % len(clips)])}
        for i in range(rows)
    ]


def dry_run(root: Path, name: str, rows: list[dict[str, str]], api_url: str) -> RunResult:
    """One dry run in its own folder (fresh state, out and report dirs)."""
    folder = root / name
    folder.mkdir()
    manifest = write_manifest(folder / "manifest.jsonl", rows)
    command = klingflow_command(manifest, folder, "--dry-run")
    result = run_measured(command, klingflow_env(folder, api_url), folder / "run.log")
    print(f"  {name}: {len(rows)} row(s), exit {result.exit_code}, {result.wall_s:.1f} s, {result.peak_mb:.0f} MB")
    if result.exit_code != 0:
        print(result.tail())
    return result


def report_statuses(report_dir: Path) -> dict[str, int]:
    try:
        return latest_run(report_dir)["status"].value_counts().to_dict()
    except (OSError, ValueError, KeyError) as exc:
        return {f"no report ({exc.__class__.__name__})": 0}


def measure_dry(root: Path, clips: list[Path], rows: int, api_url: str) -> DryFigures:
    figures = DryFigures(rows=rows)
    dry_run(root, "warm-up", dry_rows(clips, 1), api_url)  # the server's first flow run registers things
    figures.startup = [dry_run(root, f"one-row-{i}", dry_rows(clips, 1), api_url) for i in range(2)]
    figures.run = dry_run(root, "many-rows", dry_rows(clips, rows), api_url)
    figures.statuses = report_statuses(root / "many-rows" / "reports")
    return figures


# --- (b) one trickling input ----------------------------------------------------------------------


@dataclass
class Fetch:
    started_at: float
    ended_at: float | None = None
    bytes_sent: int = 0


class TrickleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body: bytes, trickle_s: float) -> None:
        super().__init__(("127.0.0.1", 0), TrickleHandler)
        self.body, self.trickle_s = body, trickle_s
        self.fetches: list[Fetch] = []
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/trickle.mp4"


class TrickleHandler(BaseHTTPRequestHandler):
    server: TrickleServer

    def do_GET(self) -> None:
        body, fetch = self.server.body, Fetch(started_at=time.time())
        self.server.fetches.append(fetch)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up
            self._send(body, fetch)
        fetch.ended_at = time.time()

    def _send(self, body: bytes, fetch: Fetch) -> None:
        until = fetch.started_at + self.server.trickle_s
        while fetch.bytes_sent < len(body) and time.time() < until and not self.server.stopping.is_set():
            self._write(body[fetch.bytes_sent : fetch.bytes_sent + TRICKLE_BYTES], fetch)
            self.server.stopping.wait(TRICKLE_EVERY_S)
        self._write(body[fetch.bytes_sent :], fetch)  # the cap: the rest at once, so the run can end

    def _write(self, chunk: bytes, fetch: Fetch) -> None:
        self.wfile.write(chunk)
        self.wfile.flush()
        fetch.bytes_sent += len(chunk)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@contextmanager
def trickle_server(clip: Path, trickle_s: float) -> Iterator[TrickleServer]:
    server = TrickleServer(clip.read_bytes(), trickle_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


@dataclass
class TrickleFigures:
    run: RunResult
    others: int
    others_submitted: int
    first_other_submit_s: float  # after flow start
    last_other_submit_s: float
    fetch_started_s: float | None
    fetch_ended_s: float | None
    trickle_status: str


def trickle_rows(url: str, clips: list[Path], rows: int) -> list[dict[str, str]]:
    first = {"id": "trickle", "prompt": "Edit of the trickled @Video1", "video": url}
    others = [
        {"id": f"local{i}", "prompt": f"Edit number {i} of @Video1", "video": str(clips[1 + i % (len(clips) - 1)])}
        for i in range(rows - 1)
    ]
    return [first, *others]


def measure_trickle(root: Path, clips: list[Path], rows: int, trickle_s: float, api_url: str) -> TrickleFigures:
    folder = root / "trickle"
    folder.mkdir()
    with trickle_server(clips[0], trickle_s) as server:
        manifest = write_manifest(folder / "manifest.jsonl", trickle_rows(server.url, clips, rows))
        extra = ["--concurrency", str(TRICKLE_CONCURRENCY), "--concurrency-limit", "bench-trickle"]
        extra += ["--time-scale", "0.2", "--poll-interval", "0.5", "--poll-max-interval", "1"]
        command = klingflow_command(manifest, folder, *extra)
        run = run_measured(command, klingflow_env(folder, api_url), folder / "run.log", timeout_s=trickle_s + 600)
        fetches = list(server.fetches)
    if run.exit_code != 0:
        print(run.tail())
    return trickle_figures(run, latest_run(folder / "reports"), fetches)


def trickle_figures(run: RunResult, report: pd.DataFrame, fetches: list[Fetch]) -> TrickleFigures:
    flow_start = report["run_started_at"].iloc[0].timestamp()
    others = report[report["job_id"] != "trickle"]
    submitted = others["submitted_at"].dropna()
    after_start = [t.timestamp() - flow_start for t in submitted]
    trickle = report[report["job_id"] == "trickle"]
    ends = [f.ended_at for f in fetches if f.ended_at is not None]
    return TrickleFigures(
        run=run,
        others=len(others),
        others_submitted=len(submitted),
        first_other_submit_s=min(after_start, default=float("nan")),
        last_other_submit_s=max(after_start, default=float("nan")),
        fetch_started_s=(fetches[0].started_at - flow_start) if fetches else None,
        fetch_ended_s=(max(ends) - flow_start) if ends else None,
        trickle_status=str(trickle["status"].iloc[0]) if len(trickle) else "no row",
    )


# --- verdict -------------------------------------------------------------------------------------


def dry_checks(dry: DryFigures) -> dict[str, bool]:
    assert dry.run is not None
    print(
        f"\ndry run of {dry.rows} rows: {dry.run.wall_s:.1f} s wall, 1-row start-up "
        f"{[round(r.wall_s, 1) for r in dry.startup]} s (min {dry.startup_s:.1f} s) -> {dry.rows_per_s:.0f} rows/s "
        f"after start-up; peak RSS {dry.run.peak_mb:.0f} MB (VmHWM {dry.run.own_hwm_bytes / MB:.0f} MB); "
        f"statuses {dry.statuses}"
    )
    return {
        f"dry run exit {dry.run.exit_code}, statuses {dry.statuses}": dry.run.exit_code == 0
        and dry.statuses == {"dry_run": dry.rows},
        f"{dry.rows_per_s:.0f} rows/s after start-up (target >= {ROWS_PER_S:.0f})": dry.rows_per_s >= ROWS_PER_S,
        f"dry run peak RSS {dry.run.peak_mb:.0f} MB (target <= {DRY_RSS_MB:.0f})": dry.run.peak_mb <= DRY_RSS_MB,
    }


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def trickle_checks(t: TrickleFigures, trickle_s: float) -> dict[str, bool]:
    print(
        f"\ntrickle run ({t.others + 1} rows, concurrency {TRICKLE_CONCURRENCY}): exit {t.run.exit_code} in "
        f"{t.run.wall_s:.1f} s; after flow start: trickling fetch {_s(t.fetch_started_s)} -> {_s(t.fetch_ended_s)} "
        f"(trickle row {t.trickle_status}); {t.others_submitted}/{t.others} other rows submitted, first "
        f"{_s(t.first_other_submit_s)}, last {_s(t.last_other_submit_s)}"
    )
    margin = trickle_s / 2
    ended = t.fetch_ended_s if t.fetch_ended_s is not None else float("nan")
    return {
        f"other rows submitted {t.others_submitted}/{t.others}": t.others_submitted == t.others,
        f"last other submission {_s(t.last_other_submit_s)} vs trickling fetch end {_s(t.fetch_ended_s)} "
        f"(target: >= {margin:.0f} s before it)": t.last_other_submit_s <= ended - margin,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--trickle-rows", type=int, default=10)
    parser.add_argument("--trickle-s", type=float, default=60.0, help="how long the input trickles before the rest")
    parser.add_argument("--skip-dry", action="store_true")
    parser.add_argument("--skip-trickle", action="store_true")
    args = parser.parse_args(argv)

    def body(root: Path) -> int:
        clips = make_clips(root / "clips", max(args.clips, 2))
        checks: dict[str, bool] = {}
        with prefect_server(root / "prefect-server") as api_url:
            if not args.skip_dry:
                print(f"dry runs ({args.rows} rows over {len(clips)} clips)", flush=True)
                checks |= dry_checks(measure_dry(root, clips, args.rows, api_url))
            if not args.skip_trickle:
                print(f"trickle run ({args.trickle_rows} rows, one trickling for {args.trickle_s:.0f} s)", flush=True)
                figures = measure_trickle(root, clips, args.trickle_rows, args.trickle_s, api_url)
                checks |= trickle_checks(figures, args.trickle_s)
        return print_checks(checks)

    return with_tmp("kf-bench-dry-run-", body)


if __name__ == "__main__":
    sys.exit(main())

"""A real Prometheus on a backfilled TSDB, for the dashboard's Prometheus mode (tests and
``bench/bench_prom_links.py``): samples written as OpenMetrics, turned into TSDB blocks by
``promtool tsdb create-blocks-from openmetrics``, and ``prometheus`` started on them with no
scrape target (deterministic: the series hold exactly the samples written)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["write_openmetrics", "backfill", "serve_tsdb", "free_port", "Series"]

#: (family, labels, timestamps in Unix s, values)
Series = tuple[str, dict[str, str], np.ndarray, np.ndarray]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


def write_openmetrics(path: Path, series: Iterable[Series]) -> int:
    """Write ``series`` (gauges; one family's series must come together) as OpenMetrics;
    returns the number of samples."""
    n = 0
    family = None
    with path.open("w") as f:
        for name, labels, ts, values in series:
            if name != family:
                f.write(f"# TYPE {name} gauge\n")
                family = name
            head = f"{name}{{{_labels(labels)}}} "
            f.write("".join(f"{head}{v!r} {t:.3f}\n"
                            for t, v in zip(ts.tolist(), values.tolist(), strict=True)))
            n += len(ts)
        f.write("# EOF\n")
    return n


def backfill(promtool: str, openmetrics: Path, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", "-q",
                    str(openmetrics), str(data_dir)], check=True, capture_output=True,
                   timeout=900)


@contextlib.contextmanager
def serve_tsdb(prometheus: str, data_dir: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """``prometheus`` on ``data_dir`` (no scrape target, retention long enough for any
    backfilled time) on a free port of 127.0.0.1; yields its base URL."""
    cfg = data_dir.parent / f"{data_dir.name}.prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 10s\n  evaluation_interval: 10s\n")
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}.prometheus.log"
    proc = subprocess.Popen(
        [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={data_dir}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y",
         "--log.level=warn"],
        cwd=data_dir.parent, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"prometheus did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

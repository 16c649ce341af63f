"""A small client of the Prometheus HTTP API (``/api/v1/query``, ``/api/v1/query_range``):
urllib, a timeout on every request, and errors as one line (:class:`PromError`, whose
``kind`` says what happened: ``unreachable``, ``timeout``, ``error`` or ``empty``). No Dash,
no pandas: :mod:`dashboard.promsource` turns the answers into counter frames."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson

__all__ = ["PromClient", "PromError", "label_value"]


class PromError(Exception):
    """Prometheus did not give an answer the dashboard can draw. ``kind``: ``unreachable``
    (no connection), ``timeout`` (no answer in time), ``error`` (an HTTP or API error, or not
    a Prometheus answer), ``empty`` (no series matched)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def label_value(value: str) -> str:
    """``value`` as a PromQL string literal (quotes included)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


class PromClient:
    """``url``: Prometheus' base URL (``http://prometheus:9090``, a path prefix is kept);
    ``timeout_s``: the limit of one request, connection included."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not a Prometheus URL (http://HOST:PORT)")
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"),
                                            "", ""))
        self.timeout_s = float(timeout_s)

    def _call(self, path: str, params: dict[str, str]) -> Any:
        body = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(
            self.url + path, data=body, method="POST",
            # no gzip: Prometheus spends ~0.3 s compressing a 4 MB answer (4,096 series x 61
            # points), 10x what sending it plain over a LAN costs
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:  # noqa: S310 - http(s) only
                raw = r.read()
                encoding = r.headers.get("Content-Encoding", "")
        except urllib.error.HTTPError as e:
            raise PromError("error", f"HTTP {e.code} from {self.url}: {_api_error(e)}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                raise PromError("timeout", f"no answer from {self.url} within "
                                           f"{self.timeout_s:g} s") from None
            raise PromError("unreachable", f"{self.url}: {_one_line(reason)}") from None
        except TimeoutError:
            raise PromError("timeout", f"no answer from {self.url} within "
                                       f"{self.timeout_s:g} s") from None
        except (OSError, ValueError) as e:  # connection reset, bad status line, ...
            raise PromError("unreachable", f"{self.url}: {type(e).__name__}: "
                                           f"{_one_line(e) or 'no detail'}") from None
        try:
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            doc = orjson.loads(raw)  # a 256-node answer is megabytes: 2-3x json's speed
        except (OSError, ValueError):
            raise PromError("error", f"{self.url}{path} did not answer with Prometheus API "
                                     "JSON (is this Prometheus' base URL?)") from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            err = doc.get("error", "no detail") if isinstance(doc, dict) else "no detail"
            raise PromError("error", f"{self.url}: {_one_line(err)}")
        return doc.get("data") or {}

    def query(self, expr: str, at_s: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the ``result`` list (``metric``, ``value``)."""
        params = {"query": expr, "timeout": f"{self.timeout_s:g}s"}
        if at_s is not None:
            params["time"] = f"{at_s:.3f}"
        return list(self._call("/api/v1/query", params).get("result") or [])

    def query_range(self, expr: str, start_s: float, end_s: float,
                    step_s: float) -> list[dict[str, Any]]:
        """A range query: the ``result`` list (``metric``, ``values``) of a matrix."""
        params = {"query": expr, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}",
                  "step": f"{step_s:.3f}", "timeout": f"{self.timeout_s:g}s"}
        return list(self._call("/api/v1/query_range", params).get("result") or [])


def _api_error(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read()
        if e.headers.get("Content-Encoding", "") == "gzip":
            raw = gzip.decompress(raw)
        doc = json.loads(raw)
        return _one_line(f"{doc.get('errorType', 'error')}: {doc.get('error', '')}")
    except Exception:  # not Prometheus' JSON error: the reason phrase says enough
        return _one_line(e.reason)

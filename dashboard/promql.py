"""A small client of the Prometheus HTTP API (``/api/v1/query``, ``/api/v1/query_range``):
urllib, a timeout on every request, and errors as one line (:class:`PromError`, whose
``kind`` says what happened: ``unreachable``, ``timeout``, ``error`` or ``empty``). No Dash,
no pandas: :mod:`dashboard.promsource` turns the answers into counter frames.

A range query's matrix is decoded straight into :class:`Series` structs whose samples are
``(time, value)`` float pairs (msgspec, typed: 0.04 s for a 4 MB answer of 2,048 series x 61
points, where orjson's generic objects took 0.13-0.26 s and their string values another
0.07 s to parse). Prometheus writes values as strings; ``"NaN"`` and numbers are read as
floats by the typed decoder, ``"+Inf"`` / ``"-Inf"`` are not, so an answer holding one is
decoded a second time by orjson (the rare path, same result)."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import msgspec
import orjson

__all__ = ["PromClient", "PromError", "Series", "label_value"]


class Series(msgspec.Struct):
    """One series of a range query's matrix: its labels and its (Unix s, value) samples."""

    metric: dict[str, str] = {}
    values: list[tuple[float, float]] = []


class _Matrix(msgspec.Struct):
    result: list[Series] = []


class _MatrixDoc(msgspec.Struct):
    status: str
    data: _Matrix = msgspec.field(default_factory=_Matrix)


_MATRIX = msgspec.json.Decoder(_MatrixDoc, strict=False)  # lax: "1.5e9" and "NaN" -> float


def _matrix(raw: bytes) -> list[Series] | None:
    """The series of a successful matrix answer; None when ``raw`` is not one."""
    try:
        doc = _MATRIX.decode(raw)
        return doc.data.result if doc.status == "success" else None
    except msgspec.DecodeError:
        pass
    try:  # "+Inf" / "-Inf" values (or not a matrix at all): the generic decode
        generic = orjson.loads(raw)
        if not isinstance(generic, dict) or generic.get("status") != "success":
            return None
        return [Series(dict(s.get("metric") or {}), [(float(t), float(v)) for t, v in
                                                     s.get("values") or []])
                for s in (generic.get("data") or {}).get("result") or []]
    except (ValueError, TypeError, AttributeError):
        return None


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

    def _fetch(self, path: str, params: dict[str, str]) -> bytes:
        """The (decompressed) body of a POST to ``path``; :class:`PromError` on failure."""
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
            return gzip.decompress(raw) if encoding == "gzip" else raw
        except (OSError, ValueError):
            raise self._not_api(path) from None

    def _not_api(self, path: str) -> PromError:
        return PromError("error", f"{self.url}{path} did not answer with Prometheus API JSON "
                                  "(is this Prometheus' base URL?)")

    def _call(self, path: str, params: dict[str, str]) -> Any:
        return self._parse(path, self._fetch(path, params))

    def _parse(self, path: str, raw: bytes) -> Any:
        """The ``data`` of a successful answer; :class:`PromError` for an API error or a
        body that is not Prometheus' JSON."""
        try:
            doc = orjson.loads(raw)
        except ValueError:
            raise self._not_api(path) from None
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
                    step_s: float) -> list[Series]:
        """A range query: the series of its matrix."""
        path = "/api/v1/query_range"
        params = {"query": expr, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}",
                  "step": f"{step_s:.3f}", "timeout": f"{self.timeout_s:g}s"}
        raw = self._fetch(path, params)
        result = _matrix(raw)
        if result is None:  # an API error in a 200, or not Prometheus: say which
            self._parse(path, raw)
            raise self._not_api(path)
        return result


def _api_error(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read()
        if e.headers.get("Content-Encoding", "") == "gzip":
            raw = gzip.decompress(raw)
        doc = json.loads(raw)
        return _one_line(f"{doc.get('errorType', 'error')}: {doc.get('error', '')}")
    except Exception:  # not Prometheus' JSON error: the reason phrase says enough
        return _one_line(e.reason)

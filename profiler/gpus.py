"""SMs per GPU by device name, for traces whose ``deviceProperties`` lack ``numSms``.

Only products whose SM count is documented are listed; a name that matches none (or matches an
ambiguous variant such as an NVL card) gives ``None``: the SM split is then unavailable, with the
reason, unless the user passes ``--sms-per-gpu``. Never a guess: an Ampere trace does not get
Hopper's 132.

Sources:

- A100 (SXM4 and PCIe): 108 SMs — NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020),
  "The A100 GPU ... includes 108 SMs".
- H100 SXM5: 132 SMs; H100 PCIe: 114 SMs — NVIDIA H100 Tensor Core GPU Architecture whitepaper
  (2022), the H100 SXM5 / PCIe product table.
- H800 (SXM): 132 SMs — DeepSeek-V3 technical report (arXiv 2412.19437) §3.2.2, "20 out of
  132 SMs"; the trace in ``shared/external`` says ``numSms`` 132 for "NVIDIA H800".
- H200 (SXM): 132 SMs — the H100 SXM5's GH100 configuration with HBM3e (NVIDIA H200 datasheet;
  repo ``../shared/REFERENCE.md`` hardware table).
- B200: 148 SMs (2 dies x 74 enabled) — Chips and Cheese, "Nvidia's B200: Keeping the CUDA
  Juggernaut Rolling" (2025), measured on the product.
"""

from __future__ import annotations

import re

__all__ = ["SMS_BY_NAME", "sms_for_name"]

#: (pattern over the device name, SMs); first match wins, ``None``: known to be ambiguous
SMS_BY_NAME: tuple[tuple[re.Pattern[str], int | None], ...] = tuple(
    (re.compile(p, re.I), sms) for p, sms in (
        (r"\bNVL\b", None),  # H100 NVL / H200 NVL: other SKUs, not in the sources above
        (r"\bH100\b.*\bPCIe\b", 114),
        (r"\bH800\b.*\bPCIe\b", None),
        (r"\bH100\b", 132),
        (r"\bH800\b", 132),
        (r"\bH200\b", 132),
        (r"\bA100\b", 108),
        (r"\bB200\b", 148),
    ))


def sms_for_name(name: str | None) -> int | None:
    """SMs per GPU of a device called ``name`` (e.g. ``"NVIDIA A100-SXM4-80GB"``), or None."""
    if not name:
        return None
    for pattern, sms in SMS_BY_NAME:
        if pattern.search(name):
            return sms
    return None

"""``dualscope verify RUN``: check every file of a run; exit 1 if anything is damaged."""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from ..report import print_json, print_table

__all__ = ["command"]


@click.command("verify")
@click.argument("run", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--all", "show_all", is_flag=True, help="List every file, not only problems.")
@click.option("--add-checksums", is_flag=True,
              help="Give sealed files written before checksums existed their checksum, once "
                   "they pass Arrow's full validation (nothing is written if anything is "
                   "damaged).")
def command(run: str, as_json: bool, show_all: bool, add_checksums: bool) -> None:
    """Check RUN: the manifest, every segment against its checksums and Arrow's full
    validation, every Parquet part. Lists what is damaged; exit code 1 if anything is."""
    from ..store.verify import add_missing_checksums, verify_run

    findings = verify_run(run)
    if add_checksums and not any(f.status == "damaged" for f in findings):
        added = add_missing_checksums(run, findings)
        if not as_json:
            click.echo(f"{run}: added checksums to {added} file(s)")
        findings = verify_run(run)
    damaged = [f for f in findings if f.status == "damaged"]
    counts = {s: sum(f.status == s for f in findings)
              for s in ("ok", "unchecked", "damaged", "stray")}
    if as_json:
        print_json({"run": run, "counts": counts, "damaged": len(damaged) > 0,
                    "files": [asdict(f) for f in findings]})
    else:
        shown = findings if show_all else [f for f in findings
                                           if f.status in ("damaged", "stray")]
        if shown:
            print_table(f"verify {run}", [asdict(f) for f in shown],
                        ["path", "status", "detail", "rows"])
        click.echo(f"{run}: {counts['ok']} ok, {counts['unchecked']} without checksums, "
                   f"{counts['damaged']} damaged, {counts['stray']} stray")
    if damaged:
        sys.exit(1)

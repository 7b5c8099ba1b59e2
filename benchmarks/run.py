"""safe-migrate benchmarks: `python benchmarks/run.py [--quick] [--json FILE] [--only NAME ...]`.

Prints a machine header and one markdown table of figures, each a ratio or a bound, measured
side by side in this run. Targets are reported as PASS/MISS and never change the exit code;
the exit code is 1 only when a benchmark itself broke (a tool failed, a timeout).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import django, fleet, nontx, overhead, scale, stall
from benchmarks.common import Config, Figure, Server, load_average, machine_info

BENCHMARKS: dict[str, Callable[[Server, Config], list[Figure]]] = {
    "overhead": overhead.run,
    "nontx": nontx.run,
    "stall": stall.run,
    "scale": scale.run,
    "fleet": fleet.run,
    "django": django.run,
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(header: dict[str, str], figures: list[Figure], mode: str, seconds: float) -> str:
    lines = [f"# safe-migrate benchmarks ({mode})", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    lines += [f"- **wall time**: {seconds:.0f} s", ""]
    lines += ["| # | benchmark | figure | value | target | result | limited by / note |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for number, fig in enumerate(figures, 1):
        lines.append("| " + " | ".join(_cell(c) for c in (
            str(number), fig.bench, fig.name, fig.value, fig.target or "—", fig.result,
            fig.limited_by)) + " |")
    passed = sum(1 for f in figures if f.ok is True)
    missed = sum(1 for f in figures if f.ok is False)
    lines += ["", f"{passed} PASS, {missed} MISS (targets are reported, never enforced)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes for CI (~90 s instead of ~3 min)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                        help="run only these benchmarks")
    args = parser.parse_args(argv)
    config = Config(quick=args.quick)
    started = time.monotonic()
    figures: list[Figure] = []
    broken = False
    with Server() as server:
        header = machine_info(server)
        for name in args.only:
            bench_started = time.monotonic()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                figures += BENCHMARKS[name](server, config)
            except Exception as exc:  # noqa: BLE001 - report, keep the other benchmarks
                broken = True
                traceback.print_exc()
                figures.append(Figure(name, "benchmark failed", "ERROR",
                                      limited_by=f"{type(exc).__name__}: {exc}".splitlines()[0]))
            print(f"[bench] {name} done in {time.monotonic() - bench_started:.0f} s",
                  file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    header["load_average_at_end"] = load_average()
    mode = "quick" if args.quick else "full"
    print(render(header, figures, mode, elapsed))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "mode": mode, "machine": header, "wall_seconds": elapsed,
            "figures": [f.to_dict() for f in figures]}, indent=2, default=str) + "\n")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())

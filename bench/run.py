"""`make bench`: the backtest bench, its clairvoyant bounds, the forecaster bench, the operator fleet bench,
then the storage bench.

Each prints its measurements; results are written to bench/results/ (gitignored). The targets are
reported as PASS/FAIL for information: the exit code only says whether the benches ran.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def _load(name: str) -> ModuleType | None:
    path = HERE / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    status = 0
    took: list[tuple[str, int, float]] = []
    for name, bench_args in (("bench_backtest", args), ("bench_bounds", []), ("bench_forecast", []),
                             ("fleet", []), ("bench_storage", [])):
        module = _load(name)
        if module is None:
            print(f"({name}.py not present: skipped)")
            continue
        entry: Callable[[list[str]], int] = module.main
        print(f"\n##### {name} #####", flush=True)
        started = time.perf_counter()
        rc = int(entry(bench_args) or 0)
        seconds = time.perf_counter() - started
        print(f"##### {name}: exit {rc} after {seconds:.0f}s #####", flush=True)
        took.append((name, rc, seconds))
        status = status or rc
    # Each backtest's own time is in bench_backtest's summary above; these are the benches'.
    print("\n##### times #####")
    for name, rc, seconds in took:
        print(f"{name:<16} {seconds:>7.0f}s  exit {rc}")
    return status


if __name__ == "__main__":
    sys.exit(main())

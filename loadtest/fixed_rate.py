"""CPU per payment by process group at one fixed offered rate, against a running stack.

    quickpay up --state-dir S --port P ...  &&  quickpay seed --url http://127.0.0.1:P --state-dir S ...
    python -m loadtest.fixed_rate --state-dir S --rate 2500 --duration 8

Open loop (loadtest.generator), Zipf-skewed debtors from S/population.json, the first second
unrecorded. Prints gateway / shard / postgres CPU per acknowledged payment, measured with
psutil over the run. Used for the fixed-rate comparisons in BENCHMARKS.md (rules on/off,
shard and gateway-worker counts, batch wait), where a max-rate search would be too noisy.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    import psutil

    from loadtest.bench import Population, SutCpu, build_templates
    from loadtest.generator import LoadSpec, run_load
    from quickpay.httpclient import Api

    parser = argparse.ArgumentParser(prog="python -m loadtest.fixed_rate", description=__doc__)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args(argv)
    state = Path(args.state_dir).resolve()
    population = json.loads((state / "population.json").read_text())
    with open(state / "agreements.csv", newline="") as handle:
        rows = [(int(p), a, d) for p, a, d in list(csv.reader(handle))[1:]]
    api = Api(population["base_url"])
    tokens = [api.token(p["client_id"], p["client_secret"]) for p in population["partners"]]
    templates, _ = build_templates(Population(population["partners"], rows, tokens))
    supervisor = next(
        (
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if "up" in (p.info["cmdline"] or [])
            and str(state) in " ".join(p.info["cmdline"] or [])
            and "--state-dir" in (p.info["cmdline"] or [])
        ),
        None,
    )
    if supervisor is None:
        raise SystemExit(f"no running `quickpay up --state-dir {state}` found")
    cpu = SutCpu(supervisor.pid, state)
    port = int(population["base_url"].rsplit(":", 1)[1])
    before = cpu.sample()
    result = run_load(
        LoadSpec(
            "127.0.0.1", port, args.rate, args.duration, templates, connections_max=256, timeout_s=5.0, warmup_s=1.0
        )
    )
    by_group = cpu.delta_by_group(before, cpu.sample())
    acknowledged = result.ok * args.duration / (args.duration - 1.0)  # CPU covers the warm-up second too
    report = {group: round(seconds / acknowledged * 1e6) for group, seconds in sorted(by_group.items())}
    report["total"] = round(sum(by_group.values()) / acknowledged * 1e6)
    print(
        json.dumps(
            {
                "offered_per_s": args.rate,
                "achieved_per_s": round(result.achieved_per_s),
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "errors": result.errors,
                "sut_cpu_us_per_payment": report,
                "generator_cpu_us_per_request": round(result.cpu_us_per_request),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

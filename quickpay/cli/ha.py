"""`quickpay ha status` and `quickpay ha drill`: the HA stack's PostgreSQL clusters (up --ha)."""

from __future__ import annotations

import argparse
import json


def cmd_ha(args: argparse.Namespace) -> int:
    from quickpay.config import StateDir
    from quickpay.ha import HaCluster, format_status, is_ha_state

    state_path = StateDir(args.state_dir).path
    if not is_ha_state(state_path):
        raise SystemExit(f"{state_path} holds no HA stack; start one with `quickpay up --ha --state-dir {state_path}`")
    status = HaCluster.attach(state_path).status()
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0 if all(shard["leader"] for shard in status["shards"]) else 1


def cmd_ha_drill(args: argparse.Namespace) -> int:
    import statistics

    from quickpay.config import StateDir
    from quickpay.ha import is_ha_state
    from quickpay.ha_drill import run_drill

    state_path = StateDir(args.state_dir).path
    if not is_ha_state(state_path):
        raise SystemExit(f"{state_path} holds no HA stack; start one with `quickpay up --ha --demo`")
    if not 1 <= args.runs <= 20:
        raise SystemExit("quickpay ha drill: --runs between 1 and 20")
    reports = [run_drill(state_path, args.fault, args.shard) for _ in range(args.runs)]
    if args.runs > 1:
        for key in (
            "leader_change_s",
            "longest_gap_s",
            "restored_after_fault_s",
            "restored_after_promotion_s",
            "readyz_503_s",
            "readyz_200_again_after_fault_s",
            "readyz_200_again_after_promotion_s",
        ):
            values = [r[key] for r in reports if key in r]
            if values:
                print(
                    f"{key}: median {statistics.median(values):.2f}, max {max(values):.2f} "
                    f"({', '.join(f'{v:.2f}' for v in values)})"
                )
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0 if all(r["ok"] for r in reports) else 1

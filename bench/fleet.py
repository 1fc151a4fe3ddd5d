"""Fleet rollouts measured by the simulator: every scenario at 50, 200 and 1,000 devices.

    .venv/bin/python bench/fleet.py [--sizes 50 200 1000] [--seed 0]

Each run is `slmops fleet simulate` (the real controller, API, artifact server and agent code; simulated
runtimes and links; a virtual clock). Prints one markdown row per run and the checks the rollout promises.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infra.fleet.simulate import FAULTY_CLASS, SCENARIOS, Simulation

COLUMNS = ("devices", "scenario", "state", "updated", "halted_classes", "blast_radius", "canary+budget",
           "rolled_back", "halted_class_still_new", "max_concurrent", "budget", "outside_selector_touched",
           "wrong_variant", "downloads_without_fit", "duplicate_downloads", "egress_MB", "resumed/mismatch",
           "returned_offline_on_current", "converged_p50_s", "converged_p95_s", "controller_req_per_sim_s",
           "controller_req_per_wall_s", "wall_s", "peak_rss_mb")


def checks(r: dict) -> list[str]:
    """The promises a run broke (empty: none)."""
    broken = []
    for key in ("outside_selector_touched", "wrong_variant", "downloads_without_fit", "duplicate_downloads",
                "halted_class_still_new"):
        if r[key]:
            broken.append(f"{key}={r[key]}")
    if r["max_concurrent"] > r["budget"]:
        broken.append("max_concurrent > budget")
    bad = r["scenario"] in ("bad-quality", "oom", "slow")
    if bad and (r["halted_classes"] != [FAULTY_CLASS] or r["blast_radius"] > r["canary"] + r["budget"]):
        broken.append(f"halt {r['halted_classes']} blast {r['blast_radius']}")
    if not bad and r["updated"] != r["selected"]:
        broken.append(f"updated {r['updated']} of {r['selected']}")
    if r["returned_offline_on_current"] != r["returned_offline"]:
        broken.append("a returned device is not on the current version")
    return broken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Also write every run's summary here.")
    args = parser.parse_args()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    runs, failed = [], 0
    for n in args.sizes:
        for scenario in SCENARIOS:
            r = Simulation(n, args.seed, scenario).run()
            r.pop("_log")
            runs.append(r)
            row = {**r, "canary+budget": r["canary"] + r["budget"], "egress_MB": round(r["egress_bytes"] / 1e6, 1),
                   "resumed/mismatch": f"{r['resumed_downloads']}/{r['digest_mismatches']}",
                   "returned_offline_on_current": f"{r['returned_offline_on_current']}/{r['returned_offline']}",
                   "halted_classes": ",".join(r["halted_classes"]) or "-",
                   "controller_req_per_sim_s": r["controller_rps_sim"],
                   "controller_req_per_wall_s": r["controller_rps_wall"]}
            print("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |", flush=True)
            broken = checks(r)
            if broken:
                failed += 1
                print(f"BROKEN {n} {scenario}: {'; '.join(broken)}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    print(f"\n{len(runs)} runs, {failed} broke a promise", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

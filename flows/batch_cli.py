"""``slmops batch``: a batch transform over a registered version."""

from __future__ import annotations

import argparse


def cmd_batch(args: argparse.Namespace) -> int:
    from tasks.batch.config import batch_config

    config = batch_config(args.overrides)  # rejected here, before any work
    from flows.batch import batch_transform

    result = batch_transform(args.model_ref, args.input, args.output, config)
    r = result.report
    if result.already_complete:
        print(f"{r.output_uri} is complete already ({r.records} records by {r.model_name} version "
              f"{r.model_version}): nothing to do")
        return 0
    t, c = r.timings, r.checks
    print(f"{r.model_ref} → {r.model_name} version {r.model_version}: {r.records} records in {len(r.parts)} parts "
          f"under {r.output_uri}")
    print(f"  generated now: {t['records_generated']} records ({t['records_per_s'] or '-'} records/s); parts kept "
          f"from an earlier attempt: {t['parts_resumed']}")
    print(f"  errors: {r.errors} ({r.errors_file}); empty answers: {c.empty}; cut by the length limit: {c.truncated}")
    if r.drift:
        worst = r.drift.worst()
        print(f"  drift: {r.drift.status} (largest PSI {worst.psi:.3g} on {worst.feature})")
    print(f"  manifest: {result.manifest}; MLflow run {r.mlflow_run_id}")
    return 0

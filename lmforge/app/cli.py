"""`lmforge` command line: parses arguments and calls library code; nothing else lives here."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from lmforge.core.errors import LmforgeError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except LmforgeError as err:
        print(f"lmforge: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description="Corpus to released, evaluated language model."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline flow for a config")
    run.add_argument("config", type=Path, help="pipeline YAML, e.g. configs/demo.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    run.add_argument(
        "--store", help="artifact store root (default: config 'store', $LMFORGE_STORE, ./lmforge-store)"
    )
    run.add_argument("--force", metavar="STAGE", help="recompute STAGE and every stage after it")
    run.add_argument("--run-id", help="use this run id instead of a generated one")
    run.set_defaults(handler=cmd_run)

    lineage = commands.add_parser("lineage", help="print an artifact's ancestry down to the raw inputs")
    lineage.add_argument("artifact_id")
    lineage.add_argument("--json", action="store_true", help="print the lineage tree as JSON")
    add_store_option(lineage)
    lineage.set_defaults(handler=cmd_lineage)

    verify = commands.add_parser("verify", help="re-hash an artifact's files; non-zero exit if any changed")
    verify.add_argument("artifact_id")
    add_store_option(verify)
    verify.set_defaults(handler=cmd_verify)

    show = commands.add_parser("show", help="print an artifact's manifest (JSON)")
    show.add_argument("artifact_id")
    add_store_option(show)
    show.set_defaults(handler=cmd_show)

    runs = commands.add_parser(
        "runs",
        help="list the store's runs: status, start, wall time, each stage's artifact",
        description="List runs from <store>/runs/*/run.json. A run whose process died shows as "
        "'interrupted' instead of 'running'.",
    )
    runs.add_argument("--json", action="store_true", help="print the list as JSON")
    add_store_option(runs)
    runs.set_defaults(handler=cmd_runs)

    gc = commands.add_parser(
        "gc",
        help="remove orphaned staging (tmp/), work (work/) and quarantined directories",
        description="Remove store directories left by interrupted runs: staging (tmp/), stage work "
        "directories (work/, e.g. training checkpoints a re-run would resume from) and damaged "
        "artifacts moved to quarantine/. Only entries untouched for --older-than and not held by a "
        "live process are removed.",
    )
    gc.add_argument(
        "--older-than",
        default="24h",
        metavar="DURATION",
        help="minimum age since last modification, e.g. 30m, 2h, 7d (default: 24h)",
    )
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    add_store_option(gc)
    gc.set_defaults(handler=cmd_gc)
    return parser


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", metavar="DIR", help="artifact store root (default: $LMFORGE_STORE, ./lmforge-store)"
    )


def open_store(store: str | None):
    from lmforge.infra.store import ArtifactStore, default_store_root

    return ArtifactStore(store or default_store_root())


def new_run_id(config_name: str) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{config_name}-{stamp}-{uuid.uuid4().hex[:6]}"


def cmd_run(args: argparse.Namespace) -> int:
    from lmforge.app.config import PipelineConfig, check_inputs
    from lmforge.core.configbase import load_config
    from lmforge.infra.store import default_store_root

    config = load_config(PipelineConfig, args.config, args.overrides)
    check_inputs(config)
    from lmforge.flows.steps import forced_stages

    forced_stages(args.force)  # validate before starting anything
    store = args.store or config.store or str(default_store_root())
    run_id = args.run_id or new_run_id(config.name)
    print(f"run id: {run_id}", flush=True)
    configure_runtime_environment()
    from lmforge.flows.pipeline import pipeline_flow

    record = pipeline_flow(
        config=config.model_dump(mode="json"), run_id=run_id, store=store, force=args.force
    )
    run_json = Path(record["store"]) / "runs" / run_id / "run.json"
    print(f"run {run_id} {record['status']} in {record['wall_seconds']:.0f} s")
    print(f"run record: {run_json}")
    print(f"report: {record['report']['markdown']}")
    print(f"report (html): {record['report']['html']}")
    return 0


def configure_runtime_environment() -> None:
    """Route library logs through Prefect and keep telemetry off; set before Prefect is imported."""
    extra = os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "")
    if "lmforge" not in extra.split(","):
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(filter(None, [extra, "lmforge"]))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.getLogger("lmforge").setLevel(logging.INFO)


def cmd_lineage(args: argparse.Namespace) -> int:
    from lmforge.infra.lineage_text import format_lineage

    tree = open_store(args.store).lineage(args.artifact_id)
    if args.json:
        print(json.dumps(tree, indent=2))
    else:
        print("\n".join(format_lineage(tree)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    problems = store.verify(args.artifact_id)
    if problems:
        for problem in problems:
            print(f"{args.artifact_id}: {problem}", file=sys.stderr)
        return 1
    count = len(store.get(args.artifact_id)["files"])
    print(f"{args.artifact_id}: ok ({count} files verified)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(open_store(args.store).get(args.artifact_id), indent=2))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from lmforge.flows.run_record import list_runs

    summaries = list_runs(open_store(args.store))
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    print(f"{'RUN ID':<40} {'CONFIG':<12} {'STATUS':<12} {'STARTED':<26} {'WALL':>8}")
    for run in summaries:
        wall = "-" if run.get("wall_seconds") is None else f"{run['wall_seconds']:.0f} s"
        print(
            f"{run['run_id']:<40} {run.get('config_name') or '-':<12} {run['status']:<12} "
            f"{run.get('started_at') or '-':<26} {wall:>8}"
        )
        for name, stage in run["stages"].items():
            print(f"    {name:<36} {stage['status'] or '-':<12} {stage['artifact_id'] or '-'}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from lmforge.infra.locks import describe_holder
    from lmforge.infra.store_gc import collect_garbage, parse_duration

    older_than = parse_duration(args.older_than)  # before opening (and so creating) the store
    store = open_store(args.store)
    report = collect_garbage(store, older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path, size in report.removed:
        print(f"{verb} {path.relative_to(store.root)} ({size} bytes)")
    for path, holder in report.in_use:
        print(f"kept {path.relative_to(store.root)}: in use ({describe_holder(holder)})")
    freed = "would free" if args.dry_run else "freed"
    count = len(report.removed)
    entries = "entry" if count == 1 else "entries"
    print(f"{freed} {report.num_bytes} bytes ({human_bytes(report.num_bytes)}) in {count} {entries}")
    if report.num_lock_files:
        print(f"removed {report.num_lock_files} idle lock files")
    return 0


def human_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"


if __name__ == "__main__":
    sys.exit(main())

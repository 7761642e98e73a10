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
    lineage.add_argument("--store")
    lineage.set_defaults(handler=cmd_lineage)

    verify = commands.add_parser("verify", help="re-hash an artifact's files; non-zero exit if any changed")
    verify.add_argument("artifact_id")
    verify.add_argument("--store")
    verify.set_defaults(handler=cmd_verify)

    show = commands.add_parser("show", help="print an artifact's manifest (JSON)")
    show.add_argument("artifact_id")
    show.add_argument("--store")
    show.set_defaults(handler=cmd_show)
    return parser


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
    from lmforge.infra.store import format_lineage

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


if __name__ == "__main__":
    sys.exit(main())

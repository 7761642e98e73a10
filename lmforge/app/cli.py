"""`lmforge` command line: parses arguments and calls library code; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.core.errors import ConfigError, LmforgeError

if TYPE_CHECKING:
    from lmforge.infra.prefect_server import PrefectServer


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
        "--store",
        help="artifact store path or URL, e.g. s3://bucket/prefix (default: config 'store', $LMFORGE_STORE, ./lmforge-store)",
    )
    add_stage_options(run)
    run.add_argument("--run-id", help="use this run id instead of a generated one")
    run.add_argument(
        "--verbose", action="store_true", help="show every log line (Ray, Prefect, ...), not just progress"
    )
    run.set_defaults(handler=cmd_run)

    submit = commands.add_parser(
        "submit",
        help="run the pipeline for a config on a Ray cluster, as a Ray Job",
        description="Resolve the config here (as `lmforge run` does), then submit `lmforge run` as a "
        "Ray Job through the cluster's Jobs API. The job carries this checkout's lmforge package "
        "(Ray uploads it), so the cluster needs only the pinned dependencies.",
    )
    submit.add_argument("config", type=Path, help="pipeline YAML, e.g. configs/demo.yaml")
    add_address_option(submit)
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    add_stage_options(submit)
    submit.add_argument(
        "--store",
        metavar="URL_OR_PATH",
        help="artifact store every node can reach (default: config 'store', $LMFORGE_STORE)",
    )
    submit.add_argument(
        "--env",
        dest="env_names",
        action="append",
        default=[],
        metavar="NAME",
        help="also pass this environment variable to the job (e.g. credentials); repeatable",
    )
    submit.add_argument(
        "--wait", action="store_true", help="print the job's log until it ends; exit 1 if it failed"
    )
    submit.set_defaults(handler=cmd_submit)

    jobs = commands.add_parser("jobs", help="list, inspect, follow and stop Ray Jobs on a cluster")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    job_list = job_commands.add_parser("list", help="every job the cluster knows, oldest first")
    add_address_option(job_list)
    job_list.set_defaults(handler=cmd_jobs_list)
    for name, handler, help_text in (
        ("status", cmd_jobs_status, "a job's status and message"),
        ("logs", cmd_jobs_logs, "a job's log so far"),
        ("stop", cmd_jobs_stop, "stop a job (its run records the cancel)"),
    ):
        command = job_commands.add_parser(name, help=help_text)
        command.add_argument("job_id", metavar="JOB_ID", help="submission id, e.g. lmforge-tiny-...")
        add_address_option(command)
        if name == "logs":
            command.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        command.set_defaults(handler=handler)

    deploy = commands.add_parser(
        "deploy",
        help="register a Prefect deployment of the pipeline for a config, optionally on a schedule",
        description="Create or update deployment lmforge-pipeline/NAME on the Prefect server at "
        "$PREFECT_API_URL. Its parameters (editable in the UI's Custom run form) are the config "
        "with --set applied. `lmforge serve NAME` executes its runs.",
    )
    deploy.add_argument("config", type=Path, help="pipeline YAML, e.g. configs/demo.yaml")
    deploy.add_argument("--name", required=True, help="deployment name, e.g. nightly-demo")
    when = deploy.add_mutually_exclusive_group()
    when.add_argument("--cron", metavar="EXPR", help='cron schedule (UTC), e.g. "0 3 * * *"')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS")
    deploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    deploy.add_argument("--description", help="shown in the UI")
    add_store_option(deploy)
    deploy.set_defaults(handler=cmd_deploy)

    serve = commands.add_parser(
        "serve",
        help="execute the scheduled and manual runs of lmforge deployments (until Ctrl-C)",
        description="Poll the Prefect server at $PREFECT_API_URL for runs of the named deployments "
        "(all lmforge-pipeline deployments when none is named) and execute each in a subprocess. "
        "Cancelling a run in the UI stops its process and its Ray work.",
    )
    serve.add_argument("names", nargs="*", metavar="NAME", help="deployment names (default: all)")
    serve.set_defaults(handler=cmd_serve)

    ui = commands.add_parser(
        "ui",
        help="start a local Prefect server and UI on 127.0.0.1 (until Ctrl-C)",
        description="Run `prefect server start` bound to 127.0.0.1 with its SQLite database under "
        "--home, and print the UI's URL and the PREFECT_API_URL for deploy and serve.",
    )
    ui.add_argument(
        "--home",
        default=os.environ.get("LMFORGE_PREFECT_HOME", "lmforge-prefect"),
        help="folder for the server's database and log (default: $LMFORGE_PREFECT_HOME or ./lmforge-prefect)",
    )
    ui.add_argument("--port", type=int, default=4200, help="port (default 4200)")
    ui.set_defaults(handler=cmd_ui)

    keygen = commands.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing releases",
        description="Write KEYFILE (the private key, PEM, readable by you only) and KEYFILE.pub.",
    )
    keygen.add_argument("keyfile", type=Path, metavar="KEYFILE", help="e.g. ~/.lmforge/release-key")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    keygen.set_defaults(handler=cmd_keygen)

    release = commands.add_parser(
        "release",
        help="write a self-contained release bundle of a run's model (HF model, card, lineage, code)",
        description="Bundle the run's pre-trained model and tokenizer (Hugging Face format), a model "
        "card, the run's report, the exact source tree and release.json (every artifact back to the "
        "raw inputs, with hashes, configs, seeds, packages and hardware); --sign adds a detached "
        "Ed25519 signature over release.json.",
    )
    release.add_argument("run_id", metavar="RUN_ID", help="a completed run (see `lmforge runs`)")
    release.add_argument("--out", type=Path, required=True, metavar="DIR", help="new bundle directory")
    release.add_argument("--sign", type=Path, metavar="KEYFILE", help="private key from `lmforge keygen`")
    add_store_option(release)
    release.set_defaults(handler=cmd_release)

    verify_release = commands.add_parser(
        "verify-release",
        help="check a release bundle's signature and every file's hash",
        description="Exit 0 only when the signature verifies (if the bundle is signed or --pubkey is "
        "given) and every file hashes as release.json lists; otherwise name the first mismatch.",
    )
    verify_release.add_argument("bundle", type=Path, metavar="DIR", help="release bundle directory")
    verify_release.add_argument("--pubkey", type=Path, metavar="FILE", help="the signer's public key")
    verify_release.add_argument(
        "--allow-unsigned", action="store_true", help="accept a bundle without a signature (hashes only)"
    )
    verify_release.set_defaults(handler=cmd_verify_release)

    reproduce = commands.add_parser(
        "reproduce",
        help="rebuild a release from its raw inputs and compare every artifact",
        description="Check the raw inputs, code and packages against the release, rebuild every stage "
        "in a fresh store with the recorded configs and seeds, and compare each artifact with the "
        "released one (content ids, file hashes, model weights, metrics). Writes reproduction.md and "
        ".html; exit 0 only when everything matches.",
    )
    reproduce.add_argument("release", type=Path, metavar="DIR|release.json")
    reproduce.add_argument(
        "--store",
        metavar="DIR|URL",
        help="fresh store for the rebuild (default: a new folder in ./lmforge-reproductions)",
    )
    reproduce.add_argument(
        "--stages",
        metavar="STAGE[,STAGE]",
        help="rebuild only these stages and what they need (clean, tokenizer, shard, pretrain, finetune, eval)",
    )
    reproduce.add_argument(
        "--allow-drift",
        action="store_true",
        help="run even when code or package versions differ from the release (recorded in the report)",
    )
    reproduce.add_argument(
        "--pubkey", type=Path, metavar="FILE", help="check the release's signature with this key"
    )
    reproduce.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the raw inputs are here (default: the release's data_dir, else $LMFORGE_DATA_DIR)",
    )
    reproduce.add_argument(
        "--use-bundled-code",
        action="store_true",
        help="run the release's own lmforge (from its code/source.tar.gz) instead of the installed one",
    )
    reproduce.add_argument("--verbose", action="store_true", help="show every log line")
    reproduce.set_defaults(handler=cmd_reproduce)

    lineage = commands.add_parser("lineage", help="print an artifact's ancestry down to the raw inputs")
    lineage.add_argument("artifact_id")
    lineage.add_argument(
        "--format",
        choices=("text", "json", "dot", "mermaid"),
        default="text",
        help="text tree (default), JSON, or a Graphviz (dot) / Mermaid graph of the ancestry",
    )
    lineage.add_argument("--json", action="store_true", help="same as --format json")
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

    harness = commands.add_parser(
        "harness",
        help="score a run's model with lm-evaluation-harness next to our own ICL scoring",
        description="Run EleutherAI's lm-evaluation-harness (lm_eval, on the loaded model: no hub "
        "access) on local tasks holding the run's in-context prompts, score the same prompts with "
        "lmforge, and print both accuracies and their difference in points. Writes harness.json and "
        "the lm_eval task folder (reusable with `lm_eval --include_path`). Needs lmforge[harness].",
    )
    harness.add_argument("run_id", metavar="RUN_ID", help="a run with a pretrain stage (see `lmforge runs`)")
    harness.add_argument("--tasks", default="sst2_icl", metavar="TASK[,TASK]", help="default: sst2_icl")
    harness.add_argument(
        "--shots",
        default="0",
        metavar="K[,K]",
        help="demonstrations per prompt, the run's ordering 0 (default: 0)",
    )
    harness.add_argument(
        "--limit", type=int, metavar="N", help="first N dev examples (default: the run's max_examples)"
    )
    harness.add_argument("--batch-size", type=int, metavar="N", help="default: the run's task config's")
    harness.add_argument(
        "--out", type=Path, metavar="DIR", help="result folder (default: <store>/runs/RUN_ID/harness)"
    )
    add_store_option(harness)
    harness.set_defaults(handler=cmd_harness)
    return parser


def add_stage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", metavar="STAGE", help="recompute STAGE and every stage after it")
    parser.add_argument(
        "--stage",
        metavar="STAGE",
        help="run only STAGE and the stages it needs, reusing stored ones; no report "
        "(clean, tokenizer, shard, pretrain, finetune, eval)",
    )


def add_address_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        metavar="URL",
        help="the cluster's Ray dashboard, e.g. http://HEAD:8265 (default: $LMFORGE_RAY_DASHBOARD)",
    )


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="DIR|URL",
        help="artifact store: a path or URL such as s3://bucket/prefix (default: $LMFORGE_STORE, ./lmforge-store)",
    )


def open_store(store: str | None):
    from lmforge.infra.store import open_store as open_location

    return open_location(store)


def cmd_run(args: argparse.Namespace) -> int:
    from lmforge.app.config import PipelineConfig, apply_hub_fallbacks, resolve_inputs
    from lmforge.core.configbase import load_config
    from lmforge.flows.run_record import new_run_id
    from lmforge.flows.steps import forced_stages, stage_plan
    from lmforge.infra.prefect_server import interrupt_on_termination
    from lmforge.infra.store import open_store as open_location

    configure_runtime_environment()  # before Prefect is imported (the flow's module imports it)
    interrupt_on_termination()  # a SIGTERM or hang-up ends the run like Ctrl-C: recorded, cleaned up
    # The run's own Prefect server is launched first: it needs seconds to answer, in which the
    # config loads and the flow's modules import. Its home moves into the run's folder when it stops
    # (the folder is known once the config is); a config error stops it and removes its home.
    scratch_home = server_scratch_home()
    kept_home: list[Path] = []
    try:
        with run_prefect_server(scratch_home) as server:
            # Everything a user can get wrong is checked before the flow or Ray start.
            config = load_config(PipelineConfig, args.config, args.overrides)
            forced_stages(args.force)
            stage_plan(args.stage)  # from flows.steps: no Prefect import yet
            if config.lab is not None and args.stage:
                raise ConfigError(
                    f"--stage {args.stage}: a lab config runs whole branches; run a branch's config instead"
                )
            for fallback in apply_hub_fallbacks(config, config.resolved_data_dir())[1]:
                print(f"{fallback.key}: no local copy of {fallback.local!r}; reading {fallback.hub}")
            config = resolve_inputs(config)
            store = open_location(args.store or config.store)
            run_id = args.run_id or new_run_id(config.name)
            kept_home.append(store.run_dir(run_id) / "prefect")
            # Where the home belongs, for the sweep of a run killed before its `finally`.
            (scratch_home / SERVER_HOME_DESTINATION).write_text(str(kept_home[0]))
            return run_pipeline(args, config, store, run_id, server)
    finally:
        keep_server_home(scratch_home, kept_home[0] if kept_home else None)


SERVER_HOME_PREFIX = "lmforge-run-server-"
# In a run server's scratch home: the run folder's `prefect` path it moves to.
SERVER_HOME_DESTINATION = "lmforge-destination"


def server_scratch_home() -> Path:
    """A new, unique Prefect home for a run's server, before the run's folder is known (in the
    system's temporary folder: a rejected config leaves nothing behind). The homes that killed runs
    left there are swept first."""
    import tempfile

    sweep_server_homes(Path(tempfile.gettempdir()))
    return Path(tempfile.mkdtemp(prefix=f"{SERVER_HOME_PREFIX}{os.getpid()}-"))


def sweep_server_homes(folder: Path) -> list[Path]:
    """Scratch homes whose run process is gone (killed before its cleanup): each moves to the run
    folder it names, or is removed when it names none (its config never loaded). Returns them."""
    from lmforge.infra.locks import pid_alive

    swept = []
    for scratch in folder.glob(f"{SERVER_HOME_PREFIX}*"):
        pid = scratch.name[len(SERVER_HOME_PREFIX) :].partition("-")[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        destination = scratch / SERVER_HOME_DESTINATION
        try:
            home = Path(destination.read_text()) if destination.is_file() else None
            keep_server_home(scratch, home)
        except OSError as err:
            print(f"lmforge: could not sweep {scratch}: {err}", file=sys.stderr)
            continue
        swept.append(scratch)
    return swept


def keep_server_home(scratch: Path, home: Path | None) -> None:
    """Move a stopped run server's home (database, server.log) to `home`; without one, remove it."""
    import shutil

    if not scratch.exists():
        return
    if home is None:
        shutil.rmtree(scratch, ignore_errors=True)
        return
    (scratch / SERVER_HOME_DESTINATION).unlink(missing_ok=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    if home.exists():  # a --run-id used before: its earlier server home is kept beside
        home.rename(home.with_name(f"{home.name}-{scratch.name}"))
    shutil.move(str(scratch), str(home))


def run_pipeline(args: argparse.Namespace, config, store, run_id: str, server: PrefectServer | None) -> int:
    """`lmforge run` once the config is checked: the flow, on the run's Prefect server."""
    from lmforge.app.console import RunConsole
    from lmforge.flows.lab import paradigm_lab_flow
    from lmforge.flows.pipeline import pipeline_flow

    log_path = store.run_dir(run_id) / "console.log"
    with (
        RunConsole(log_path, verbose=args.verbose) as console,
        prefect_api(console.print, server),
    ):
        console.print(f"run id: {run_id}  (full log: {log_path})")
        if config.lab is not None:
            console.print(f"paradigm lab: branches {', '.join(config.lab.branches)}, one run each")
            record = paradigm_lab_flow(config=config, run_id=run_id, store=store.location, force=args.force)
        else:
            record = pipeline_flow(
                config=config, run_id=run_id, store=store.location, force=args.force, stage=args.stage
            )
        console.print(f"run {run_id} {record['status']} in {record['wall_seconds']:.0f} s")
        console.print(f"run record: {store.run_dir(run_id) / 'run.json'}")
        if record["report"]:
            console.print(f"report: {record['report']['markdown']}")
            console.print(f"report (html): {record['report']['html']}")
        else:
            console.print(f"--stage {args.stage}: skipped {', '.join(record['skipped_stages'])}")
    return 0


@contextmanager
def run_prefect_server(home: Path) -> Iterator[PrefectServer | None]:
    """A Prefect server for this run, launched now (it needs seconds to answer) and stopped at the
    end; None when one is configured (PREFECT_API_URL). Not Prefect's temporary server: it shares
    the terminal's process group, so a Ctrl-C meant for the run would kill it too, and concurrent
    runs would share one SQLite file under $PREFECT_HOME."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    import shutil

    from lmforge.infra.prefect_server import PrefectServer, free_port

    # Launched before Prefect's settings are read (importing them takes a second here): a server
    # named by the user's Prefect profile instead is rare, and then this one is stopped unused.
    with PrefectServer(home, port=free_port()).launched() as server:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            yield server
            return
    shutil.rmtree(home, ignore_errors=True)
    yield None


@contextmanager
def prefect_api(say: Callable[[str], None], server: PrefectServer | None) -> Iterator[None]:
    """Point Prefect at the run's server (once it answers), or at the configured one (None)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if server is None:
        yield
        return
    say("starting a local Prefect server for this run ...")
    server.wait_ready()
    os.environ["PREFECT_API_URL"] = server.api_url  # for subprocesses
    say(f"Prefect UI (while the run lasts): {server.url}")
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            try:
                yield
            finally:
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=5)  # ship the last log lines before the server stops
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def cmd_submit(args: argparse.Namespace) -> int:
    from lmforge.app.submit import JobRequest, submit

    request = JobRequest(
        config_path=args.config,
        overrides=args.overrides,
        store=args.store,
        stage=args.stage,
        force=args.force,
        env_names=args.env_names,
    )
    return submit(args.address, request, wait=args.wait)


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from lmforge.app.submit import list_jobs

    return list_jobs(args.address)


def cmd_jobs_status(args: argparse.Namespace) -> int:
    from lmforge.app.submit import job_status

    return job_status(args.address, args.job_id)


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    from lmforge.app.submit import job_logs

    return job_logs(args.address, args.job_id, follow_logs=args.follow)


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    from lmforge.app.submit import stop_job

    return stop_job(args.address, args.job_id)


def cmd_deploy(args: argparse.Namespace) -> int:
    from lmforge.app.config import PipelineConfig, apply_hub_fallbacks, check_inputs
    from lmforge.core.configbase import load_config

    config = load_config(PipelineConfig, args.config, args.overrides)
    if config.lab is not None:
        raise ConfigError(
            f"{args.config}: a lab config cannot be deployed as the pipeline flow yet; deploy one "
            "branch's config, or run the lab with `lmforge run`"
        )
    # Local inputs must exist or have a hub fallback; hub data sets are pinned by each run, not here,
    # so a scheduled run reads what the hub holds then.
    check_inputs(apply_hub_fallbacks(config, config.resolved_data_dir())[0])
    configure_runtime_environment()
    from lmforge.flows.deployments import deploy

    deployment_id = deploy(
        config,
        args.name,
        cron=args.cron,
        interval=args.interval,
        store=args.store,
        description=args.description,
    )
    schedule = (
        f"cron {args.cron!r}" if args.cron else f"every {args.interval:g} s" if args.interval else "none"
    )
    print(f"deployment lmforge-pipeline/{args.name} ({deployment_id}); schedule: {schedule}")
    print(f"execute its runs with: lmforge serve {args.name}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    configure_runtime_environment()
    from lmforge.flows.deployments import serve

    serve(args.names)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from lmforge.infra.prefect_server import PrefectServer, interrupt_on_termination

    interrupt_on_termination()
    server = PrefectServer(Path(args.home), port=args.port).start()
    print(f"Prefect UI: {server.url}  (database and logs in {server.home}; Ctrl-C stops it)")
    print(f"for lmforge deploy / serve in another shell: export PREFECT_API_URL={server.api_url}")
    return server.wait()


def configure_runtime_environment() -> None:
    """Route library logs through Prefect and keep telemetry off; set before Prefect is imported."""
    configure_prefect_environment()
    from lmforge.core.logs import enable_info_logs

    enable_info_logs()


def configure_prefect_environment() -> None:
    """Prefect settings read at import: our loggers routed to its API, analytics off."""
    extra = os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "")
    if "lmforge" not in extra.split(","):
        os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(filter(None, [extra, "lmforge"]))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # deploy/serve log outside any flow run: keep those lines local, without Prefect's warning.
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def cmd_keygen(args: argparse.Namespace) -> int:
    from lmforge.infra.signing import generate_key_pair, key_fingerprint, load_private_key

    private, public = generate_key_pair(args.keyfile.expanduser(), overwrite=args.force)
    fingerprint = key_fingerprint(load_private_key(private).public_key())
    print(f"private key: {private} (keep it secret)\npublic key:  {public} (give it to verifiers)")
    print(f"fingerprint: {fingerprint}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from lmforge.app.release import build_release

    result = build_release(open_store(args.store), args.run_id, args.out, sign_key=args.sign)
    print(f"release {result.release_id}: {result.path} ({result.num_artifacts} artifacts)")
    print(f"signed by key {result.signed_by[:16]}" if result.signed_by else "unsigned (add --sign KEYFILE)")
    print(f"check it with: lmforge verify-release {result.path}")
    return 0


def cmd_verify_release(args: argparse.Namespace) -> int:
    from lmforge.app.release import verify_release

    notes, _ = verify_release(args.bundle, args.pubkey, require_signature=not args.allow_unsigned)
    if args.pubkey is None and not args.allow_unsigned:
        print(
            "warning: checked against the bundle's own release.pub: this proves the bundle is intact, "
            "not who made it; pass --pubkey with the signer's key",
            file=sys.stderr,
        )
    for note in notes:
        print(note)
    print(f"{args.bundle}: ok")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from lmforge.app.reproduce import prepare, reproduction_store, run_reproduction, run_with_bundled_code

    if args.use_bundled_code:
        return run_with_bundled_code(args.release, args.pubkey, reproduce_arguments(args))
    plan = prepare(
        args.release,
        stages=args.stages,
        allow_drift=args.allow_drift,
        pubkey=args.pubkey,
        data_dir=args.data_dir,
    )
    for line in plan.describe():
        print(line)
    store = reproduction_store(args.store, plan)
    configure_runtime_environment()
    from lmforge.app.console import RunConsole
    from lmforge.infra.prefect_server import interrupt_on_termination

    interrupt_on_termination()
    log_path = store.run_dir(plan.run_id) / "console.log"
    with (
        run_prefect_server(store.run_dir(plan.run_id) / "prefect") as server,
        RunConsole(log_path, verbose=args.verbose) as console,
        prefect_api(console.print, server),
    ):
        console.print(f"reproducing release {plan.release_id} into {store.location} (run {plan.run_id})")
        result = run_reproduction(plan, store)
        for line in result.summary_lines():
            console.print(line)
    return 0 if result.ok else 1


def reproduce_arguments(args: argparse.Namespace) -> list[str]:
    """The reproduce command line of `args`, less --use-bundled-code (paths made absolute)."""
    arguments = [str(Path(args.release).resolve())]
    for flag, value in (("--store", args.store), ("--stages", args.stages)):
        if value:
            arguments += [flag, str(value)]
    for flag, path in (("--pubkey", args.pubkey), ("--data-dir", args.data_dir)):
        if path:
            arguments += [flag, str(Path(path).resolve())]
    arguments += [
        flag for flag, on in (("--allow-drift", args.allow_drift), ("--verbose", args.verbose)) if on
    ]
    return arguments


def cmd_lineage(args: argparse.Namespace) -> int:
    from lmforge.infra.lineage_text import format_dot, format_lineage, format_mermaid

    tree = open_store(args.store).lineage(args.artifact_id)
    form = "json" if args.json else args.format
    if form == "json":
        print(json.dumps(tree, indent=2))
    elif form == "dot":
        print(format_dot(tree), end="")
    elif form == "mermaid":
        print(format_mermaid(tree), end="")
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


def cmd_harness(args: argparse.Namespace) -> int:
    from lmforge.app.harness import HarnessConfig, run_harness

    try:
        shots = [int(k) for k in args.shots.split(",")]
    except ValueError:
        raise ConfigError(f"--shots: expected integers like 0,1, got {args.shots!r}") from None
    config = HarnessConfig(
        run_id=args.run_id,
        tasks=[name.strip() for name in args.tasks.split(",") if name.strip()],
        shots=shots,
        limit=args.limit,
        store=args.store,
        out=args.out,
        batch_size=args.batch_size,
    )
    summary = run_harness(config)
    print(f"{'TASK':<24} {'K':>3} {'N':>6} {'LM_EVAL':>8} {'LMFORGE':>8} {'DIFF (PTS)':>10} {'DISAGREE':>8}")
    for name, row in summary["results"].items():
        print(
            f"{name:<24} {row['k']:>3} {row['num_examples']:>6} {row['lm_eval_accuracy']:>8.4f} "
            f"{row['lmforge_accuracy']:>8.4f} {row['difference_points']:>+10.2f} "
            f"{row['num_prediction_disagreements']:>8}"
        )
    print(f"lm_eval {summary['lm_eval_version']}; results: {summary['path']}")
    return 0


def human_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024:
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"


if __name__ == "__main__":
    sys.exit(main())

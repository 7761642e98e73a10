"""`lmforge reproduce`: rebuild a release from its raw inputs and compare it, artifact by artifact.

Before any work: the bundle verifies (signature if any, every file's hash); each raw input the
rebuild reads is where the data directory says and hashes as recorded (else refuse, naming it);
this installation's lmforge files and package versions equal the release's (else refuse, listing
the differences, unless --allow-drift, which the report then records).

Then the recorded pipeline config (seeds included) runs into a fresh store, and every rebuilt
artifact is compared with the released one: artifact and content ids, each file's sha256
(telemetry, which records how a run went rather than what it made, is left out as it is from the
content id), the model's weights tensor by tensor, and every metric except timings. The report
(reproduction.md and .html) is published to the new store as a `reproduction` artifact.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.app.config import PipelineConfig
from lmforge.app.release import (
    MODEL_DIR,
    describe_file_differences,
    release_file,
    telemetry_path,
    verify_release,
)
from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError, LmforgeError
from lmforge.infra.artifact_files import sha256_file
from lmforge.infra.data_paths import is_hf_uri, is_pinned
from lmforge.infra.lineage import CPU_FLAGS, cpu_info, environment, sha256_json, source_files
from lmforge.infra.store import ArtifactStore, open_store, utc_now

STAGE_ORDER = ("clean", "tokenizer", "shard", "pretrain", "finetune", "eval")
IDENTICAL, WITHIN_TOLERANCE, DIFFERENT, MISSING = "identical", "within tolerance", "different", "not rebuilt"
# An ancestor of a reused artifact from an older run, not a stage of the released run: the rebuild
# does not make it (nothing it rebuilds depends on its content), so it is listed, not judged.
OLDER_ANCESTOR = "not rebuilt (ancestor from an earlier run)"
PASSING = (IDENTICAL, WITHIN_TOLERANCE, OLDER_ANCESTOR)
DEFAULT_ROOT = "lmforge-reproductions"


class ReproductionRefused(LmforgeError):
    """What the release needs is not here as recorded (inputs, code, packages): nothing was run."""

    exit_code = 2


# -- before any work -------------------------------------------------------------------------------


@dataclass
class ReproductionPlan:
    bundle: Path
    release: dict[str, Any]
    config: PipelineConfig
    stage: str | None  # the pipeline's `stage` parameter: None = every stage
    stages: tuple[str, ...]  # the stage families rebuilt (clean ... eval)
    inputs_checked: list[str]
    drift: list[str]
    run_id: str
    verification: list[str] = field(default_factory=list)

    @property
    def release_id(self) -> str:
        return str(self.release.get("release_id"))

    def describe(self) -> list[str]:
        lines = [f"release {self.release_id}: run {self.release['run']['run_id']} ({self.bundle})"]
        lines += [f"  {note}" for note in self.verification]
        lines.append(f"  raw inputs: {len(self.inputs_checked)} checked, all as recorded")
        if self.drift:
            lines.append(
                f"  drift allowed (--allow-drift): {len(self.drift)} difference(s), recorded in the report"
            )
            lines += [f"    {item}" for item in self.drift[:20]]
        else:
            lines.append("  code and packages: identical to the release")
        lines.append(f"  stages: {', '.join(self.stages)}")
        return lines


def parse_stages(value: str | None) -> tuple[str | None, tuple[str, ...]]:
    """(pipeline stage parameter, stage families rebuilt) from `--stages a,b`."""
    if not value:
        return None, STAGE_ORDER
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in STAGE_ORDER]
    if unknown or not names:
        raise ConfigError(f"--stages {value!r}: expected names from {', '.join(STAGE_ORDER)}")
    if {"finetune", "eval"} <= set(names):
        return None, STAGE_ORDER
    last = max(names, key=STAGE_ORDER.index)
    needed = STAGE_ORDER[: STAGE_ORDER.index(last) + 1]
    if last == "eval":
        needed = (*STAGE_ORDER[:4], "eval")
    return last, needed


def stage_family(stage: str) -> str:
    return stage.split("/")[0]


def input_problems(
    release: dict[str, Any], data_dir: Path | None, stages: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """(problems, inputs checked) for the raw files the rebuilt stages read."""
    rebuilt = {entry["id"] for entry in release["artifacts"] if stage_family(entry["stage"]) in stages}
    problems, checked = [], []
    for entry in release["raw_inputs"]:
        if not set(entry["read_by"]) & rebuilt:
            continue
        uri = entry["uri"]
        if entry["kind"] == "hub" or is_hf_uri(uri):
            if is_pinned(uri):
                checked.append(f"{uri} (hub data set pinned to its revision)")
            else:
                problems.append(
                    f"raw input {uri}: a hub data set not pinned to a revision (cannot be re-read as it was)"
                )
            continue
        path = Path(uri).expanduser()
        if not path.is_absolute():
            if data_dir is None:
                problems.append(
                    f"raw input {uri}: relative to a data directory, and none is set (LMFORGE_DATA_DIR)"
                )
                continue
            path = data_dir / path
        if not path.is_file():
            problems.append(f"raw input {uri}: missing ({path})")
        elif path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            problems.append(
                f"raw input {uri}: changed ({path} does not hash as recorded, sha256 {entry['sha256'][:16]}...)"
            )
        else:
            checked.append(f"{uri} sha256 {entry['sha256'][:16]}")
    return problems, checked


def code_drift(release: dict[str, Any]) -> list[str]:
    """Files of this installation's lmforge package that differ from the release's, by path."""
    return [f"code: {item}" for item in describe_file_differences(release["code"]["files"], source_files())]


def package_drift(release: dict[str, Any]) -> list[str]:
    """Python and package versions here that differ from the release's environment."""
    recorded = release.get("environment") or {}
    here = environment()
    drift = []
    if recorded.get("python") and recorded["python"] != here["python"]:
        drift.append(f"python: {recorded['python']} in the release, {here['python']} here")
    wanted, have = recorded.get("packages") or {}, here["packages"]
    for name in sorted(set(wanted) | set(have)):
        if wanted.get(name) != have.get(name):
            drift.append(
                f"package {name}: {wanted.get(name) or 'absent'} in the release, {have.get(name) or 'absent'} here"
            )
    return drift


def hardware_drift(release: dict[str, Any]) -> list[str]:
    """CPU features that change numerics (precision `auto` picks bf16 only with native bf16) when
    they differ between the machine that trained the released model and this one."""
    recorded = (release.get("hardware") or {}).get("cpu_flags")
    if recorded is None:
        return []
    here = cpu_info().get("cpu_flags") or []
    if sorted(recorded) == sorted(here):
        return []
    return [
        f"hardware: the release was trained on a CPU with {', '.join(recorded) or 'none'} of "
        f"{', '.join(CPU_FLAGS)}; this one has {', '.join(here) or 'none'} (precision and kernels may differ)"
    ]


def prepare(
    bundle: Path,
    stages: str | None = None,
    allow_drift: bool = False,
    pubkey: Path | None = None,
    data_dir: Path | None = None,
) -> ReproductionPlan:
    """Everything checked before any work; ReproductionRefused listing what does not match."""
    from lmforge.flows.run_record import new_run_id

    verification, release = verify_release(bundle, pubkey)
    bundle_dir = release_file(bundle).parent
    recorded = dict(release["run"]["config"])
    if data_dir is not None:
        recorded["data_dir"] = str(Path(data_dir).expanduser().resolve())
    config = validate_config(PipelineConfig, recorded, source=f"{bundle_dir}/release.json run.config")
    stage, families = parse_stages(stages)
    problems, checked = input_problems(release, config.resolved_data_dir(), families)
    if problems:
        raise ReproductionRefused(
            "reproduce: the raw inputs differ from the release; nothing was run:\n  " + "\n  ".join(problems)
        )
    drift = code_drift(release) + package_drift(release) + hardware_drift(release)
    if drift and not allow_drift:
        shown = drift[:30] + ([f"... and {len(drift) - 30} more"] if len(drift) > 30 else [])
        raise ReproductionRefused(
            "reproduce: this installation differs from the release's; nothing was run:\n  "
            + "\n  ".join(shown)
            + "\nTo run the release's own code: mkdir SRC && tar xzf "
            + f"{bundle_dir / 'code' / 'source.tar.gz'} -C SRC && PYTHONPATH=SRC python -m "
            + f"lmforge.app.cli reproduce {bundle_dir} (with the package versions release.json lists); "
            + "or add --allow-drift to rebuild with this code and see what changes."
        )
    run_id = new_run_id(f"{config.name}-reproduction")
    return ReproductionPlan(
        bundle_dir, release, config, stage, families, checked, drift, run_id, verification
    )


def extract_bundled_code(bundle: Path, pubkey: Path | None, dest: Path) -> list[str]:
    """Verify the bundle, then extract its source archive into `dest` and check that the package in it
    hashes as release.json's code files (so `PYTHONPATH=dest` runs the code the release was made
    with). Returns the verification notes."""
    import tarfile

    notes, release = verify_release(bundle, pubkey)
    archive = release_file(bundle).parent / release["code"]["archive"]
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    package = dest / "lmforge"
    found = {
        path.relative_to(package).as_posix(): sha256_file(path)
        for path in package.rglob("*")
        if path.is_file()
    }
    differences = describe_file_differences(release["code"]["files"], found)
    if differences:
        raise ReproductionRefused(
            f"{archive}: the package in it differs from release.json's code files: {'; '.join(differences[:10])}"
        )
    return notes


def run_with_bundled_code(bundle: Path, pubkey: Path | None, arguments: list[str]) -> int:
    """`python -m lmforge.app.cli reproduce ARGUMENTS` with the release's own code first on the path;
    its exit code."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lmforge-release-code-") as folder:
        for note in extract_bundled_code(bundle, pubkey, Path(folder)):
            print(f"bundled code: {note}")
        print(f"bundled code: running reproduce with the release's lmforge from {folder}")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "lmforge.app.cli", "reproduce", *arguments]
        return subprocess.run(command, env=env, check=False).returncode


def reproduction_store(location: str | None, plan: ReproductionPlan) -> ArtifactStore:
    """A fresh store: the given one must hold no artifact (a rebuild that reuses proves nothing)."""
    if location is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        location = str(Path(DEFAULT_ROOT) / f"{plan.release_id}-{stamp}" / "store")
    store = open_store(location)
    if store.manifests():
        raise ConfigError(f"--store {location}: holds artifacts already; reproduce needs a fresh store")
    return store


# -- comparing -------------------------------------------------------------------------------------


def is_telemetry_metric(key: str) -> bool:
    """Metrics that describe how fast or where a run went, not what it computed."""
    return any(
        part.endswith(("seconds", "per_second"))
        or part.startswith(("mfu", "peak_", "nominal_peak"))
        or part in ("worker_nodes", "restarts")
        for part in key.split(".")
    )


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaves; list items get their index."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{index}."))
        return out
    return {prefix.rstrip("."): value}


def metric_differences(released: dict[str, Any], rebuilt: dict[str, Any]) -> tuple[int, list[str], float]:
    """(metrics compared, names that differ, largest relative difference among numbers)."""
    old = {k: v for k, v in flatten(released).items() if not is_telemetry_metric(k)}
    new = {k: v for k, v in flatten(rebuilt).items() if not is_telemetry_metric(k)}
    differing, worst = [], 0.0
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            continue
        differing.append(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
            worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-12))
        else:
            worst = math.inf
    return len(old), differing, worst


def weight_difference(released_dir: Path, rebuilt_dir: Path) -> tuple[float, int, int]:
    """(max abs difference over all tensors, tensors compared, tensors that differ) of two HF folders."""
    from safetensors.numpy import load_file

    def tensors(folder: Path) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for path in sorted(folder.glob("*.safetensors")):
            found.update(load_file(str(path)))
        return found

    old, new = tensors(released_dir), tensors(rebuilt_dir)
    if set(old) != set(new):
        return math.inf, len(old), len(set(old) ^ set(new))
    worst, differing = 0.0, 0
    for name in sorted(old):
        a, b = old[name], new[name]
        if a.shape != b.shape:
            return math.inf, len(old), differing + 1
        diff = float(abs(a.astype("float64") - b.astype("float64")).max()) if a.size else 0.0
        worst = max(worst, diff)
        differing += diff > 0
    return worst, len(old), differing


@dataclass
class Comparison:
    stage: str
    released_id: str
    rebuilt_id: str | None
    status: str
    first_difference: str | None = None
    files_compared: int = 0
    metrics_compared: int = 0
    metric_differences: list[str] = field(default_factory=list)
    max_metric_rel_diff: float = 0.0
    max_weight_abs_diff: float | None = None
    tensors: str | None = None

    def row(self) -> list[str]:
        weights = (
            "n/a" if self.max_weight_abs_diff is None else f"{self.max_weight_abs_diff:.3g} ({self.tensors})"
        )
        metrics = f"{self.metrics_compared} compared"
        if self.metric_differences:
            metrics += f"; {len(self.metric_differences)} differ (first: {self.metric_differences[0]}, max rel {self.max_metric_rel_diff:.3g})"
        return [
            self.stage,
            self.released_id,
            self.rebuilt_id or "-",
            self.status,
            self.first_difference or "-",
            str(self.files_compared),
            weights,
            metrics,
        ]


def first_file_difference(
    released: list[dict[str, Any]], rebuilt: list[dict[str, Any]]
) -> tuple[str | None, int]:
    """(first path, in sorted order, whose sha256 differs or that only one side has; files compared)."""
    old = {r["path"]: r["sha256"] for r in released if not telemetry_path(r["path"])}
    new = {r["path"]: r["sha256"] for r in rebuilt if not telemetry_path(r["path"])}
    for path in sorted(set(old) | set(new)):
        if path not in new:
            return f"{path} (not rebuilt)", len(old)
        if path not in old:
            return f"{path} (only in the rebuild)", len(old)
        if old[path] != new[path]:
            return path, len(old)
    return None, len(old)


def compare_artifact(
    entry: dict[str, Any],
    rebuilt: dict[str, Any] | None,
    store: ArtifactStore,
    plan: ReproductionPlan,
) -> Comparison:
    if rebuilt is None:
        return Comparison(entry["stage"], entry["id"], None, MISSING, "the rebuild has no such stage")
    first, compared = first_file_difference(entry["files"], rebuilt["files"])
    count, differing, worst = metric_differences(entry["metrics"], rebuilt["metrics"])
    result = Comparison(
        entry["stage"],
        entry["id"],
        rebuilt["id"],
        DIFFERENT,
        first,
        compared,
        count,
        differing,
        worst,
    )
    if entry["id"] == plan.release["model"]["artifact_id"]:
        worst_weight, num_tensors, num_differing = weight_difference(
            plan.bundle / MODEL_DIR, store.local_files(rebuilt["id"], "hf/") / "hf"
        )
        result.max_weight_abs_diff = worst_weight
        result.tensors = f"{num_differing} of {num_tensors} tensors differ"
    if entry["content_id"] == rebuilt["content_id"] and not differing:
        if entry["id"] == rebuilt["id"]:
            result.status = IDENTICAL
        else:
            # Same bytes from another recipe: code, library versions or config differ (--allow-drift).
            result.first_difference = "recipe key (same content; code, libraries or config differ)"
    elif within_tolerance(entry, result, plan):
        result.status = WITHIN_TOLERANCE
    return result


def within_tolerance(entry: dict[str, Any], result: Comparison, plan: ReproductionPlan) -> bool:
    """Only for an artifact the release declares nondeterministic (made on a GPU), rebuilt on a GPU too."""
    declared = (plan.release.get("reproducibility") or {}).get("artifacts", {}).get(entry["id"]) or {}
    tolerances = declared.get("tolerances")
    if declared.get("deterministic", True) or not tolerances or not environment().get("cuda_available"):
        return False
    weights_ok = (
        result.max_weight_abs_diff is None or result.max_weight_abs_diff <= tolerances["weights_max_abs_diff"]
    )
    return weights_ok and result.max_metric_rel_diff <= tolerances["metrics_rel_diff"]


@dataclass
class ReproductionResult:
    plan: ReproductionPlan
    comparisons: list[Comparison]
    seconds: float
    report_paths: dict[str, Path]
    report_artifact: str
    record: dict[str, Any]  # the rebuild's run.json

    @property
    def ok(self) -> bool:
        return any(item.status in (IDENTICAL, WITHIN_TOLERANCE) for item in self.comparisons) and all(
            item.status in PASSING for item in self.comparisons
        )

    def summary_lines(self) -> list[str]:
        counts: dict[str, int] = {}
        for item in self.comparisons:
            counts[item.status] = counts.get(item.status, 0) + 1
        tally = ", ".join(f"{count} {status}" for status, count in counts.items())
        verdict = "REPRODUCED" if self.ok else "NOT REPRODUCED"
        lines = [f"{verdict}: {len(self.comparisons)} artifacts compared ({tally}) in {self.seconds:.0f} s"]
        lines += [
            f"  {item.stage}: {item.status}"
            + (f" (first difference: {item.first_difference})" if item.first_difference else "")
            for item in self.comparisons
            if item.status not in (IDENTICAL, OLDER_ANCESTOR)
        ]
        lines.append(f"report: {self.report_paths['markdown']}")
        lines.append(f"report (html): {self.report_paths['html']}")
        return lines


def compare_run(plan: ReproductionPlan, store: ArtifactStore, record: dict[str, Any]) -> list[Comparison]:
    """One comparison per released artifact of the stages rebuilt, in release order.

    The released run's own stages pair with the rebuild's stage of the same name. An ancestor that
    is no stage of the released run (it reused an artifact whose parent came from an older run, as a
    random-init fine-tune does) pairs with the rebuild's artifact of the same recipe, if any; when
    the rebuild never made it, its row says so and does not count.
    """
    rebuilt_ids = {name: stage["artifact_id"] for name, stage in (record.get("stages") or {}).items()}
    released_stages = {artifact_id: name for name, artifact_id in plan.release["stages"].items()}
    comparisons = []
    for entry in plan.release["artifacts"]:
        if stage_family(entry["stage"]) not in plan.stages:
            continue
        if entry["id"] in released_stages:
            rebuilt_id = rebuilt_ids.get(released_stages[entry["id"]])
            rebuilt = store.get(rebuilt_id) if rebuilt_id else None
        else:
            rebuilt = store.find_by_recipe(entry["recipe_key"])
            if rebuilt is None:
                comparisons.append(
                    Comparison(entry["stage"], entry["id"], None, OLDER_ANCESTOR, "made by an earlier run")
                )
                continue
        comparisons.append(compare_artifact(entry, rebuilt, store, plan))
    return comparisons


def run_reproduction(plan: ReproductionPlan, store: ArtifactStore) -> ReproductionResult:
    """Run the recorded config into `store`, compare, and publish the report there."""
    from lmforge.flows.pipeline import pipeline_flow

    start = time.perf_counter()
    record = pipeline_flow(config=plan.config, run_id=plan.run_id, store=store.location, stage=plan.stage)
    seconds = time.perf_counter() - start
    comparisons = compare_run(plan, store, record)
    report_id, paths = publish_report(plan, store, comparisons, seconds, list(record["stages"]))
    return ReproductionResult(plan, comparisons, seconds, paths, report_id, record)


# -- the report ------------------------------------------------------------------------------------

HEADERS = [
    "stage",
    "released",
    "rebuilt",
    "result",
    "first differing file",
    "files",
    "weights max abs diff",
    "metrics",
]


def report_markdown(plan: ReproductionPlan, comparisons: list[Comparison], seconds: float) -> str:
    ok = any(item.status in (IDENTICAL, WITHIN_TOLERANCE) for item in comparisons) and all(
        item.status in PASSING for item in comparisons
    )
    lines = [
        f"# Reproduction of release {plan.release_id}",
        "",
        f"- released run: `{plan.release['run']['run_id']}` (config `{plan.config.name}`)",
        f"- rebuild run: `{plan.run_id}`, {utc_now()}, {seconds:.0f} s",
        f"- stages rebuilt: {', '.join(plan.stages)}",
        f"- verdict: **{'reproduced' if ok else 'not reproduced'}**",
        f"- raw inputs checked before the rebuild: {len(plan.inputs_checked)}",
    ]
    lines += [f"  - {item}" for item in plan.inputs_checked]
    if plan.drift:
        lines.append(f"- drift allowed with --allow-drift ({len(plan.drift)}):")
        lines += [f"  - {item}" for item in plan.drift]
    else:
        lines.append("- code and package versions: identical to the release")
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in item.row()) + " |" for item in comparisons
    ]
    lines += [
        "",
        "Compared: artifact and content ids, every file's sha256 except telemetry/ (timings, speed, "
        "TensorBoard events, left out of content ids too), the model's weights tensor by tensor, and "
        "every metric except timings and speed.",
    ]
    return "\n".join(lines) + "\n"


def report_html(plan: ReproductionPlan, comparisons: list[Comparison], markdown: str) -> str:
    rows = "".join(
        "<tr class='{}'>{}</tr>".format(
            item.status.replace(" ", "-"), "".join(f"<td>{html.escape(cell)}</td>" for cell in item.row())
        )
        for item in comparisons
    )
    head = "".join(f"<th>{html.escape(name)}</th>" for name in HEADERS)
    intro = "".join(
        f"<li>{html.escape(line[2:])}</li>" for line in markdown.splitlines() if line.startswith("- ")
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;font-size:13px}tr.identical td{background:#eaf7ea}tr.different td,tr.not-rebuilt td"
        "{background:#fbeaea}tr.within-tolerance td{background:#fff8e0}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Reproduction {html.escape(plan.release_id)}</title>"
        f"<style>{style}</style></head><body><h1>Reproduction of release {html.escape(plan.release_id)}</h1>"
        f"<ul>{intro}</ul><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></body></html>\n"
    )


def publish_report(
    plan: ReproductionPlan,
    store: ArtifactStore,
    comparisons: list[Comparison],
    seconds: float,
    stages: list[str],
) -> tuple[str, dict[str, Path]]:
    """The report as a `reproduction` artifact of the new store (its parents: the rebuilt artifacts)."""
    markdown = report_markdown(plan, comparisons, seconds)
    parents = sorted({item.rebuilt_id for item in comparisons if item.rebuilt_id})
    key = sha256_json({"reproduction": plan.release_id, "run": plan.run_id, "rebuilt": parents})
    with store.staging(plan.run_id) as out:
        (out / "reproduction.md").write_text(markdown)
        (out / "reproduction.html").write_text(report_html(plan, comparisons, markdown))
        manifest = store.publish(
            out,
            kind="reproduction",
            stage="reproduce",
            parents=parents,
            config={"release_id": plan.release_id, "stages": list(plan.stages), "drift": plan.drift},
            recipe_key=key,
            metrics={
                "statuses": {item.stage: item.status for item in comparisons},
                "seconds": round(seconds, 1),
                "rebuilt_stages": stages,
            },
            run_id=plan.run_id,
        )
    folder = store.local_files(manifest["id"])
    return manifest["id"], {"markdown": folder / "reproduction.md", "html": folder / "reproduction.html"}

"""`lmforge harness`: EleutherAI's lm-evaluation-harness scores a run's pre-trained model on local
tasks holding our in-context prompts, beside our own scoring of the same prompts.

Both sides read the same texts. Each harness document carries the full context that
`tasks.icl.build_prompt` returns, with the demonstrations the run's ordering 0 drew (the run's seed),
and the label continuations; the harness's own few-shot sampler stays off. Our scorer conditions
every context on the boundary token (EOS); the harness's HF wrapper conditions only on its
tokenization of the text, so each context starts with that token's text, which the tokenizer maps
to the same id. What still differs is the code, which is the point of the check: the harness
tokenizes context + continuation together and splits them, batches without our shared-prefix cache,
and on overflow keeps max_length + 1 tokens where we keep max_length.

The harness runs on the loaded model (its `HFLM` wrapper over our model and tokenizer objects), and
its data set is a local JSON lines file: nothing is fetched from a hub.
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmforge.core.errors import ArtifactError, ConfigError, LmforgeError
from lmforge.core.registry import Registry
from lmforge.infra.data_paths import default_data_dir
from lmforge.infra.store import ArtifactStore, open_store, write_json_atomic
from lmforge.tasks.config import Sst2IclConfig
from lmforge.tasks.data import load_sst2
from lmforge.tasks.icl import argmax_labels, build_prompt, load_icl_model, sample_demonstrations, score_labels
from lmforge.tasks.modeling import boundary_token_id, max_positions

LM_EVAL_REQUIREMENT = "lm_eval[hf]==0.4.13"
INSTALL_HINT = f"pip install 'lmforge[harness]' (or: pip install '{LM_EVAL_REQUIREMENT}')"
RESULT_FILE = "harness.json"
TASKS_FOLDER = "lm_eval_tasks"


class HarnessUnavailable(LmforgeError):
    """lm-evaluation-harness is not installed here."""

    exit_code = 2


@dataclass(frozen=True)
class HarnessConfig:
    run_id: str
    tasks: list[str] = field(default_factory=lambda: ["sst2_icl"])
    shots: list[int] = field(default_factory=lambda: [0])
    limit: int | None = None  # None: the run's own max_examples
    store: str | None = None
    out: Path | None = None  # None: <store>/runs/<run_id>/harness
    batch_size: int | None = None  # None: the run's task config's

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError(f"harness: name at least one task ({', '.join(HARNESS_TASKS.names())})")
        if not self.shots or any(k < 0 for k in self.shots) or len(set(self.shots)) != len(self.shots):
            raise ConfigError(f"harness: shots must be distinct non-negative integers, got {self.shots}")
        for name, value in (("limit", self.limit), ("batch_size", self.batch_size)):
            if value is not None and value < 1:
                raise ConfigError(f"harness: {name} must be at least 1, got {value}")


@dataclass
class Prompts:
    """One (task, k): the harness documents and what our scorer needs for the same prompts."""

    name: str
    k: int
    demonstration_indices: list[int]
    demonstrations: list[Any]
    queries: list[Any]
    docs: list[dict[str, Any]]


@dataclass(frozen=True)
class HarnessTask:
    yaml_file: str
    config_type: type[Sst2IclConfig]
    load: Callable[[Sst2IclConfig, Path | None], tuple[list[Any], list[Any]]]  # (train, dev)


def load_sst2_splits(config: Sst2IclConfig, data_dir: Path | None) -> tuple[list[Any], list[Any]]:
    key = f"evaluation.tasks[{config.id}]"
    train = load_sst2(config.train_path, data_dir, f"{key}.train_path", "train")
    return train, load_sst2(config.dev_path, data_dir, f"{key}.dev_path", "validation")


HARNESS_TASKS: Registry[HarnessTask] = Registry("harness task")
HARNESS_TASKS.register("sst2_icl")(HarnessTask("sst2_icl.yaml", Sst2IclConfig, load_sst2_splits))


def require_lm_eval() -> str:
    """lm_eval's version, or HarnessUnavailable saying how to install it."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401  # needs the [hf] extra (accelerate)
    except ImportError as err:
        raise HarnessUnavailable(
            f"harness: lm-evaluation-harness is not importable ({err}); install it with {INSTALL_HINT}"
        ) from None
    return str(getattr(lm_eval, "__version__", "unknown"))


def run_model_dir(store: ArtifactStore, run_id: str) -> tuple[dict[str, Any], Path]:
    """(run.json, the run's pre-trained model in Hugging Face format)."""
    records = {name: raw for name, raw, _ in store.run_records()}
    if run_id not in records:
        known = ", ".join(sorted(records)[-5:]) or "none"
        raise ConfigError(f"harness: no run {run_id!r} in store {store.location} (latest runs: {known})")
    try:
        record = json.loads(records[run_id] or b"")
        model_id = record["stages"]["pretrain"]["artifact_id"]
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"harness: run {run_id} has no readable pretrain stage in its run.json") from None
    return record, store.local_files(model_id, "hf/") / "hf"


def run_task_config(record: dict[str, Any], name: str, config_type: type[Sst2IclConfig]) -> Sst2IclConfig:
    """The run's own config of task `name` (template, label words, data paths), else the defaults."""
    for task in (record.get("config") or {}).get("evaluation", {}).get("tasks", []):
        if (task.get("type") or task.get("name")) == name:
            try:
                return config_type.model_validate(task)
            except ValueError as err:
                raise ConfigError(f"harness: the run's {name} config no longer validates: {err}") from None
    return config_type()


def build_prompts(
    name: str, config: Any, train: list[Any], dev: list[Any], k: int, seed: int, boundary_text: str
) -> Prompts:
    """The harness documents for k demonstrations: those of the run's ordering 0."""
    indices = sample_demonstrations(train, k, seed, 0)
    demonstrations = [train[i] for i in indices]
    labels = sorted(config.label_words)
    docs = []
    for number, row in enumerate(dev):
        context, continuations = build_prompt(config, demonstrations, row.text)
        docs.append(
            {
                "id": number,
                "context": boundary_text + context,
                "choices": [continuations[label] for label in labels],
                "label": labels.index(row.label),
            }
        )
    return Prompts(f"lmforge_{name}_k{k}", k, indices, demonstrations, [row.text for row in dev], docs)


def task_yaml(template: str, task_name: str, data_file: Path, cache_dir: Path) -> dict[str, Any]:
    """The shipped task file with its name and data file set (a cache beside it, not ~/.cache)."""
    task = yaml.safe_load(template)
    task["task"] = task_name
    task["dataset_kwargs"] = {"data_files": {task["test_split"]: str(data_file)}, "cache_dir": str(cache_dir)}
    return task


def write_task(folder: Path, yaml_file: str, prompts: Prompts) -> None:
    """<folder>/<task>.jsonl and <task>.yaml: a folder for `lm_eval --include_path`."""
    template = importlib.resources.files("lmforge.tasks").joinpath("harness", yaml_file).read_text()
    data_file = folder / f"{prompts.name}.jsonl"
    data_file.write_text("".join(json.dumps(doc) + "\n" for doc in prompts.docs))
    task = task_yaml(template, prompts.name, data_file, folder / "datasets_cache")
    (folder / f"{prompts.name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))


def harness_results(lm: Any, folder: Path, names: list[str]) -> dict[str, tuple[float, list[list[float]]]]:
    """Per task: lm_eval's accuracy and, per document, its log-likelihood of each choice."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    output = simple_evaluate(model=lm, tasks=names, task_manager=manager, bootstrap_iters=0, log_samples=True)
    if output is None:
        raise LmforgeError("harness: lm_eval returned no results")
    found = {}
    for name in names:
        samples = sorted(output["samples"][name], key=lambda sample: sample["doc_id"])
        per_doc = [[float(response[0]) for response in sample["filtered_resps"]] for sample in samples]
        found[name] = (float(output["results"][name]["acc,none"]), per_doc)
    return found


def compare(
    prompts: Prompts, ours: list[list[float]], theirs: tuple[float, list[list[float]]], num_truncated: int
) -> dict[str, Any]:
    """Both accuracies on the same prompts, their difference in points, and where they differ."""
    gold = [doc["label"] for doc in prompts.docs]
    our_predictions, their_predictions = argmax_labels(ours), argmax_labels(theirs[1])
    our_accuracy = sum(p == g for p, g in zip(our_predictions, gold, strict=True)) / len(gold)
    gaps = [
        abs(a - b)
        for row, other in zip(ours, theirs[1], strict=True)
        for a, b in zip(row, other, strict=True)
    ]
    return {
        "k": prompts.k,
        "num_examples": len(gold),
        "demonstration_indices": prompts.demonstration_indices,
        "lm_eval_accuracy": theirs[0],
        "lmforge_accuracy": our_accuracy,
        "difference_points": 100 * (theirs[0] - our_accuracy),
        "num_prediction_disagreements": sum(
            a != b for a, b in zip(our_predictions, their_predictions, strict=True)
        ),
        "max_abs_log_likelihood_difference": max(gaps),
        "lmforge_prediction_counts": [
            our_predictions.count(i) for i in range(len(prompts.docs[0]["choices"]))
        ],
        "num_truncated": num_truncated,  # prompts over max_length: there the two keep different windows
    }


def boundary_text(tokenizer: Any) -> str:
    """The text of our scorer's boundary token, which the tokenizer must read back as that token."""
    boundary = boundary_token_id(tokenizer)
    if boundary is None:
        return ""
    text = str(tokenizer.convert_ids_to_tokens(boundary))
    if tokenizer(text + "Review", add_special_tokens=False)["input_ids"][:1] != [boundary]:
        raise ArtifactError(f"harness: the tokenizer does not read {text!r} back as its boundary token")
    return text


def task_results(
    name: str, config: HarnessConfig, record: dict[str, Any], model: Any, tokenizer: Any, folder: Path
) -> dict[str, Any]:
    """lm_eval's and our accuracy for each k of one task, on the same prompts."""
    from lm_eval.models.huggingface import HFLM

    task = HARNESS_TASKS.get(name)
    task_config = run_task_config(record, name, task.config_type)
    if config.batch_size is not None:
        task_config = task_config.model_copy(update={"batch_size": config.batch_size})
    run = record.get("config") or {}
    train, dev = task.load(task_config, Path(run["data_dir"]) if run.get("data_dir") else default_data_dir())
    dev = dev[: config.limit or task_config.max_examples]
    seed, text = int(run.get("seed", 0)), boundary_text(tokenizer)
    all_prompts = [build_prompts(name, task_config, train, dev, k, seed, text) for k in config.shots]
    for prompts in all_prompts:
        write_task(folder, task.yaml_file, prompts)
    limit = max_positions(model.config)
    max_length = min(task_config.max_length or limit, limit)  # as the run's evaluation had it
    # add_bos_token=False: the context's own text carries the boundary token.
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=task_config.batch_size,
        max_length=max_length,
        add_bos_token=False,
    )
    theirs = harness_results(lm, folder, [prompts.name for prompts in all_prompts])
    results = {}
    for prompts in all_prompts:
        ours, num_truncated = score_labels(
            model, tokenizer, task_config, prompts.demonstrations, prompts.queries, max_length
        )
        row = compare(prompts, ours, theirs[prompts.name], num_truncated)
        results[prompts.name] = {"task": name, "max_length": max_length, **row}
    return results


def run_harness(config: HarnessConfig) -> dict[str, Any]:
    """Score the run's model with lm_eval and with our scorer on the same prompts; write harness.json."""
    version = require_lm_eval()
    for name in config.tasks:
        HARNESS_TASKS.get(name)  # an unknown name fails before the model loads
    store = open_store(config.store)
    record, model_dir = run_model_dir(store, config.run_id)
    model, tokenizer, seq2seq, _ = load_icl_model(model_dir, None)
    if seq2seq:
        raise ConfigError("harness: only causal LMs compare (span-fill scoring has no lm_eval counterpart)")
    out = config.out or store.run_dir(config.run_id) / "harness"
    folder = out / TASKS_FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    results: dict[str, Any] = {}
    for name in config.tasks:
        results.update(task_results(name, config, record, model, tokenizer, folder))
    shutil.rmtree(folder / "datasets_cache", ignore_errors=True)
    summary = {
        "run_id": config.run_id,
        # Named by content and relative to this file, so the result reads the same on every machine.
        "model": record["stages"]["pretrain"]["artifact_id"],
        "lm_eval_version": version,
        "boundary_token": boundary_text(tokenizer) or None,
        "seed": int((record.get("config") or {}).get("seed", 0)),
        "task_folder": TASKS_FOLDER,
        "results": results,
    }
    write_json_atomic(out / RESULT_FILE, summary)
    return {**summary, "path": str(out / RESULT_FILE)}

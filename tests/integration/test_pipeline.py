"""The tiny preset end to end under Prefect's test harness with a local Ray runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lmforge.app.config import PipelineConfig
from lmforge.core.configbase import load_config
from lmforge.infra.store import ArtifactStore

pytestmark = pytest.mark.integration
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# tiny.yaml's one fine-tune cell: SST-2, strategy finetune, 256 examples, seed index 0.
SST2_CELL = "finetune/sst2/finetune-256-s0"
CLM_STAGES = {
    "clean",
    "tokenizer",
    "shard",
    "pretrain",
    f"{SST2_CELL}/pretrained",
    f"{SST2_CELL}/random",
    "eval/sst2_icl",
    "eval/wikitext_perplexity",
    "report",
}


def run_flow(config: PipelineConfig, store: Path, run_id: str, force: str | None = None) -> dict:
    from lmforge.flows.pipeline import pipeline_flow

    return pipeline_flow(config=config.model_dump(mode="json"), run_id=run_id, store=str(store), force=force)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, shared_data_dir, ray_runtime, prefect_server):
    import os

    os.environ["LMFORGE_DATA_DIR"] = str(shared_data_dir)
    store = tmp_path_factory.mktemp("tiny") / "store"
    config = load_config(PipelineConfig, CONFIGS / "tiny.yaml")
    first = run_flow(config, store, "tiny-first")
    second = run_flow(config, store, "tiny-second")
    return store, first, second


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory, tiny_runs):
    """The first tiny run released as a signed bundle."""
    from lmforge.app.release import build_release
    from lmforge.infra.signing import generate_key_pair

    store, first, _ = tiny_runs
    folder = tmp_path_factory.mktemp("tiny-release")
    private, public = generate_key_pair(folder / "key")
    build_release(ArtifactStore(store), first["run_id"], folder / "bundle", sign_key=private)
    return folder / "bundle", public


@pytest.fixture(scope="module")
def tiny_reproduction(tmp_path_factory, tiny_release):
    """`lmforge reproduce` of the tiny release into a second, empty store: every stage is computed
    again from the raw data with the recorded config and seeds, then compared with the release."""
    from lmforge.app.reproduce import prepare, reproduction_store, run_reproduction

    bundle, public = tiny_release
    plan = prepare(bundle, pubkey=public)
    store = reproduction_store(str(tmp_path_factory.mktemp("tiny-again") / "store"), plan)
    return run_reproduction(plan, store)


def assert_same_artifacts(first: dict, again: dict) -> None:
    """Recomputed from scratch, every stage has the same artifact id (content and recipe) and metrics.

    The report is left out: it describes one run (its id, timings and statuses).
    """
    stages = set(first["stages"]) - {"report"}
    assert set(again["stages"]) - {"report"} == stages
    for name in sorted(stages):
        assert again["stages"][name]["status"] == "completed", name
        assert again["stages"][name]["artifact_id"] == first["stages"][name]["artifact_id"], name


def test_two_fresh_stores_give_identical_artifact_ids(tiny_runs, tiny_reproduction):
    _, first, _ = tiny_runs
    again = tiny_reproduction.record
    assert_same_artifacts(first, again)
    # Deterministic metrics agree exactly between the two independent computations.
    for name in (f"{SST2_CELL}/pretrained", f"{SST2_CELL}/random"):
        assert (
            again["stages"][name]["metrics"]["dev_accuracy"]
            == first["stages"][name]["metrics"]["dev_accuracy"]
        )
    assert (
        again["stages"]["pretrain"]["metrics"]["final_val_loss"]
        == first["stages"]["pretrain"]["metrics"]["final_val_loss"]
    )


def test_reproducing_the_tiny_release_matches_every_artifact_bit_for_bit(tiny_release, tiny_reproduction):
    from lmforge.app.release import load_release

    _, release, _ = load_release(tiny_release[0])
    result = tiny_reproduction
    assert result.ok
    compared = {item.stage: item for item in result.comparisons}
    # Every released stage (the report, which describes one run, is not an artifact of the release).
    assert set(compared) == set(release["stages"]) == CLM_STAGES - {"report"}
    for stage, item in compared.items():
        assert item.status == "identical", (stage, item)
        assert item.rebuilt_id == item.released_id, stage
        assert item.files_compared > 0 and item.metrics_compared > 0, stage
    assert compared["pretrain"].max_weight_abs_diff == 0.0
    assert compared["pretrain"].tensors.startswith("0 of ")
    report = result.report_paths["markdown"].read_text()
    assert "verdict: **reproduced**" in report and report.count("| identical |") == len(compared)
    assert result.report_paths["html"].read_text().count("<tr class='identical'>") == len(compared)


def test_release_bundle_loads_with_transformers_and_carries_its_lineage(tiny_runs, tiny_release):
    import transformers

    from lmforge.app.release import card_metadata, load_release, verify_release

    store, first, _ = tiny_runs
    bundle, public = tiny_release
    notes, verified = verify_release(bundle, public, require_signature=True)
    assert notes[0].startswith("signature: ok") and verified["release_id"]
    _, release, _ = load_release(bundle)
    model = transformers.AutoModelForCausalLM.from_pretrained(bundle / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(bundle / "model")
    generate = transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)
    assert generate("The history of", max_new_tokens=4, do_sample=False)[0]["generated_text"].startswith(
        "The history of"
    )
    card = (bundle / "model" / "README.md").read_text()
    meta = card_metadata(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    results = meta["model-index"][0]["results"]
    perplexity = next(r for r in results if r["task"]["name"] == "eval/wikitext_perplexity")
    recorded = first["stages"]["eval/wikitext_perplexity"]["metrics"]["perplexity"]
    assert perplexity["metrics"][0]["value"] == pytest.approx(recorded, rel=1e-6)
    assert "too_few_words" in card or "dropped because" in card
    # Every ancestor back to the raw inputs, each with its files' hashes, config and seed.
    ids = {entry["id"] for entry in release["artifacts"]}
    assert ids == {stage["artifact_id"] for name, stage in first["stages"].items() if name != "report"}
    for entry in release["artifacts"]:
        assert set(entry["parents"]) <= ids
        assert entry["files"] and all(len(f["sha256"]) == 64 for f in entry["files"])
        stored = ArtifactStore(store).get(entry["id"])
        assert entry["content_id"] == stored["content_id"] and entry["config"] == stored["config"]
    wiki = next(item for item in release["raw_inputs"] if item["uri"].endswith("wiki_00.txt"))
    assert wiki["sha256"] == first_input_sha(store, first)
    assert release["environment"]["packages"]["torch"].startswith("2.13")
    assert release["code"]["files"] and (bundle / release["code"]["archive"]).is_file()


def first_input_sha(store: Path, record: dict) -> str:
    manifest = ArtifactStore(store).get(record["stages"]["clean"]["artifact_id"])
    return manifest["external_files"][0]["sha256"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("model/model.safetensors", "model/model.safetensors: changed"),
        ("release.json", "does not verify"),
        ("release.json.sig", "release.json.sig"),
        ("code/source.tar.gz", "code/source.tar.gz: changed"),
    ],
)
def test_verify_release_names_what_was_tampered_with(tiny_release, tmp_path, capsys, target, expected):
    import shutil

    from lmforge.app.cli import main

    bundle, public = tiny_release
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    assert main(["verify-release", str(copy), "--pubkey", str(public)]) == 0
    path = copy / target
    data = bytearray(path.read_bytes())
    # One byte, chosen so that the file stays well-formed (a hex digit of a hash, a base64 letter).
    index = data.index(b'"sha256": "') + 12 if target == "release.json" else len(data) // 2
    if target == "release.json.sig":
        index = 3
    data[index] = ord("0") if data[index] != ord("0") else ord("1")
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify-release", str(copy), "--pubkey", str(public)]) == 1
    error = capsys.readouterr().err
    assert expected in error, error
    if target == "release.json":
        assert "release.json" in error


def data_dir_with_changed_file(shared: Path, dest: Path, relative: str, change: str) -> Path:
    """A data directory of links to the shared data sets, except `relative`: copied, then changed
    ("edit": one line altered) or removed ("remove")."""
    target = shared / relative
    for entry in shared.iterdir():
        if entry.name != target.relative_to(shared).parts[0]:
            (dest / entry.name).parent.mkdir(parents=True, exist_ok=True)
            (dest / entry.name).symlink_to(entry)
    folder = dest / target.parent.relative_to(shared)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in target.parent.iterdir():
        if entry != target:
            (folder / entry.name).symlink_to(entry)
    if change == "edit":
        lines = target.read_text().splitlines(keepends=True)
        lines[len(lines) // 2] = "An edited line.\n"
        (folder / target.name).write_text("".join(lines))
    return dest


@pytest.mark.parametrize(("change", "expected"), [("edit", "changed"), ("remove", "missing")])
def test_reproduce_refuses_a_changed_raw_input_before_any_work(
    tiny_release, shared_data_dir, tmp_path, monkeypatch, capsys, change, expected
):
    from lmforge.app.cli import main

    bundle, public = tiny_release
    data = data_dir_with_changed_file(
        shared_data_dir, tmp_path / "data", "enwiki_extract/wiki_00.txt", change
    )
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(data))
    store = tmp_path / "store"
    assert main(["reproduce", str(bundle), "--pubkey", str(public), "--store", str(store)]) == 2
    error = capsys.readouterr().err
    assert f"raw input enwiki_extract/wiki_00.txt: {expected}" in error, error
    assert "nothing was run" in error and not store.exists()


def test_reproduce_refuses_changed_code_and_with_allow_drift_reports_what_differs(tiny_release, tmp_path):
    """One line of the clean stage's code changed in a copy of the package: refused, naming the file;
    with --allow-drift the clean stage is rebuilt and the report marks it different."""
    import os
    import shutil
    import subprocess
    import sys

    import lmforge

    bundle, public = tiny_release
    copy = tmp_path / "code"
    shutil.copytree(
        Path(lmforge.__file__).parent,
        copy / "lmforge",
        symlinks=False,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    target = copy / "lmforge" / "corpus" / "normalize.py"
    line = 'return _BLANK_LINES.sub("\\n\\n", text).strip()'
    assert line in target.read_text()
    target.write_text(target.read_text().replace(line, line + ".lower()"))
    store = tmp_path / "store"
    command = [sys.executable, "-m", "lmforge.app.cli", "reproduce", str(bundle), "--pubkey", str(public)]
    command += ["--stages", "clean", "--store", str(store)]
    env = {**os.environ, "PYTHONPATH": str(copy)}
    refused = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "code: changed corpus/normalize.py" in refused.stderr
    assert not store.exists()

    drifted = subprocess.run(
        [*command, "--allow-drift"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "NOT REPRODUCED: 1 artifacts compared (1 different)" in drifted.stdout
    report = next(store.glob("artifacts/reproduction-*/data/reproduction.md")).read_text()
    assert "code: changed corpus/normalize.py" in report
    row = next(line for line in report.splitlines() if line.startswith("| clean |"))
    assert "| different |" in row and ".parquet" in row, row

    # The same changed installation, told to run the release's own code: the clean stage reproduces.
    bundled = [*command[:-1], str(tmp_path / "store-bundled"), "--use-bundled-code"]
    rebuilt = subprocess.run(bundled, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "REPRODUCED: 1 artifacts compared (1 identical)" in rebuilt.stdout
    assert "code and packages: identical to the release" in rebuilt.stdout


def test_random_init_finetune_does_not_depend_on_pretrained_weights(tiny_runs, tmp_path):
    """Pre-training longer changes the weights, not the architecture: the random-init baseline is reused."""
    store, first, _ = tiny_runs
    config = load_config(PipelineConfig, CONFIGS / "tiny.yaml", ["pretrain.max_steps=41"])
    longer = run_flow(config, store, "tiny-longer")
    stages = longer["stages"]
    assert stages["pretrain"]["status"] == "completed"
    assert stages["pretrain"]["artifact_id"] != first["stages"]["pretrain"]["artifact_id"]
    assert stages[f"{SST2_CELL}/pretrained"]["status"] == "completed"
    assert stages[f"{SST2_CELL}/random"]["status"] == "reused"
    assert (
        stages[f"{SST2_CELL}/random"]["artifact_id"] == first["stages"][f"{SST2_CELL}/random"]["artifact_id"]
    )


def test_run_json_complete(tiny_runs):
    store, first, _ = tiny_runs
    record = json.loads((store / "runs" / "tiny-first" / "run.json").read_text())
    assert record == json.loads(json.dumps(first))
    assert record["status"] == "completed"
    assert set(record["stages"]) == CLM_STAGES
    artifacts = ArtifactStore(store)
    for name, stage in record["stages"].items():
        assert stage["status"] == "completed", name
        assert Path(stage["path"]).is_dir(), name
        assert artifacts.verify(stage["artifact_id"]) == [], name
    for path in record["report"].values():
        assert Path(path).is_file()


def sst2_dev_correct(classifier_dir: Path, data_dir: Path, max_length: int) -> tuple[int, int]:
    """Correct predictions of a saved classifier on the SST-2 dev TSV, one unpadded example at a time
    (an independent reading of the file and model: no lmforge code)."""
    import csv

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    with open(data_dir / "sst2" / "dev.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    correct = 0
    with torch.no_grad():
        for row in rows:
            # GPT-1's input transformation: <|start|> text <|extract|>, the text cut to fit.
            body = tokenizer(row["sentence"].strip(), add_special_tokens=False)["input_ids"][: max_length - 2]
            ids = [
                tokenizer.convert_tokens_to_ids("<|start|>"),
                *body,
                tokenizer.convert_tokens_to_ids("<|extract|>"),
            ]
            correct += int(model(input_ids=torch.tensor([ids])).logits[0].argmax()) == int(row["label"])
    return correct, len(rows)


def test_stage_metrics_are_real(tiny_runs, shared_data_dir):
    _, record, _ = tiny_runs
    stages = record["stages"]
    clean = stages["clean"]["metrics"]
    assert clean["num_kept"] > 0 and clean["dropped"].get("too_few_words", 0) > 0
    assert clean["num_read"] == clean["num_kept"] + clean["num_dropped"]
    # tiny.yaml runs every curation step: each reports, and the audit files hold every drop.
    assert {"language_id", "min_length", "gopher_repetition"} <= set(clean["steps"])
    assert clean["languages_kept"] == {"en": clean["num_kept"]}
    assert set(clean["pii_replaced"]) == {"email", "ip_address", "phone"}
    assert clean["decontamination"]["sst2_dev"]["num_documents_checked"] >= clean["num_kept"]
    assert "cluster_size_histogram" in clean["near_dedup"]
    corpus_dir = Path(stages["clean"]["path"])
    rejected = pq.ParquetDataset(sorted(corpus_dir.glob("rejected/*.parquet"))).read()
    assert rejected.num_rows == clean["num_dropped"]
    kept = pq.ParquetDataset(sorted(corpus_dir.glob("part-*.parquet"))).read()
    assert kept.num_rows == clean["num_kept"] and set(kept.column("language").to_pylist()) == {"en"}
    assert stages["tokenizer"]["metrics"]["vocab_size"] <= 2048
    pretrain = stages["pretrain"]["metrics"]
    assert pretrain["final_train_loss"] < pretrain["initial_train_loss"]
    assert pretrain["val_perplexity"] == pytest.approx(math.exp(pretrain["final_val_loss"]), rel=1e-6)
    assert 0 < pretrain["mfu"] < 1 and pretrain["tokens_per_second"] > 0
    for init in ("pretrained", "random"):
        stage = stages[f"{SST2_CELL}/{init}"]
        correct, size = sst2_dev_correct(Path(stage["path"]) / "model", shared_data_dir, max_length=48)
        assert stage["metrics"]["dev_accuracy"] == correct / size
    perplexity = stages["eval/wikitext_perplexity"]["metrics"]
    assert math.isfinite(perplexity["perplexity"]) and perplexity["perplexity"] > 1


def test_checkpoint_reloads_with_transformers(tiny_runs):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, record, _ = tiny_runs
    hf_dir = Path(record["stages"]["pretrain"]["path"]) / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer("The history of the city", return_tensors="pt")
    with torch.inference_mode():
        logits = model(**ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_second_run_reuses_every_stage(tiny_runs):
    _, first, second = tiny_runs
    for name, stage in second["stages"].items():
        if name == "report":
            continue
        assert stage["status"] == "reused", name
        assert stage["artifact_id"] == first["stages"][name]["artifact_id"], name


def test_lineage_reaches_raw_inputs(tiny_runs):
    store, record, _ = tiny_runs
    tree = ArtifactStore(store).lineage(record["stages"]["report"]["artifact_id"])

    def inputs(node):
        yield from (item["uri"] for item in node["inputs"])
        for parent in node["parents"]:
            yield from inputs(parent)

    uris = set(inputs(tree))
    assert any("wiki_00" in uri for uri in uris)
    assert any("sst2" in uri for uri in uris)


@pytest.fixture(scope="module")
def tiny_bert_runs(tmp_path_factory, shared_data_dir, ray_runtime, prefect_server):
    import os

    os.environ["LMFORGE_DATA_DIR"] = str(shared_data_dir)
    config = load_config(PipelineConfig, CONFIGS / "tiny-bert.yaml")
    stores = [tmp_path_factory.mktemp(f"tiny-bert-{index}") / "store" for index in range(2)]
    return [run_flow(config, store, f"tiny-bert-{index}") for index, store in enumerate(stores)]


def test_tiny_bert_two_fresh_stores_give_identical_artifact_ids(tiny_bert_runs):
    first, again = tiny_bert_runs
    assert_same_artifacts(first, again)
    for key in ("accuracy", "num_masked_tokens"):
        assert (
            again["stages"]["eval/mlm_accuracy"]["metrics"][key]
            == first["stages"]["eval/mlm_accuracy"]["metrics"][key]
        )


def test_tiny_bert_pipeline_mlm_path(tiny_bert_runs):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    record = tiny_bert_runs[0]
    expected = {"clean", "tokenizer", "shard", "pretrain", f"{SST2_CELL}/pretrained", f"{SST2_CELL}/random"}
    assert set(record["stages"]) == expected | {"eval/mlm_accuracy", "report"}
    accuracy = record["stages"]["eval/mlm_accuracy"]["metrics"]
    hf_dir = Path(record["stages"]["pretrain"]["path"]) / "hf"
    model = AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    # The table is the tokenizer's size, or padded to a multiple of 64 where the workers had a GPU.
    padded = -(-len(tokenizer) // 64) * 64
    assert tokenizer.mask_token == "[MASK]" and model.config.vocab_size in (len(tokenizer), padded)
    # Independent count: the first 256 validation sequences, each non-special token masked with
    # probability 0.15 from default_rng(mask_seed), predicted by the exported model in one pass.
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    shards_dir = Path(record["stages"]["shard"]["path"])
    manifest = json.loads((shards_dir / "dataset_manifest.json").read_text())
    rows = [
        row
        for shard in manifest["shards"]
        if shard["split"] == "validation"
        for row in pq.read_table(shards_dir / shard["path"])["input_ids"].to_pylist()
    ]
    ids = np.array(rows[:256], dtype=np.int64)
    rng = np.random.default_rng(accuracy["mask_seed"])
    selected = ~np.isin(ids, tokenizer.all_special_ids) & (rng.random(ids.shape) < 0.15)
    masked = np.where(selected, tokenizer.mask_token_id, ids)
    with torch.no_grad():
        predicted = model(input_ids=torch.from_numpy(masked)).logits.argmax(-1).numpy()
    count = int(selected.sum())
    assert accuracy["num_masked_tokens"] == count > 0
    assert accuracy["accuracy"] == int((predicted[selected] == ids[selected]).sum()) / count


def test_empty_corpus_stops_before_tokenizer(
    tmp_path, shared_data_dir, ray_runtime, prefect_server, monkeypatch
):
    from lmforge.core.errors import EmptyCorpusError

    monkeypatch.setenv("LMFORGE_DATA_DIR", str(shared_data_dir))
    config = load_config(
        PipelineConfig, CONFIGS / "tiny.yaml", ["corpus.filters=[{name: min_length, min_words: 1000000}]"]
    )
    with pytest.raises(EmptyCorpusError, match="too_few_words"):
        run_flow(config, tmp_path / "store", "tiny-empty")
    record = json.loads((tmp_path / "store" / "runs" / "tiny-empty" / "run.json").read_text())
    assert record["status"] == "failed" and "EmptyCorpusError" in record["error"]
    assert record["stages"] == {}
    assert ArtifactStore(tmp_path / "store").manifests() == []


def test_report_renders_in_headless_chromium(tiny_runs):
    """A real browser opens the HTML report: every image decodes (the loss curve at the size of
    loss_curve.png) and the page logs no errors."""
    from tests.browser import chromium_version, find_chromium, render

    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium: $LMFORGE_CHROMIUM unset or not found, and none of chromium, chromium-browser, "
            "google-chrome on PATH (.ci/run installs the Debian package)"
        )
    _, record, _ = tiny_runs
    page = render(Path(record["report"]["html"]).resolve().as_uri(), executable)
    version = chromium_version(executable)
    assert [image.alt for image in page.images if not image.loaded] == [], version
    assert page.console_errors == [], version
    png_header = Path(record["report"]["png"]).read_bytes()[16:24]
    png_size = (int.from_bytes(png_header[:4], "big"), int.from_bytes(png_header[4:], "big"))
    loss_curves = [image for image in page.images if image.alt == "loss curve"]
    assert [(image.natural_width, image.natural_height) for image in loss_curves] == [png_size]

"""Lineage graphs: DOT, Mermaid and the report's inline SVG, from `ArtifactStore.lineage` trees."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from lmforge.app.report import write_report
from lmforge.infra.lineage_text import format_dot, format_mermaid, format_svg, lineage_graph
from lmforge.infra.stage_runner import StageRunner
from lmforge.infra.store import ArtifactStore, ExternalFile

pytestmark = pytest.mark.unit
SVG = "{http://www.w3.org/2000/svg}"
HF_URI = "hf://stanfordnlp/sst2@" + "b" * 40 + "?split=validation"


def node(artifact_id: str, stage: str, parents=(), inputs=()) -> dict:
    return {
        "id": artifact_id,
        "kind": stage,
        "stage": stage,
        "created_at": "2026-01-01T00:00:00+00:00",
        "run_id": "r",
        "content_id": "c" * 64,
        "code": {"git_commit": "abc", "git_dirty": False},
        "inputs": list(inputs),
        "parents": list(parents),
    }


def run_trees() -> list[dict]:
    """A run's stage artifacts as the store returns them: the corpus and tokenizer appear many times."""
    raw = {"uri": "enwiki/wiki_00.txt", "sha256": "d" * 64, "size": 10}
    clean = node("corpus-1", "clean", inputs=[raw])
    tokenizer = node("tokenizer-1", "tokenizer", [clean])
    shard = node("shards-1", "shard", [clean, tokenizer])
    model = node("model-1", "pretrain", [shard, tokenizer])
    sst2 = {"uri": HF_URI, "sha256": None, "size": None}
    finetune = node("finetune-1", "finetune/sst2/pretrained", [model], [sst2])
    evaluation = node("evaluation-1", "eval/sst2_icl", [model, shard], [sst2])
    return [clean, tokenizer, shard, model, finetune, evaluation]


EXPECTED_EDGES = {
    ("enwiki/wiki_00.txt", "corpus-1"),
    ("corpus-1", "tokenizer-1"),
    ("corpus-1", "shards-1"),
    ("tokenizer-1", "shards-1"),
    ("shards-1", "model-1"),
    ("tokenizer-1", "model-1"),
    ("model-1", "finetune-1"),
    (HF_URI, "finetune-1"),
    ("model-1", "evaluation-1"),
    ("shards-1", "evaluation-1"),
    (HF_URI, "evaluation-1"),
}


def test_graph_deduplicates_shared_ancestors_and_layers_by_depth():
    graph = lineage_graph(run_trees())
    labels = {key: graph.nodes[key].label for key in graph.nodes}
    assert sorted(labels.values()) == sorted(
        ["enwiki/wiki_00.txt", HF_URI, "clean", "tokenizer", "shard", "pretrain"]
        + ["finetune/sst2/pretrained", "eval/sst2_icl"]
    )
    named = {
        (labels[a] if a.startswith("input:") else a, labels[b] if b.startswith("input:") else b)
        for a, b in graph.edges
    }
    assert named == EXPECTED_EDGES and len(graph.edges) == len(EXPECTED_EDGES)
    layers = {labels[key]: graph.nodes[key].layer for key in graph.nodes}
    assert layers == {
        "enwiki/wiki_00.txt": 0,
        HF_URI: 0,
        "clean": 1,
        "tokenizer": 2,
        "shard": 3,
        "pretrain": 4,
        "finetune/sst2/pretrained": 5,
        "eval/sst2_icl": 5,
    }
    # One tree gives the same graph as the forest it is part of.
    assert lineage_graph(run_trees()[3]).edges == sorted(
        edge for edge in graph.edges if edge[1] not in {"finetune-1", "evaluation-1"}
    )


def parse_dot(text: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """(node -> shape, edges) of the DOT we write (one statement a line)."""
    shapes = dict(re.findall(r'^  "((?:[^"\\]|\\.)*)" \[shape=(\w+)', text, re.M))
    edges = set(re.findall(r'^  "((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)";$', text, re.M))
    return shapes, edges


def test_dot_has_each_node_once_with_input_shapes():
    text = format_dot(run_trees())
    assert text.startswith("digraph lineage {\n") and text.endswith("}\n")
    assert text.count("{") == text.count("}") == 1
    shapes, edges = parse_dot(text)
    assert len(shapes) == 8 and len(text.splitlines()) == 3 + 8 + 11 + 1
    assert {key for key, shape in shapes.items() if shape == "cylinder"} == {
        "input:enwiki/wiki_00.txt@" + "d" * 64,
        f"input:{HF_URI}@",
    }
    assert set(shapes) >= {"corpus-1", "model-1"} and shapes["model-1"] == "box"
    assert ("corpus-1", "tokenizer-1") in edges and len(edges) == 11
    assert all(a in shapes and b in shapes for a, b in edges)


def test_dot_escapes_quotes():
    tree = node("a-1", "clean", inputs=[{"uri": 'odd "name".txt', "sha256": "e" * 64, "size": 1}])
    shapes, edges = parse_dot(format_dot(tree))
    assert 'input:odd \\"name\\".txt@' + "e" * 64 in shapes and len(edges) == 1


def test_mermaid_flowchart():
    text = format_mermaid(run_trees())
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    nodes = [line for line in lines[1:] if "-->" not in line]
    edges = [line for line in lines[1:] if "-->" in line]
    assert len(nodes) == 8 and len(edges) == 11
    ids = {line.split("[", 1)[0].strip() for line in nodes}
    assert all(re.fullmatch(r"  n\d+ --> n\d+", line) for line in edges)
    assert {part for line in edges for part in line.split(" --> ")} <= {f"  {i}" for i in ids} | ids
    cylinders = [line for line in nodes if "[(" in line]
    assert len(cylinders) == 2 and all(line.endswith(")]") for line in cylinders)
    assert any('"clean<br/>corpus-1"' in line for line in nodes)


def test_mermaid_escapes_label_quotes():
    tree = node("a-1", 'say "hi"')
    assert '"say #quot;hi#quot;<br/>a-1"' in format_mermaid(tree)


def test_svg_is_self_contained_and_layered():
    text = format_svg(run_trees())
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    assert "<script" not in text and "href" not in text.replace("url(#arrow)", "")
    groups = root.findall(f"{SVG}g")
    assert sorted(group.get("class") for group in groups) == ["artifact"] * 6 + ["input"] * 2
    x_of = {group.find(f"{SVG}title").text: float(group.find(f"{SVG}rect").get("x")) for group in groups}
    order = ["corpus-1", "tokenizer-1", "shards-1", "model-1", "finetune-1"]
    assert x_of[f"input:{HF_URI}@"] < x_of["corpus-1"]
    assert [x_of[key] for key in order] == sorted(x_of[key] for key in order)
    assert len(set(x_of[key] for key in order)) == len(order)
    assert x_of["finetune-1"] == x_of["evaluation-1"]
    assert len(root.findall(f"{SVG}path")) == 11
    width = float(root.get("width"))
    assert all(x + 230 <= width for x in x_of.values())


def test_report_includes_the_lineage_graph(tmp_path):
    record = {"run_id": "demo-1", "stages": {"clean": {"status": "completed", "artifact_id": "corpus-1"}}}
    paths = write_report(record, tmp_path, run_trees())
    markdown = paths["markdown"].read_text()
    assert "## Lineage" in markdown
    block = markdown.split("```mermaid\n", 1)[1].split("\n```", 1)[0]
    assert block + "\n" == format_mermaid(run_trees())
    page = paths["html"].read_text()
    assert format_svg(run_trees()).strip() in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # Without lineage (an older caller), no section.
    plain = write_report(record, tmp_path / "plain")
    assert "Lineage" not in plain["markdown"].read_text() and "<svg" not in plain["html"].read_text()


def test_graph_of_a_real_store(tmp_path):
    """From ArtifactStore.lineage: a raw file and a shared parent, drawn once each."""
    store = ArtifactStore(tmp_path / "store")
    raw = tmp_path / "raw.txt"
    raw.write_text("x")
    runner = StageRunner(store, "r")

    def write(name: str):
        def compute(out, _work):
            (out / f"{name}.txt").write_text(name)
            return {}

        return compute

    base = runner.run(
        "clean",
        "corpus",
        config={},
        parents=[],
        code=(),
        compute=write("a"),
        external_files=[ExternalFile("raw.txt", raw)],
    )
    left = runner.run(
        "tokenizer", "tokenizer", config={}, parents=[base.artifact_id], code=(), compute=write("b")
    )
    top = runner.run(
        "shard",
        "shards",
        config={},
        parents=[base.artifact_id, left.artifact_id],
        code=(),
        compute=write("c"),
    )
    shapes, edges = parse_dot(format_dot(store.lineage(top.artifact_id)))
    assert len(shapes) == 4 and len(edges) == 4
    assert (base.artifact_id, top.artifact_id) in edges and (base.artifact_id, left.artifact_id) in edges


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_graphviz_reads_the_dot(tmp_path):
    trees = run_trees()
    trees[0]["inputs"][0]["uri"] = 'odd "name".txt'
    result = subprocess.run(
        ["dot", "-Tsvg"], input=format_dot(trees), capture_output=True, text=True, check=True
    )
    root = ET.fromstring(result.stdout)
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]) == 8
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "edge"]) == 11


def test_report_step_draws_the_runs_lineage(tmp_path):
    """The report stage passes the lineage of every stage artifact of the run to the report."""
    from types import SimpleNamespace

    from lmforge.flows.steps import report_step

    store = ArtifactStore(tmp_path / "store")
    raw = tmp_path / "raw.txt"
    raw.write_text("x")
    runner = StageRunner(store, "r")

    def write(out, _work):
        (out / "a.txt").write_text("a")
        return {}

    base = runner.run(
        "clean",
        "corpus",
        config={},
        parents=[],
        code=(),
        compute=write,
        external_files=[ExternalFile("raw.txt", raw)],
    )
    record = {"run_id": "r", "stages": {"clean": {"status": "completed", "artifact_id": base.artifact_id}}}
    ctx = SimpleNamespace(store=store, runner=runner, run_id="r")
    report = report_step(ctx, record)  # type: ignore[arg-type]
    markdown = (store.data_path(report.artifact_id) / report.metrics["markdown"]).read_text()
    assert format_mermaid(store.lineage(base.artifact_id)) in markdown
    page = (store.data_path(report.artifact_id) / report.metrics["html"]).read_text()
    assert f"<title>{base.artifact_id}</title>" in page and "<title>input:raw.txt@" in page

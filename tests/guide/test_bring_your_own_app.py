"""docs/bring-your-own-app.md stays true: its WorkerPools are admitted by the CRD (schema
and CEL) and parsed by the operator's model, the Deployments the operator would build from
them pass the Kubernetes schema, and its Python compiles. A block the guide adds is
checked by the rules for its kind; an unknown kind of YAML fails, so nothing is shown
unchecked."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from chart_render import template
from guide_blocks import Block, blocks
from kubernetes_validate.utils import latest_version

from tide.cli import main
from tide_operator.resources.deployments import build_worker_deployment
from tide_operator.resources.spec import WorkerPool

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "bring-your-own-app.md"
YAML = blocks(GUIDE, "yaml")


def chart_values() -> list[Block]:
    """The blocks that are values files for the chart (they say so on their first line)."""
    return [b for b in YAML if b.text.startswith("# values-")]


def workerpools() -> list[tuple[Block, dict[str, Any]]]:
    return [
        (block, doc)
        for block in YAML
        for doc in yaml.safe_load_all(block.text)
        if isinstance(doc, dict) and doc.get("kind") == "WorkerPool"
    ]


def test_the_guide_shows_both_workerpool_modes() -> None:
    modes = {"template" if "template" in d["spec"] else "scaleTargetRef" for _, d in workerpools()}
    assert modes == {"template", "scaleTargetRef"}


@pytest.mark.parametrize(("block", "doc"), workerpools(), ids=lambda v: str(v)[:40])
def test_workerpools_are_admitted_and_build_valid_deployments(
    block: Block, doc: dict[str, Any], admit: Callable[[dict[str, Any]], list[str]]
) -> None:
    assert admit(doc) == [], block
    body = {**doc, "metadata": {**doc["metadata"], "uid": "u-1"}}
    pool = WorkerPool.from_body(body)
    if pool.spec.template is not None:
        deployment = build_worker_deployment(pool, replicas=1)
        kubernetes_validate.validate(deployment, latest_version(), strict=True)


def test_every_yaml_block_is_checked() -> None:
    # A WorkerPool or a chart values file; nothing shown goes unchecked.
    for block in YAML:
        docs = [d for d in yaml.safe_load_all(block.text) if d]
        assert block in chart_values() or all(d.get("kind") == "WorkerPool" for d in docs), block


@pytest.mark.parametrize("block", chart_values(), ids=str)
def test_chart_values_render_the_platform_alone(block: Block, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(block.text)
    objects = template("--values", str(values))
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    deployments = {name for kind, name in kinds if kind == "Deployment"}
    assert deployments == {"tide-operator", "tide-exporter", "tide-flower"}
    assert not {kind for kind, _ in kinds} & {"StatefulSet", "Job", "Pod"}
    pools = [o for o in objects if o["kind"] == "WorkerPool"]
    assert len(pools) == len(yaml.safe_load(block.text)["workerPools"])
    for pool in pools:
        parsed = WorkerPool.from_body({**pool, "metadata": {**pool["metadata"], "uid": "u"}})
        if parsed.spec.template is not None:
            built = build_worker_deployment(parsed, replicas=1)
            kubernetes_validate.validate(built, latest_version(), strict=True)


def tide_command_lines() -> list[list[str]]:
    lines = []
    for block in blocks(GUIDE, "console"):
        for line in block.text.splitlines():
            if line.startswith("$ tide "):
                lines.append(shlex.split(line[2:].split("#")[0])[1:])
    return lines


@pytest.mark.parametrize("argv", tide_command_lines(), ids=" ".join)
def test_tide_command_lines_name_real_options(argv: list[str]) -> None:
    command = main.get_command(click.Context(main), argv[0])
    assert command is not None, argv
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in argv[1:]:
        if word.startswith("-"):
            assert word.split("=")[0] in known, f"{word} is not an option of tide {argv[0]}"


def test_python_blocks_compile() -> None:
    python = blocks(GUIDE, "python")
    assert python
    for block in python:
        compile(block.text, f"{GUIDE.name}:{block.line}", "exec")

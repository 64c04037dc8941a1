"""Generated job specs and overrides: every document and every ``key=value`` ends in a valid
spec or a message naming the problem (exit 0 or 2), never a traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from orchestrator.errors import InputError
from orchestrator.spec import JobSpec, load_spec, parse_spec
from tests.conftest import TINY_JOB

runner = CliRunner()
BASE = yaml.safe_load(TINY_JOB)
EXAMPLES = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def _paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every field path of the spec (``solver.max_iter``), so examples reach deep checks."""
    found = []
    for name, field in model.model_fields.items():
        found.append(prefix + name)
        for candidate in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found.extend(_paths(candidate, f"{prefix}{name}."))
    return found


PATHS = _paths(JobSpec)
KEYS = st.sampled_from(sorted({p.rsplit(".", 1)[-1] for p in PATHS})) | st.text(max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(KEYS, inner, max_size=3), max_leaves=8)
PATH = st.sampled_from(PATHS) | st.text(max_size=20)


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict):
            return doc
        node = node.setdefault(part, {})
    if isinstance(node, dict):
        node[parts[-1]] = value
    return doc


MUTATED = st.builds(lambda changes: [_set(copy.deepcopy(BASE), p, v) for p, v in changes][-1],
                    st.lists(st.tuples(PATH, VALUES), min_size=1, max_size=4))
DOCUMENTS = (MUTATED | st.dictionaries(KEYS, VALUES, max_size=5) | VALUES).map(
    lambda doc: yaml.safe_dump(doc, allow_unicode=True)) | st.text(max_size=200)
OVERRIDES = st.lists(st.builds(lambda p, v: f"{p}={v}", PATH,
                               VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True)
                                          .strip().removesuffix("...").strip())
                               | st.text(max_size=15))
                     | st.text(max_size=25), max_size=4)


@EXAMPLES
@given(text=DOCUMENTS)
def test_any_document_validates_or_exits_2(tmp_path: Path, text: str) -> None:
    from orchestrator.cli import app

    path = tmp_path / "job.yaml"
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code in (0, 2), (text, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), text
    assert "Traceback" not in result.output and str(path) in result.output


@EXAMPLES
@given(overrides=OVERRIDES)
def test_any_override_gives_a_spec_or_a_message(tmp_path: Path, overrides: list[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(TINY_JOB, encoding="utf-8")
    try:
        spec = load_spec(path, overrides)
    except InputError as exc:
        assert str(exc).strip(), overrides
        return
    assert parse_spec(yaml.safe_load(spec.resolved_yaml(redact=False))) == spec


def test_an_unknown_key_that_looks_like_a_union_label_is_named() -> None:
    """Found by the generator above: a key such as '-' once crashed the error message."""
    raw = {**copy.deepcopy(BASE), "-": None, "solver-x": 1}
    try:
        parse_spec(raw)
    except InputError as exc:
        assert "  -: unknown key" in str(exc) and "  solver-x: unknown key" in str(exc)
    else:
        raise AssertionError("unknown keys were accepted")

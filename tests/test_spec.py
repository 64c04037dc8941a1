from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.errors import InputError
from orchestrator.spec import JobSpec, apply_overrides, find_specs, load_spec, parse_spec
from tests.conftest import REPO, TINY_JOB


def raw() -> dict:
    return yaml.safe_load(TINY_JOB)


def test_tiny_spec_parses_with_defaults() -> None:
    spec = parse_spec(raw())
    assert spec.resources.workers == 2
    assert spec.resources.gpus_per_worker == 0
    assert spec.eval.chunk_bytes == 256 * 2**20
    assert spec.run.max_failures == 0


def test_unknown_key_names_path_and_suggests() -> None:
    doc = raw()
    doc["solver"]["max_iters"] = 5
    with pytest.raises(InputError) as err:
        parse_spec(doc, source="jobs/x.yaml")
    message = str(err.value)
    assert "jobs/x.yaml" in message
    assert "solver.max_iters: unknown key (did you mean 'max_iter'?)" in message


def test_unknown_top_level_key_lists_known_keys_when_nothing_is_close() -> None:
    doc = raw()
    doc["zzz"] = 1
    with pytest.raises(InputError, match=r"zzz: unknown key \(known keys: name, description"):
        parse_spec(doc)


def test_wrong_type_names_field_and_value() -> None:
    doc = raw()
    doc["resources"]["workers"] = "many"
    with pytest.raises(InputError, match=r"resources\.workers: .*integer.*'many'"):
        parse_spec(doc)


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_below_one_is_rejected(workers: int) -> None:
    doc = raw()
    doc["resources"]["workers"] = workers
    with pytest.raises(InputError, match=r"resources\.workers: .*greater than or equal to 1"):
        parse_spec(doc)


def test_missing_required_field() -> None:
    doc = raw()
    del doc["solver"]["reference_lr"]
    with pytest.raises(InputError, match=r"solver\.reference_lr: required field is missing"):
        parse_spec(doc)


def test_schedule_needs_exactly_one_of_max_iter_and_epochs() -> None:
    doc = raw()
    doc["solver"]["epochs"] = 3
    with pytest.raises(InputError, match="exactly one of max_iter or epochs"):
        parse_spec(doc)


def test_fraction_steps_must_be_inside_the_schedule() -> None:
    doc = raw()
    doc["solver"]["steps"] = [0.5, 1.5]
    with pytest.raises(InputError, match=r"fractions must lie in \(0, 1\)"):
        parse_spec(doc)


def test_opts_must_be_pairs() -> None:
    doc = raw()
    doc["model"]["opts"] = ["MODEL.RESNETS.DEPTH"]
    with pytest.raises(InputError, match="KEY VALUE pairs"):
        parse_spec(doc)


def test_data_needs_one_source() -> None:
    doc = raw()
    doc["data"] = {"train": {"json_file": "a.json"}}
    with pytest.raises(InputError, match="both json_file and image_root"):
        parse_spec(doc)


def test_overrides_parse_yaml_values_and_create_paths() -> None:
    doc = apply_overrides(raw(), ["resources.workers=4", "solver.steps=[0.5, 0.75]",
                                  "model.weights=", "tags.owner=me"])
    spec = JobSpec.model_validate(doc)
    assert spec.resources.workers == 4
    assert spec.solver.steps == [0.5, 0.75]
    assert spec.model.weights == ""
    assert spec.tags == {"owner": "me"}


def test_override_of_unknown_key_is_an_unknown_key_error() -> None:
    with pytest.raises(InputError, match="resources.worker: unknown key .*'workers'"):
        parse_spec(raw(), overrides=["resources.worker=3"])


@pytest.mark.parametrize("bad", ["novalue", "=3", "solver.max_iter.x=1"])
def test_malformed_overrides(bad: str) -> None:
    with pytest.raises(InputError, match="override"):
        parse_spec(raw(), overrides=[bad])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="job spec not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid YAML"):
        load_spec(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n", encoding="utf-8")
    with pytest.raises(InputError, match="must be a YAML mapping"):
        load_spec(scalar)


def test_resolved_yaml_round_trips() -> None:
    spec = parse_spec(raw(), overrides=["solver.max_iter=9"])
    again = JobSpec.model_validate(yaml.safe_load(spec.resolved_yaml()))
    assert again == spec
    assert again.solver.max_iter == 9


def test_find_specs_is_recursive(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x.yaml", "a/y.yml", "a/b/z.yaml", "a/b/readme.txt"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    found = [p.relative_to(tmp_path).as_posix() for p in find_specs([tmp_path])]
    assert sorted(found) == ["a/b/z.yaml", "a/y.yml", "x.yaml"]


def test_every_shipped_job_validates() -> None:
    files = find_specs([REPO / "jobs"])
    assert len(files) >= 2
    for path in files:
        load_spec(path)


def test_sweep_expands_every_combination_in_order() -> None:
    from orchestrator.spec import expand_sweep

    doc = raw()
    doc["sweep"] = {"resources.workers": [1, 2], "solver.reference_lr": [0.01, 0.02]}
    spec = parse_spec(doc)
    children = expand_sweep(spec)
    assert [a for a, _ in children] == [
        {"resources.workers": 1, "solver.reference_lr": 0.01},
        {"resources.workers": 1, "solver.reference_lr": 0.02},
        {"resources.workers": 2, "solver.reference_lr": 0.01},
        {"resources.workers": 2, "solver.reference_lr": 0.02},
    ]
    assert [(c.resources.workers, c.solver.reference_lr) for _, c in children] == [
        (1, 0.01), (1, 0.02), (2, 0.01), (2, 0.02)]
    assert all(not c.sweep for _, c in children)


def test_a_bad_sweep_fails_at_load_naming_the_combination() -> None:
    doc = raw()
    doc["sweep"] = {"resources.workers": [1, 0]}
    with pytest.raises(InputError,
                       match=r"(?s)sweep \{'resources.workers': 0\}.*resources\.workers"):
        parse_spec(doc)
    doc["sweep"] = {"resources.wokers": [1]}
    with pytest.raises(InputError, match="did you mean 'workers'"):
        parse_spec(doc)
    doc["sweep"] = {"resources.workers": []}
    with pytest.raises(InputError, match="sweep.resources.workers"):
        parse_spec(doc)


def test_preemptions_are_unlimited_by_default_and_checked_every_few_iterations() -> None:
    run = parse_spec(raw()).run
    assert run.max_preemptions == -1 and run.preemption_check_every == 10
    assert apply_overrides(raw(), ["run.max_preemptions=3"])["run"]["max_preemptions"] == 3


@pytest.mark.parametrize("override", ["run.max_preemptions=-2", "run.max_preemptions=1.5",
                                      "run.preemption_check_every=0"])
def test_preemption_settings_out_of_range_name_their_field(override: str) -> None:
    with pytest.raises(InputError, match=override.split("=")[0].split(".")[1]):
        parse_spec(apply_overrides(raw(), [override]))

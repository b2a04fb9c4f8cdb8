"""Config loading: defaults, overrides, derived places and one-line errors naming the field."""

from __future__ import annotations

import json

import pytest

from marlseg.config import Config, dump_config, load_config
from marlseg.errors import ConfigError


def write(tmp_path, data) -> str:
    p = tmp_path / "config.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(p)


def test_defaults_and_derived_places(tmp_path):
    cfg = load_config(write(tmp_path, {"run": {"dir": "runs/x"}}))
    # relative to the config file's directory (marlseg.paths)
    assert cfg.affs.path == tmp_path / "runs" / "x" / "affs.zarr"
    assert cfg.fragments_ds.dataset == "volumes/fragments"
    assert cfg.segmentation_ds(0.25).dataset == "volumes/segmentation_0.250"
    assert cfg.eval_thresholds == cfg.segments.thresholds
    assert cfg.workers_for("fragments").type == "local"


def test_overrides_are_json_parsed_and_nested(tmp_path):
    cfg = load_config(
        write(tmp_path, {}),
        [
            "workers.num_workers=4",
            "fragments.block_shape=[200, 200, 200]",
            "fragments.method=mutex",  # a bare word is a string
            'fragments.workers={"num_workers": 1, "type": "slurm"}',
            "db.uri=null",
        ],
    )
    assert cfg.workers.num_workers == 4
    assert cfg.fragments.block_shape == [200, 200, 200]
    assert cfg.fragments.method == "mutex"
    w = cfg.workers_for("fragments")
    assert (w.num_workers, w.type) == (1, "slurm")
    assert cfg.workers_for("agglomerate").num_workers == 4


def test_print_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, {"segments": {"thresholds": [0.3]}}))
    again = Config.model_validate(json.loads(dump_config(cfg)))
    assert again == cfg


def test_resolved_makes_paths_absolute(tmp_path):
    cfg = load_config(
        write(tmp_path, {"raw": {"path": "data/x.h5", "dataset": "volumes/raw"}})
    ).resolved()
    assert cfg.raw.path.is_absolute() and cfg.run.dir.is_absolute()
    assert cfg.raw.dataset == "volumes/raw"


@pytest.mark.parametrize(
    "data, overrides, where, what",
    [
        ({"fragmnts": {}}, [], "fragmnts", "unknown key"),
        ({"fragments": {"blok_shape": [1, 2, 3]}}, [], "fragments.blok_shape", "unknown key"),
        ({"workers": {"num_workers": "two"}}, [], "workers.num_workers", "valid integer"),
        ({"fragments": {"context": [-10, 0, 0]}}, [], "fragments.context", ">= 0"),
        ({"fragments": {"block_shape": [100, 100]}}, [], "fragments.block_shape", "3 values"),
        (
            {"segments": {"thresholds": [0.5, 1.5]}},
            [],
            "segments.thresholds[1]",
            "less than or equal to 1",
        ),
        (
            {"fragments": {"method": "magic"}},
            [],
            "fragments.method",
            "'watershed', 'mutex' or 'waterz'",
        ),
        ({"raw": {"path": "x.h5"}}, [], "raw.dataset", "required"),
        (
            {},
            ["agglomerate.workers.num_workers=0"],
            "agglomerate.workers.num_workers",
            "greater than 0",
        ),
        ({}, ["network.input_shape=[10,64,64]"], "network", "not a multiple"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tmp_path, data, overrides, where, what):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, data), overrides)
    assert e.value.where == where
    assert what in e.value.what
    assert "\n" not in e.value.line()


def test_malformed_json_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="malformed JSON at line 1"):
        load_config(write(tmp_path, '{"run": {'))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_config(write(tmp_path, "[1, 2]"))
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(write(tmp_path, {}), ["workers.num_workers"])


def test_config_reference_in_docs_is_current():
    """docs/config.md is generated from the models' field docstrings; regenerate with
    ``python -m marlseg.config`` after changing a field."""
    from pathlib import Path

    from marlseg.config import reference_markdown

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert reference_markdown() in doc
    assert "`fragments.block_shape`" in doc and "`workers.type`" in doc


def test_every_shipped_config_loads():
    """Each config under configs/ is valid as shipped (its paths are relative to the repo)."""
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.json"))
    assert len(configs) >= 8
    repo = Path(__file__).parents[1].resolve()
    for path in configs:
        config = load_config(path)
        # every run writes under the repo's runs/, named after its config (no two share it)
        assert config.run.dir.resolve() == repo / "runs" / path.stem, path

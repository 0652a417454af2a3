from pathlib import Path

import pytest

from memlens.config import builtin_config, load_config, parse_config, with_overrides
from memlens.errors import MemlensError


def test_wrong_type_names_the_field(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[training]\nepochs = "three"\n')
    with pytest.raises(MemlensError, match=r"field 'training\.epochs': .*integer.*'three'"):
        load_config(p)


def test_unknown_field_and_unknown_attack():
    with pytest.raises(MemlensError, match=r"field 'tuning\.rnak': unknown field"):
        parse_config({"tuning": {"rnak": 4}})
    with pytest.raises(MemlensError, match=r"field 'attacks\.names'.*unknown attack"):
        parse_config({"attacks": {"names": ["loss", "psychic"]}})


def test_bad_toml_and_missing_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[training\n")
    with pytest.raises(MemlensError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(MemlensError, match="config file not found"):
        load_config(tmp_path / "none.toml")


def test_demo_config_round_trips_through_toml(tmp_path):
    cfg = builtin_config("demo")
    assert cfg.model.name == "smollm2-135m" and cfg.tuning.method == "lora"
    p = tmp_path / "resolved.toml"
    p.write_text(cfg.to_toml())
    assert load_config(p) == cfg


def test_overrides_are_validated():
    cfg = with_overrides(builtin_config("demo"), {"training.epochs": 2, "data.dir": None})
    assert cfg.training.epochs == 2
    with pytest.raises(MemlensError, match=r"training\.epochs"):
        with_overrides(cfg, {"training.epochs": -1})


def test_extraction_prefix_is_a_fraction_or_a_whole_token_count():
    assert parse_config({"extraction": {"prefix": 0.25}}).extraction.prefix_length == 0.25
    assert parse_config({"extraction": {"prefix": 8}}).extraction.prefix_length == 8
    with pytest.raises(MemlensError, match=r"extraction\.prefix.*whole number \(got 8\.7\)"):
        parse_config({"extraction": {"prefix": 8.7}})


def test_empty_run_name_and_output_dir_are_refused():
    with pytest.raises(MemlensError, match="run name must not be empty"):
        parse_config({"name": ""})
    with pytest.raises(MemlensError, match=r"output\.dir.*must not be empty"):
        parse_config({"output": {"dir": " "}})


@pytest.mark.parametrize("path", sorted(p.name for p in (Path(__file__).parents[1] / "examples").glob("*.toml")))
def test_every_example_config_in_the_readme_is_valid(path):
    cfg = load_config(Path(__file__).parents[1] / "examples" / path)
    assert cfg.name == path.removesuffix(".toml") and str(cfg.output.dir).startswith("runs/")


def test_the_readmes_toml_examples_parse():
    """Every TOML block of README.md is valid TOML; a whole sweep file expands and a whole run config
    validates, so that a newcomer can paste them."""
    import re
    import tomllib
    from pathlib import Path

    from memlens.config import parse_config
    from memlens.experiments.sweep import expand

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [tomllib.loads(b) for b in re.findall(r"```toml\n(.*?)```", readme, re.S)]
    assert len(blocks) >= 5
    sweeps = [b for b in blocks if "name" in b and ("grid" in b or "variants" in b)]
    runs = [b for b in blocks if "model" in b and "tuning" in b and "grid" not in b]
    assert sweeps and runs
    for b in sweeps:
        assert expand(b).trials
    for b in runs:
        parse_config(b)

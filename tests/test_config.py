"""The schema and the typed sections must agree, and bad configs must fail with clear messages."""

import dataclasses

import pytest
import yaml

from pipeline import config as cfg


def test_defaults_validate_and_fill():
    config = cfg.load_config(None)
    assert config["scenes"] == {}
    assert config["demo"]["name"] == "demo"


def test_repo_config_file_validates():
    config = cfg.load_config(cfg.SCHEMA_PATH.parents[1] / "config" / "config.yaml")
    assert config["scenes"] == {}


def _section_classes():
    """(section name, dataclass) for every typed top-level section."""
    pairs = []
    for name, obj in vars(cfg).items():
        if dataclasses.is_dataclass(obj) and name.endswith("Config") and obj.__module__ == cfg.__name__:
            pairs.append(obj)
    return pairs


def _schema_defaults(schema):
    return {key: sub.get("default") for key, sub in schema.get("properties", {}).items()}


@pytest.mark.parametrize("section_name", [k for k in cfg.load_schema()["properties"] if k != "scenes"])
def test_schema_section_matches_its_dataclass(section_name):
    """Every schema section builds its dataclass, and defaults are the same in both places."""
    config = cfg.load_config(None)
    classes = {cls.__name__.lower().removesuffix("config"): cls for cls in _section_classes()}
    cls = classes.get(section_name.replace("_", ""))
    if cls is None:
        pytest.skip(f"section {section_name!r} has no top-level dataclass named like it")
    built = cfg.section(config, section_name, cls)
    default = cls()
    for field in dataclasses.fields(cls):
        got, want = getattr(built, field.name), getattr(default, field.name)
        if dataclasses.is_dataclass(got):
            got, want = dataclasses.asdict(got), dataclasses.asdict(want)
        assert got == want, f"{section_name}.{field.name}: schema default {got!r} != dataclass {want!r}"


def test_bad_config_names_file_and_key(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump({"demo": {"num_views": 1}}))
    with pytest.raises(cfg.ConfigError, match=r"(?s)my\.yaml.*demo/num_views"):
        cfg.load_config(path)
    path.write_text("scenes: [a, b]\n")
    with pytest.raises(cfg.ConfigError, match="scenes"):
        cfg.load_config(path)
    path.write_text("unknown_section: 1\n")
    with pytest.raises(cfg.ConfigError, match="unknown_section"):
        cfg.load_config(path)
    path.write_text("demo: [unclosed\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.load_config(path)
    with pytest.raises(cfg.ConfigError, match="not found"):
        cfg.load_config(tmp_path / "absent.yaml")


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(cfg.ConfigError, match="unknown option"):
        cfg.from_dict(cfg.DemoConfig, {"nmae": "x"})


def test_parse_assignments_reads_yaml_values_and_nests_dotted_keys():
    from pipeline.config import parse_assignments

    assert parse_assignments(["refinement=false", "iterations=[1, 2, 2]", "loss.top_k=2", "loss.recipe=mvs2"]) == {
        "refinement": False, "iterations": [1, 2, 2], "loss": {"top_k": 2, "recipe": "mvs2"},
    }
    with pytest.raises(ValueError, match="KEY=VALUE, got 'top_k'"):
        parse_assignments(["top_k"])


def test_scientific_notation_without_a_dot_is_a_number_where_the_schema_wants_one(tmp_path):
    """PyYAML (YAML 1.1) and Snakemake read `3e-5` as a string; where the schema asks for a number it
    is one (as YAML 1.2 and every copied ML config mean it); strings elsewhere stay strings."""
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  learning_rate: 3e-5\n  finetune: {learning_rate: 1E-4}\n"
                    "scenes: {a: 1e5}\nfuse: {max_relative_depth_error: 2.5e-3}\n")
    assert yaml.safe_load(path.read_text())["train"]["learning_rate"] == "3e-5"  # the trap itself
    config = cfg.load_config(path)
    assert config["train"]["learning_rate"] == pytest.approx(3e-5)
    assert config["train"]["finetune"]["learning_rate"] == pytest.approx(1e-4)
    assert config["fuse"]["max_relative_depth_error"] == pytest.approx(2.5e-3)
    assert config["scenes"] == {"a": "1e5"}  # a scene folder named 1e5 stays a path
    train = cfg.section(config, "train", cfg.TrainConfig)
    assert isinstance(train.learning_rate, float)
    path.write_text("train:\n  steps: 1e3\n")  # integers are not guessed: still a clear error
    with pytest.raises(cfg.ConfigError, match=r"train/steps"):
        cfg.load_config(path)

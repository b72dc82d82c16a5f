"""The schema and the typed sections must agree, and bad configs must fail with clear messages."""

import copy
import dataclasses
import types
import typing

import pytest
import yaml

from pipeline import config as cfg

# Keywords a property of config.schema.yaml may use; anything else is a typo (or a YAML flow mapping
# split by an unquoted comma) that jsonschema would silently ignore.
_KEYWORDS = {"type", "default", "description", "minimum", "maximum", "exclusiveMinimum", "multipleOf",
             "enum", "items", "minItems", "maxItems", "properties", "additionalProperties", "pattern"}
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}


def _words(text):
    return " ".join(str(text).split())


def _plain(value):
    """Python default -> what YAML holds (tuples are lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _json_types(hint) -> set[str]:
    """The JSON-schema types a field annotation stands for."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return set().union(*(_json_types(arm) for arm in typing.get_args(hint)))
    if hint is type(None):
        return {"null"}
    if typing.get_origin(hint) is typing.Literal:
        return set().union(*(_json_types(type(v)) for v in typing.get_args(hint)))
    if typing.get_origin(hint) is tuple:
        return {"array"}
    if dataclasses.is_dataclass(hint):
        return {"object"}
    return {_SCALARS[hint]}


def _schema_types(sub) -> set[str]:
    if "type" in sub:
        return {sub["type"]} if isinstance(sub["type"], str) else set(sub["type"])
    return set().union(*(_json_types(type(v)) for v in sub["enum"]))


def _same_value(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def schema_mismatches(schema: dict) -> list[str]:
    """Every disagreement between ``schema`` and the section dataclasses, one line each."""
    problems = []
    top = set(schema["properties"])
    for name in sorted(top - set(cfg.SECTIONS) - set(cfg.WORKFLOW_SECTIONS)):
        problems.append(f"{name}: schema section without a dataclass in pipeline.config.SECTIONS")
    for name in sorted(set(cfg.SECTIONS) - top):
        problems.append(f"{name}: dataclass {cfg.SECTIONS[name].__name__} without a schema section")
    for name, cls in cfg.SECTIONS.items():
        if name in top:
            _compare(cls, schema["properties"][name], name, problems)
    return problems


def _compare(cls, node, path, problems) -> None:
    if node.get("type") != "object" or node.get("additionalProperties") is not False or node.get("default") != {}:
        problems.append(f"{path}: expected an object with additionalProperties: false and default: {{}}")
    properties = node.get("properties", {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in sorted(set(properties) - set(fields)):
        problems.append(f"{path}.{name}: in the schema, not a field of {cls.__name__}")
    for name in sorted(set(fields) - set(properties)):
        problems.append(f"{path}.{name}: a field of {cls.__name__}, not in the schema")
    instance = cls()
    for name in [n for n in fields if n in properties]:
        where, sub, field, hint = f"{path}.{name}", properties[name], fields[name], hints[name]
        unknown = set(sub) - _KEYWORDS
        if unknown:
            problems.append(f"{where}: unknown schema keywords {sorted(unknown)}")
        if sub.get("pattern") != field.metadata.get("pattern"):
            problems.append(f"{where}: pattern differs: schema {sub.get('pattern')!r}, dataclass {field.metadata.get('pattern')!r}")
        description = field.metadata.get("description")
        if _words(sub.get("description", "")) != _words(description or ""):
            problems.append(f"{where}: description differs:\n  schema:    {sub.get('description')!r}\n"
                            f"  dataclass: {description!r}")
        if _schema_types(sub) != _json_types(hint):
            problems.append(f"{where}: schema type {sorted(_schema_types(sub))} but the field is {hint}")
        literal = [a for a in ([hint] + list(typing.get_args(hint))) if typing.get_origin(a) is typing.Literal]
        if literal and list(typing.get_args(literal[0])) != sub.get("enum"):
            problems.append(f"{where}: schema enum {sub.get('enum')} but the field is {hint}")
        if "enum" in sub and not literal:
            problems.append(f"{where}: schema enum {sub['enum']} but the field is {hint}, not a Literal")
        if typing.get_origin(hint) is tuple:
            args = typing.get_args(hint)
            fixed = not (len(args) == 2 and args[1] is Ellipsis)
            length = (sub.get("minItems"), sub.get("maxItems"))
            if fixed and length != (len(args), len(args)) or not fixed and length != (None, None):
                problems.append(f"{where}: schema minItems/maxItems {length} but the field is {hint}")
            if _schema_types(sub.get("items", {"type": []})) != _json_types(args[0]):
                problems.append(f"{where}: schema items {sub.get('items')} but the field is {hint}")
        default = getattr(instance, name)
        if dataclasses.is_dataclass(hint):
            if default != hint():
                problems.append(f"{where}: default {default!r} is not {hint.__name__}()")
            _compare(hint, sub, where, problems)
        elif "default" not in sub:
            problems.append(f"{where}: no default in the schema")
        elif not _same_value(sub["default"], _plain(default)):
            problems.append(f"{where}: schema default {sub['default']!r} but dataclass default {default!r}")


def test_schema_and_dataclasses_agree_field_by_field():
    """Names, types (and enums, tuple lengths), defaults and descriptions of every section."""
    problems = schema_mismatches(cfg.load_schema())
    assert not problems, "\n".join(problems)


def _set(schema, path, key, value):
    node = schema
    for part in path.split("."):
        node = node["properties"][part]
    node[key] = value


@pytest.mark.parametrize("path, key, value, expected", [
    ("fuse.num_sources", "default", 12, "schema default 12"),
    ("train.loss.augmentation.gamma", "default", 2.0, "schema default 2.0"),
    ("demo.distortion", "default", 0, "schema default 0"),
    ("infer.plane_fill.window", "description", "something else", "description differs"),
    ("prepare.fit", "enum", ["crop"], "schema enum"),
    ("report.dpi", "type", "number", "schema type"),
    ("train.crop_scale", "maxItems", 3, "minItems/maxItems"),
    ("evaluate.seed", "sampling", None, "unknown schema keywords"),  # `{description: a, b}` in YAML
])
def test_the_agreement_check_finds_a_changed_schema(path, key, value, expected):
    schema = copy.deepcopy(cfg.load_schema())
    _set(schema, path, key, value)
    problems = schema_mismatches(schema)
    assert any(p.startswith(path) and expected in p for p in problems), problems


def test_the_agreement_check_finds_a_missing_or_extra_option():
    schema = copy.deepcopy(cfg.load_schema())
    del schema["properties"]["fuse"]["properties"]["normals"]
    schema["properties"]["report"]["properties"]["colour_map"] = {"type": "string", "default": "x", "description": "y"}
    schema["properties"]["extra_section"] = {"type": "object", "default": {}}
    problems = schema_mismatches(schema)
    assert "fuse.normals: a field of FuseConfig, not in the schema" in problems
    assert "report.colour_map: in the schema, not a field of ReportConfig" in problems
    assert any(p.startswith("extra_section:") for p in problems)


@pytest.mark.parametrize("name", sorted(cfg.SECTIONS))
def test_a_validated_default_config_builds_the_default_dataclass(name):
    assert cfg.section(cfg.load_config(None), name, cfg.SECTIONS[name]) == cfg.SECTIONS[name]()


def test_every_option_has_a_description():
    assert cfg.describe(cfg.FuseConfig, "min_confidence") == "photometric check: keep pixels with confidence >= this"
    with pytest.raises(TypeError, match="description"):
        cfg.option(1, "")
    with pytest.raises(KeyError, match="nmae"):
        cfg.describe(cfg.DemoConfig, "nmae")


def test_defaults_validate_and_fill():
    config = cfg.load_config(None)
    assert config["scenes"] == {}
    assert config["demo"]["name"] == "demo"


def test_repo_config_file_validates():
    config = cfg.load_config(cfg.SCHEMA_PATH.parents[1] / "config" / "config.yaml")
    assert config["scenes"] == {}


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


def test_overrides_merge_into_the_file_and_are_validated_with_it(tmp_path):
    """Command-line options are written over the file's section (its other options kept) and the
    result is validated once: a bad flag is reported like a bad file entry."""
    path = tmp_path / "run.yaml"
    path.write_text("demo: {seed: 5, width: 64}\nfuse: {num_sources: 3}\n")
    config = cfg.load_config(path, overrides={"demo": {"seed": 7}})
    assert (config["demo"]["seed"], config["demo"]["width"], config["fuse"]["num_sources"]) == (7, 64, 3)
    with pytest.raises(cfg.ConfigError, match=r"(?s)run\.yaml with command-line options.*demo/width"):
        cfg.load_config(path, overrides={"demo": {"width": 8}})


def test_scene_names_follow_one_pattern():
    """The keys of ``scenes:`` and ``demo.name`` are both folders under results/: one rule for both."""
    schema = cfg.load_schema()
    assert schema["properties"]["scenes"]["propertyNames"]["pattern"] == cfg.SCENE_NAME_PATTERN
    assert schema["properties"]["demo"]["properties"]["name"]["pattern"] == cfg.SCENE_NAME_PATTERN

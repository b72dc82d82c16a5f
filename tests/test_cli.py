import subprocess
import sys

import pytest
import yaml

from pipeline import cli


def test_help_lists_every_verb(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in cli.VERBS:
        assert verb in out


def test_every_verb_module_has_the_stage_interface():
    import importlib

    for verb, (module_name, _) in cli.VERBS.items():
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.main), verb


def test_config_verb_writes_validated_config(tmp_path):
    out = tmp_path / "cfg.yaml"
    assert cli.main(["config", str(out), "--json", '{"demo": {"seed": 3}}']) == 0
    written = yaml.safe_load(out.read_text())
    assert written["demo"]["seed"] == 3 and written["demo"]["num_views"] == 10


def test_bad_input_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "config", "--json", '{"demo": {"seed": "x"}}'],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "selfmvs config: error:" in result.stderr and "demo/seed" in result.stderr
    assert "Traceback" not in result.stderr


# verb, arguments with the output path placed on an input (``{same}``), the input that must survive.
_OUTPUT_IS_INPUT = {
    "prepare": (["{scene_dir}", "{scene_dir}"], "scene_dir"),
    "fuse": (["{scene}", "{depth}", "{depth}"], "depth"),
    "fuse-masks": (["{scene}", "{depth}", "{out}", "--masks", "{scene}"], "scene"),
    "pseudo-labels": (["{depth}", "{masks}", "{masks}"], "masks"),
    "evaluate": (["{scene_dir}", "{scene}", "{depth}", "{ply}", "{ply}"], "ply"),
    "export-checkpoint": (["{ckpt}", "{ckpt}"], "ckpt"),
    "config": (["{cfg}", "--config", "{cfg}"], "cfg"),
}


@pytest.mark.parametrize("case", sorted(_OUTPUT_IS_INPUT))
def test_an_output_on_an_input_is_refused_before_anything_is_written(tmp_path, case):
    """``selfmvs fuse scene.h5 depth.h5 depth.h5`` would replace the depth maps by a cloud: refused, input kept."""
    args, survivor = _OUTPUT_IS_INPUT[case]
    verb = case.split("-masks")[0]
    (tmp_path / "scene").mkdir()
    paths = {"scene_dir": tmp_path / "scene", "out": tmp_path / "out.ply"}
    for name, file_name in [("scene", "scene.h5"), ("depth", "depth.h5"), ("masks", "fused_masks.h5"),
                            ("ply", "fused.ply"), ("ckpt", "model.pt"), ("cfg", "my.yaml")]:
        paths[name] = tmp_path / file_name
        paths[name].write_bytes(b"precious " + file_name.encode())
    before = {name: path.read_bytes() for name, path in paths.items() if path.is_file()}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", verb, *(a.format(**paths) for a in args)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "destroy the input" in result.stderr or "same file" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    after = {name: path.read_bytes() for name, path in paths.items() if path.is_file()}
    assert after == before, survivor

import subprocess
import sys

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

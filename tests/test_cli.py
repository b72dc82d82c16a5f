import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from pipeline.config import DemoConfig, InferConfig, PrepareConfig, describe


def test_help_lists_every_verb(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in cli.VERBS:
        assert verb in out


REPO = Path(__file__).resolve().parents[1]


def test_every_verb_has_its_help(capsys):
    for verb in cli.VERBS:
        assert cli.main([verb, "--help"]) == 0, verb
        assert f"usage: selfmvs {verb}" in capsys.readouterr().out, verb


def test_stages_and_tools_hold_no_command_line():
    """One argparse tree: the stage and tool modules are functions only."""
    paths = sorted([*(REPO / "pipeline" / "stages").glob("*.py"), *(REPO / "pipeline" / "tools").glob("*.py")])
    assert len(paths) > 10
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert "argparse" not in text and "def add_arguments" not in text and "def main(" not in text, path.name


def test_stage_modules_stay_small():
    paths = sorted((REPO / "pipeline" / "stages").glob("*.py"))
    assert len(paths) > 5
    for path in paths:
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 150, path.name


def test_the_command_line_imports_no_heavy_library():
    """``selfmvs --help`` builds the whole tree (every stage and tool module) without torch and co."""
    code = ("import sys; from pipeline import cli; cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'scipy', 'h5py', 'numpy', 'matplotlib', 'PIL', 'pycolmap') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def _help(capsys, monkeypatch, verb: str) -> str:
    monkeypatch.setenv("COLUMNS", "10000")  # one line per option: no wrapping inside the description
    assert cli.main([verb, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("verb, flag, cls, path, default", [
    ("infer", "--num-sources", InferConfig, "infer.num_sources", "6"),
    ("infer", "--max-size", InferConfig, "infer.max_size", "null"),
    ("infer", "--flip-average", InferConfig, "infer.flip_average", "true"),
    ("infer", "--cuda-graph", InferConfig, "infer.cuda_graph", "true"),
    ("prepare", "--max-image-size", PrepareConfig, "prepare.max_image_size", "800"),
    ("render-scene", "--num-views", DemoConfig, "demo.num_views", "10"),
    ("render-scene", "--distortion", DemoConfig, "demo.distortion", "false"),
])
def test_help_of_a_config_flag_is_the_option_declaration(capsys, monkeypatch, verb, flag, cls, path, default):
    text = _help(capsys, monkeypatch, verb)
    description = " ".join(describe(cls, path.split(".")[-1]).split())
    entry = text[text.index(flag, text.index("options:")):]  # the flag's entry, not the usage line
    assert entry[len(flag):].lstrip(" ,").startswith((description[:20], flag.upper()[2:].replace("-", "_"), "--no-"))
    assert f"{description} (config: {path}; default: {default})" in entry
    # the default shown is the dataclass's own
    assert default == cli._show(getattr(cls(), path.split(".")[-1]))


def test_plane_fill_flag_is_described_by_its_section(capsys, monkeypatch):
    text = _help(capsys, monkeypatch, "infer")
    description = " ".join(describe(InferConfig, "plane_fill").split())
    assert f"{description} (config: infer.plane_fill.enabled; default: true)" in text


def test_import_mvsnet_names_the_pixel_centres_the_format_knows():
    from pipeline.formats.mvsnet import PIXEL_CENTRES
    from pipeline.tools.mvsnet import PIXEL_CENTRE_NAMES

    assert sorted(PIXEL_CENTRE_NAMES) == sorted(PIXEL_CENTRES)


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


# ------------------------------------------------------------------ the command lines of rules/*.smk


def _record(monkeypatch, module, name):
    calls = []
    monkeypatch.setattr(module, name, lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


def _write_config(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_rules_call_only_verbs_that_exist_and_are_tested_here():
    shell_verbs = set()
    for path in sorted((REPO / "rules").glob("*.smk")):
        text = path.read_text(encoding="utf-8")
        shell_verbs |= set(re.findall(r"\{params\.selfmvs(?::q)?\} ([a-z-]+)", text))
    assert shell_verbs and shell_verbs <= set(cli.VERBS)
    assert shell_verbs <= _RULE_LINES_TESTED, shell_verbs - _RULE_LINES_TESTED


_RULE_LINES_TESTED = {"config", "render-scene", "sfm", "prepare", "train", "infer", "fuse", "pseudo-labels",
                      "evaluate", "report"}


def test_rule_command_lines_reach_their_stage(tmp_path, monkeypatch):
    """Each verb as the rules write it: positionals, flags and defaults arrive at the stage function."""
    from pipeline.stages import evaluate, fuse, infer, labels, prepare, render, report, sfm, train
    from pipeline.tools import config as config_tool

    cfg = _write_config(tmp_path, "demo: {seed: 1}\ninfer: {num_sources: 3}\nfuse: {min_consistent_views: 2}\n"
                        "evaluate: {seed: 4}\nreport: {dpi: 50}\nprepare: {max_image_size: 320}\n"
                        "train: {steps: 7}\n")

    calls = _record(monkeypatch, config_tool, "run_config")
    assert cli.main(["config", "results/s/config.yaml", "--json", '{"demo": {"seed": 3}}']) == 0
    assert calls == [(("results/s/config.yaml",), {"config_path": None, "json_text": '{"demo": {"seed": 3}}'})]

    calls = _record(monkeypatch, render, "run_render")
    assert cli.main(["render-scene", "results/demo/scene", "--seed", "5", "--num-views", "12", "--width", "64",
                     "--height", "48", "--distortion"]) == 0
    (out, config), kwargs = calls.pop()
    assert out == Path("results/demo/scene") and kwargs == {"varied": False, "family": "object"}
    assert config == DemoConfig(seed=5, num_views=12, width=64, height=48, distortion=True)
    assert cli.main(["render-scene", "s", "--seed", "9", "--varied", "--num-views", "8", "--width", "64",
                     "--height", "48"]) == 0
    (_, config), kwargs = calls.pop()
    assert kwargs == {"varied": True, "family": "object"} and config == DemoConfig(seed=9, num_views=8, width=64, height=48)

    calls = _record(monkeypatch, sfm, "run_sfm")
    assert cli.main(["sfm", "photos", "results/p/colmap", "--threads", "4"]) == 0
    assert calls == [(("photos", "results/p/colmap"), {"single_camera": True, "max_image_size": 1600,
                                                         "num_threads": 4})]

    calls = _record(monkeypatch, prepare, "run_prepare")
    assert cli.main(["prepare", "scene", "scene.h5", "--config", cfg]) == 0
    assert cli.main(["prepare", "scene", "scene.h5"]) == 0
    assert calls[0][0][:2] == (Path("scene"), Path("scene.h5")) and calls[0][0][2].max_image_size == 320
    assert calls[1][0][2].max_image_size == PrepareConfig().max_image_size

    calls = _record(monkeypatch, train, "run_train")
    monkeypatch.setenv("RANK", "1")  # not the main process: nothing printed
    assert cli.main(["train", "--config", cfg, "--finetune", "s.h5", "--init", "base.pt", "--labels", "l.h5",
                     "--out", "ft"]) == 0
    assert cli.main(["train", "--config", cfg, "--scenes", "a.h5", "b.h5", "--out", "base", "--resume"]) == 0
    assert cli.main(["train", "--config", cfg, "--scenes", "a.h5", "b.h5", "--labels", "la.h5", "lb.h5",
                     "--init", "i.pt", "--out", "self", "--resume"]) == 0
    (config, out, scenes), kwargs = calls[0]
    assert config.steps == 7 and out == Path("ft") and scenes == []
    assert kwargs == {"finetune": Path("s.h5"), "init": Path("base.pt"), "steps": None, "resume": False,
                      "labels": [Path("l.h5")]}
    assert calls[1][0][2] == [Path("a.h5"), Path("b.h5")] and calls[1][1]["resume"] is True
    assert calls[2][1]["labels"] == [Path("la.h5"), Path("lb.h5")] and calls[2][1]["init"] == Path("i.pt")

    calls = _record(monkeypatch, infer, "run_infer")
    assert cli.main(["infer", "scene.h5", "model.pt", "depth.h5", "--config", cfg]) == 0
    (scene, checkpoint, out, config), _ = calls.pop()
    assert (scene, checkpoint, out) == (Path("scene.h5"), Path("model.pt"), Path("depth.h5"))
    assert config == InferConfig(num_sources=3)

    calls = _record(monkeypatch, fuse, "run_fuse")
    assert cli.main(["fuse", "scene.h5", "depth.h5", "fused.ply", "--masks", "m.h5", "--config", cfg]) == 0
    assert cli.main(["fuse", "scene.h5", "depth.h5", "fused.ply", "--config", cfg]) == 0
    assert calls[0][0][:3] == ("scene.h5", "depth.h5", "fused.ply") and calls[0][0][3].min_consistent_views == 2
    assert calls[0][1] == {"masks_path": "m.h5"} and calls[1][1] == {"masks_path": None}

    calls = _record(monkeypatch, labels, "run_pseudo_labels")
    assert cli.main(["pseudo-labels", "depth.h5", "masks.h5", "labels.h5", "--transfer"]) == 0
    assert cli.main(["pseudo-labels", "depth.h5", "masks.h5", "labels.h5"]) == 0
    assert calls == [(("depth.h5", "masks.h5", "labels.h5", True, 10, 2), {}),
                     (("depth.h5", "masks.h5", "labels.h5", False, 10, 2), {})]

    calls = _record(monkeypatch, evaluate, "run_evaluate")
    assert cli.main(["evaluate", "sd", "scene.h5", "depth.h5", "fused.ply", "eval.json", "--config", cfg]) == 0
    (args, _), = calls
    assert args[:5] == ("sd", "scene.h5", "depth.h5", "fused.ply", "eval.json") and args[5].seed == 4
    assert args[6] is None

    calls = _record(monkeypatch, report, "run_report")
    assert cli.main(["report", "scene.h5", "depth.h5", "fused.ply", "eval.json", "out", "--scene-dir", "sd",
                     "--training-csv", "losses.csv", "--benchmarks", "a.tsv", "b.tsv", "--title", "demo",
                     "--config", cfg]) == 0
    assert cli.main(["report", "scene.h5", "depth.h5", "fused.ply", "eval.json", "out", "--scene-dir", "sd",
                     "--benchmarks", "a.tsv", "--title", "demo", "--config", cfg]) == 0
    (args, kwargs), (_, bare) = calls
    assert args == ("scene.h5", "depth.h5", "out") and kwargs["config"].dpi == 50
    assert {k: v for k, v in kwargs.items() if k != "config"} == {
        "fused_ply": "fused.ply", "eval_json": "eval.json", "scene_dir": "sd", "training_csv": "losses.csv",
        "benchmarks": ["a.tsv", "b.tsv"], "title": "demo"}
    assert bare["training_csv"] is None and bare["benchmarks"] == ["a.tsv"]


def test_tool_command_lines_reach_their_function(monkeypatch):
    from pipeline.tools import export_checkpoint, inspect, mvsnet

    calls = _record(monkeypatch, inspect, "run_inspect")
    assert cli.main(["inspect", "depth.h5"]) == 0
    assert cli.main(["inspect", "depth.h5", "--max-views", "3"]) == 0
    assert cli.main(["inspect", "depth.h5", "--all"]) == 0
    assert [c[0] for c in calls] == [("depth.h5", 20), ("depth.h5", 3), ("depth.h5", None)]

    calls = _record(monkeypatch, export_checkpoint, "run_export_checkpoint")
    assert cli.main(["export-checkpoint", "last.pt", "ship.pt", "--note", "n", "--model", "refinement=false",
                     "--model", "loss.top_k=2"]) == 0
    assert calls == [(("last.pt", "ship.pt", "n", {"refinement": False, "loss": {"top_k": 2}}), {})]

    calls = _record(monkeypatch, mvsnet, "run_export_mvsnet")
    assert cli.main(["export-mvsnet", "scene.h5", "out"]) == 0
    assert cli.main(["export-mvsnet", "scene.h5", "out", "--image-format", "png", "--jpeg-quality", "90",
                     "--pixel-centre", "integer"]) == 0
    assert calls == [(("scene.h5", "out"), {"image_format": "jpg", "jpeg_quality": 95, "pixel_centre": "colmap"}),
                     (("scene.h5", "out"), {"image_format": "png", "jpeg_quality": 90, "pixel_centre": "integer"})]

    calls = _record(monkeypatch, mvsnet, "run_import_mvsnet")
    assert cli.main(["import-mvsnet", "in", "scene.h5"]) == 0
    assert cli.main(["import-mvsnet", "in", "scene.h5", "--num-depth", "128", "--intrinsics-scale", "4",
                     "--pixel-centre", "colmap"]) == 0
    assert calls == [(("in", "scene.h5"), {"num_depth": None, "intrinsics_scale": 1.0, "pixel_centre": None}),
                     (("in", "scene.h5"), {"num_depth": 128, "intrinsics_scale": 4.0, "pixel_centre": "colmap"})]


# ------------------------------------------------------------------ flags go through the config's validation


def test_an_infer_flag_out_of_range_is_refused_naming_the_option(tmp_path, capsys):
    out = tmp_path / "depth.h5"
    code = cli.main(["infer", str(tmp_path / "scene.h5"), str(tmp_path / "model.pt"), str(out), "--num-sources", "0"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("selfmvs infer: error:")
    assert "command-line options" in err and "infer/num_sources" in err, err
    assert "--num-sources sets infer.num_sources = 0" in err
    assert not out.exists()


def test_a_flag_is_checked_with_the_config_file_it_overrides(tmp_path, capsys):
    cfg = _write_config(tmp_path, "infer: {num_sources: 3}\n")
    code = cli.main(["infer", "scene.h5", "model.pt", str(tmp_path / "d.h5"), "--config", cfg, "--max-size", "8"])
    err = capsys.readouterr().err
    assert code == 1 and f"{cfg} with command-line options" in err and "infer/max_size" in err, err


def test_infer_flags_are_written_over_the_config_file(tmp_path, monkeypatch):
    from pipeline.stages import infer

    cfg = _write_config(tmp_path, "infer:\n  num_sources: 3\n  flip_average: false\n  model: {refinement: false}\n"
                        "  plane_fill: {min_area: 99}\n")
    calls = _record(monkeypatch, infer, "run_infer")
    assert cli.main(["infer", "s.h5", "m.pt", "d.h5", "--config", cfg, "--num-sources", "5", "--no-plane-fill",
                     "--device", "cpu", "--max-size", "640", "--model", "iterations=[1,4,1]"]) == 0
    config = calls[0][0][3]
    assert (config.num_sources, config.flip_average, config.device, config.max_size) == (5, False, "cpu", 640)
    assert config.plane_fill.enabled is False and config.plane_fill.min_area == 99
    assert config.model == {"refinement": False, "iterations": [1, 4, 1]}
    assert cli.main(["infer", "s.h5", "m.pt", "d.h5", "--config", cfg, "--flip-average"]) == 0
    assert calls[1][0][3].flip_average is True and calls[1][0][3].num_sources == 3


def test_a_render_flag_out_of_range_is_refused(tmp_path, capsys):
    assert cli.main(["render-scene", str(tmp_path / "s"), "--num-views", "1"]) == 1
    assert "demo/num_views" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_malformed_assignment_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "infer", "s.h5", "m.pt", str(tmp_path / "d.h5"), "--model", "iterations"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "selfmvs infer: error: --model: expected KEY=VALUE, got 'iterations'"

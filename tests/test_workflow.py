"""The workflow as users run it: lint, the SLURM profile, and a real run through every rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def snakemake(*args, cwd=REPO, timeout=900):
    result = subprocess.run(
        [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )
    return result


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Lints for" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]


def test_slurm_profile_dry_run_resolves_resources(tmp_path):
    """The README's cluster command: the profile parses, GPU jobs ask for a GPU, photos-only scenes get sfm."""
    from pipeline.synth import render_scene

    scene = render_scene(tmp_path / "statue", seed=5, num_views=3, width=48, height=40)
    photos = tmp_path / "garden"
    photos.mkdir()
    (photos / "images").symlink_to(scene / "images", target_is_directory=True)
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"scenes": {"statue": str(scene), "garden": str(photos)},
                                                      "train": {"finetune": {"enabled": True}}}))
    result = snakemake(
        "--workflow-profile", str(REPO / "profiles" / "slurm"), "-n", "--configfile", str(tmp_path / "my.yaml"),
        "--directory", str(tmp_path / "run"),
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    for rule in ("sfm", "prepare", "finetune_source_infer", "finetune_source_fuse", "finetune_labels", "finetune",
                 "infer", "fuse", "evaluate", "report"):
        assert f"rule {rule}:" in out, rule
    # Exactly one registration: only the photos-only scene needs it.
    assert out.count("rule sfm:") == 1 and "results/garden/sfm" in out
    # The GPU stages carry the profile's GPU request.
    for rule in ("infer", "finetune_source_infer", "finetune"):
        block = out[out.index(f"rule {rule}:"):][:1500]
        assert "gpu=1" in block and "slurm_partition=gpu" in block, block
    # Memory, CPUs and run time come from the SLURM profile (the rules carry only `threads:` defaults).
    block = out[out.index("rule infer:"):][:1500]
    assert "mem_mb=8000" in block and "runtime=120" in block, block
    block = out[out.index("rule sfm:"):][:1500]
    assert "mem_mb=16000" in block and "cpus_per_task=8" in block, block


def test_training_scenes_are_prepared_with_the_runs_prepare_section(tmp_path):
    """training_prepare, like prepare, reads the run's config snapshot (its `prepare:` section)."""
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"training_data": {"seeds": [1000]},
                                                         "prepare": {"max_image_size": 320}}))
    result = snakemake("train_base", "-n", "-p", "--configfile", str(tmp_path / "train.yaml"),
                       "--directory", str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    block = out[out.index("rule training_prepare:"):][:1500]
    command = next(line for line in block.splitlines() if " prepare " in line)
    assert "--config results/_training/config.yaml" in command, command
    assert "rule training_config:" in out  # the snapshot is made for the training run


def test_indoor_self_training_dry_run_plans_both_families(tmp_path):
    """config/train_indoor.yaml: every training seed is rendered (rooms with --family indoor at their
    size), prepared and labelled, and train_self reads all of them; no held-out room is planned."""
    import re

    from pipeline.synth.indoor import HELDOUT_SEEDS

    config = yaml.safe_load((REPO / "config" / "train_indoor.yaml").read_text())
    data = config["training_data"]
    assert data["indoor_seeds"] and data["seeds"]
    # init is relative to the repository; the dry run works in tmp_path
    (tmp_path / "init.yaml").write_text(yaml.safe_dump(
        {"self_training": {"init": str(REPO / config["self_training"]["init"])}}))
    result = snakemake("train_self", "-n", "-p", "--configfile", str(REPO / "config" / "train_indoor.yaml"),
                       str(tmp_path / "init.yaml"), "--directory", str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    renders = {int(m.group(1)): m.group(0) for m in re.finditer(r"render-scene \S+ --seed (\d+) .*", out)}
    assert set(renders) == set(data["seeds"]) | set(data["indoor_seeds"]), sorted(renders)
    size = f"--num-views {data['indoor_num_views']} --width {data['indoor_width']} --height {data['indoor_height']}"
    for seed, command in renders.items():
        indoor = seed in data["indoor_seeds"]
        assert ("--family indoor" in command) == indoor and "--varied" in command, command
        assert (size in command) == indoor, command
    train = out[out.index("rule train_self:"):][:6000]
    for seed in renders:
        assert f"results/_training/h5/{seed}.h5" in train and f"results/_self_training/labels/{seed}.h5" in train, seed
    for seed in HELDOUT_SEEDS:
        assert not re.search(rf"\b{seed}\b", out.split("Building DAG of jobs")[-1]), f"held-out room {seed} planned"


@pytest.mark.parametrize("training_data, message", [
    ({"indoor_seeds": [3100, 3001]}, "[3001] are held-out rooms"),
    ({"seeds": [1000, 3100], "indoor_seeds": [3100]}, "share [3100]"),
])
def test_bad_indoor_training_seeds_fail_the_dry_run(tmp_path, training_data, message):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"training_data": training_data}))
    result = snakemake("train_base", "-n", "--configfile", str(tmp_path / "bad.yaml"), "--directory", str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode != 0 and message in out, out[-3000:]
    assert "render-scene" not in out  # no job was planned


def test_photo_training_scenes_are_prepared_from_their_own_folder(tmp_path):
    """A scene of training_data.photo_scenes is prepared from its folder as it is (no render), then
    labelled and trained on with the rendered ones."""
    photos = tmp_path / "my photos"
    (photos / "images").mkdir(parents=True)
    (photos / "sparse" / "0").mkdir(parents=True)
    init = tmp_path / "init.pt"
    init.write_bytes(b"weights")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({
        "training_data": {"seeds": [1000], "photo_scenes": {"kitchen": str(photos)}},
        "self_training": {"init": str(init)}}))
    result = snakemake("train_self", "-n", "-p", "--configfile", str(tmp_path / "train.yaml"), "--directory", str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    renders = [line for line in out.splitlines() if "render-scene" in line]
    assert len(renders) == 1 and "--seed 1000" in renders[0], renders
    prepares = [line for line in out.splitlines() if " prepare " in line and "kitchen.h5" in line]
    assert len(prepares) == 1 and f"'{photos}'" in prepares[0], prepares
    train = out[out.index("rule train_self:"):][:6000]
    assert "results/_self_training/labels/kitchen.h5" in train and "results/_training/h5/kitchen.h5" in train


@pytest.mark.parametrize("photo_scenes, message", [
    ({"kitchen": "NOFOLDER"}, "training_data.photo_scenes.kitchen: NOFOLDER has no COLMAP model"),
    ({"24": "FOLDER"}, "photo_scenes"),
])
def test_bad_photo_training_scenes_fail_the_dry_run(tmp_path, photo_scenes, message):
    """A photo scene without a COLMAP model, or named like a seed, stops the run before any job."""
    (tmp_path / "images").mkdir()
    (tmp_path / "sparse").mkdir()
    scenes = {name: str(tmp_path / "missing") if folder == "NOFOLDER" else str(tmp_path)
              for name, folder in photo_scenes.items()}
    message = message.replace("NOFOLDER", str(tmp_path / "missing"))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"training_data": {"seeds": [1000], "photo_scenes": scenes}}))
    result = snakemake("train_base", "-n", "--configfile", str(tmp_path / "bad.yaml"), "--directory", str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode != 0 and message in out, out[-3000:]
    assert "render-scene" not in out


def test_default_training_data_has_no_indoor_rooms(tmp_path):
    """Without indoor_seeds, train_base renders the object scenes as before (no indoor room)."""
    result = snakemake("train_base", "-n", "-p", "--configfile", str(REPO / "config" / "config.yaml"),
                       "--directory", str(tmp_path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "--family indoor" not in out and out.count("--family object --num-views 12 --width 400 --height 300") == 14


def test_each_cli_verb_is_written_once_in_the_rules():
    """The repeated stages are `use rule ... with:` of one rule, not copies of its shell command."""
    import re

    text = "".join(path.read_text() for path in sorted((REPO / "rules").glob("*.smk")))
    for verb in ("infer", "fuse", "prepare", "pseudo-labels", "config", "render-scene"):
        found = re.findall(rf"\{{params\.selfmvs:q\}} {verb} ", text)
        assert len(found) == (2 if verb in ("fuse", "render-scene") else 1), (verb, len(found))


def test_bad_config_fails_before_any_job(tmp_path):
    (tmp_path / "bad.yaml").write_text("demo: {num_views: 1}\n")
    result = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"), "--directory", str(tmp_path))
    assert result.returncode != 0
    assert "num_views" in result.stdout + result.stderr


BAD_SCENE_NAMES = ["..", ".", ".hidden", "_training", "a/b", "a b", "x$(id)", ""]


@pytest.mark.parametrize("name", BAD_SCENE_NAMES)
def test_bad_scene_name_is_refused_by_selfmvs_config(tmp_path, name):
    """A scene name is a folder under results/: `..` would plan writes to results/../scene.h5."""
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"scenes": {name: str(tmp_path)}}))
    result = subprocess.run([str(Path(sys.executable).parent / "selfmvs"), "config", "--config", str(tmp_path / "bad.yaml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and str(tmp_path / "bad.yaml") in lines[0], result.stderr
    assert f"at scenes: key {name!r} is not an allowed name" in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["..", "_training"])
def test_bad_scene_name_fails_the_dry_run_before_any_job(tmp_path, name):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"scenes": {name: str(tmp_path)}}))
    result = snakemake("-n", "--configfile", str(tmp_path / "bad.yaml"), "--directory", str(tmp_path / "run"))
    out = result.stdout + result.stderr
    assert result.returncode != 0 and repr(name) in out and "does not match" in out, out[-3000:]
    assert "scene.h5" not in out  # no job was planned


@pytest.mark.parametrize("name", ["statue", "Statue_2", "dtu.scan9", "a-b"])
def test_good_scene_names_validate(tmp_path, name):
    from pipeline.config import validate_config

    assert name in validate_config({"scenes": {name: str(tmp_path)}})["scenes"]


def test_scene_wildcard_matches_exactly_the_schema_names():
    """rules/common.smk's constraint and the schema's propertyNames say the same thing."""
    import re

    from pipeline.config import load_schema

    schema_pattern = load_schema()["properties"]["scenes"]["propertyNames"]["pattern"]
    common = (REPO / "rules" / "common.smk").read_text()
    wildcard = re.search(r'scene=r"([^"]+)"', common).group(1)
    for name in [*BAD_SCENE_NAMES, "statue", "Statue_2", "dtu.scan9", "a-b", "a..b", "-x", "9"]:
        assert bool(re.fullmatch(wildcard, name)) == bool(re.search(schema_pattern, name)), name


@pytest.mark.slow
def test_real_workflow_runs_every_rule(tmp_path):
    """render -> prepare -> finetune -> infer -> fuse -> evaluate -> report on a tiny demo scene."""
    config = {
        "demo": {"name": "tiny", "seed": 7, "num_views": 4, "width": 96, "height": 72},
        "train": {"batch_size": 1, "width": 96, "height": 72, "progress": False,
                  "finetune": {"enabled": True, "steps": 2}},
        "fuse": {"min_consistent_views": 1},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("--cores", "2", "--configfile", str(tmp_path / "tiny.yaml"), "--directory", str(tmp_path))
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    results = tmp_path / "results" / "tiny"

    with h5py.File(results / "depth.h5", "r") as depth:
        assert len(depth["views"]) == 4
        for group in depth["views"].values():
            assert group["depth"].shape == (72, 96) and group["confidence"].shape == (72, 96)
            assert group["depth"][()].max() > 0
    from pipeline.formats.ply import read_ply

    cloud = read_ply(results / "fused.ply")
    assert len(cloud.xyz) > 0
    metrics = json.loads((results / "eval.json").read_text())["metrics"]
    assert any(key.startswith("fscore@") for key in metrics)
    assert (results / "report" / "index.html").stat().st_size > 0
    assert len(list((results / "report").glob("*.png"))) >= 3
    assert (results / "finetune" / "last.pt").is_file()
    # fine-tuning trained on the scene's own labels (the base weights' fused depth, carried between views)
    from pipeline.formats.depth_file import read_depth_attrs

    labels = read_depth_attrs(results / "finetune_labels" / "labels.h5")
    assert labels["kind"] == "selfmvs.depth_labels" and labels["transfer"] and labels["labelled_fraction"] > 0
    assert not (results / "finetune_labels" / "depth.h5").exists()  # temporary: gone once the labels exist
    with open(results / "finetune" / "losses.csv") as log:
        header = log.readline().strip().split(",")
    assert header[2:4] == ["loss", "pseudo_label"] and "photometric" not in header
    for stage in ("prepare", "finetune_source_infer", "finetune_source_fuse", "finetune_labels", "finetune", "infer",
                  "fuse", "evaluate", "report"):
        assert (tmp_path / "benchmarks" / "tiny" / f"{stage}.tsv").is_file(), stage
        assert (tmp_path / "logs" / "tiny" / f"{stage}.log").is_file(), stage

    # Resumable and idempotent: a second run finds nothing to do.
    again = snakemake("-n", "--cores", "2", "--configfile", str(tmp_path / "tiny.yaml"), "--directory", str(tmp_path))
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_self_training_rules_run(tmp_path):
    """train_self: the init weights label a (tiny) training scene through infer + fuse + pseudo-labels, then train on them."""
    shipped = REPO / "pipeline" / "checkpoints" / "selfmvs_synthetic.pt"
    config = yaml.safe_load((REPO / "config" / "train_self.yaml").read_text())
    config["self_training"]["init"] = str(shipped)
    config["training_data"] = {"seeds": [1000], "num_views": 3, "width": 96, "height": 72}
    config["train"].update({"steps": 2, "batch_size": 1, "width": 96, "height": 72, "progress": False, "num_threads": 1})
    config["fuse"] = {"min_consistent_views": 1}
    (tmp_path / "self.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("train_self", "--cores", "2", "--configfile", str(tmp_path / "self.yaml"), "--directory", str(tmp_path))
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    from pipeline.formats.depth_file import read_depth_attrs, read_depth_file
    from pipeline.model import load_checkpoint

    labels = tmp_path / "results" / "_self_training" / "labels" / "1000.h5"
    assert read_depth_attrs(labels)["kind"] == "selfmvs.depth_labels"
    assert all((v.depth > 0).any() for v in read_depth_file(labels).values())
    _, extra = load_checkpoint(tmp_path / "results" / "_self_training" / "final.pt")
    assert extra["step"] == 2 and extra["labels"] == ["results/_self_training/labels/1000.h5"]
    rows = (tmp_path / "results" / "_self_training" / "checkpoint" / "losses.csv").read_text().splitlines()
    assert rows[0].split(",")[3] == "pseudo_label" and len(rows) == 3
    assert not (tmp_path / "results" / "_self_training" / "fused" / "1000.ply").exists()  # temp(): removed


@pytest.mark.slow
@pytest.mark.parametrize("folder_name", ["it's $(touch PWNED)", "x $(touch PWNED)"])
def test_scene_folder_with_shell_characters_runs_quoted(tmp_path, folder_name):
    """Every path reaches its command as one word: a folder with a space, a quote and `$(...)`
    is read as named (no "unrecognized arguments"), and the `$(...)` in it never runs (the second
    name, without the quote that breaks an unquoted command first, would run it)."""
    from pipeline.synth import render_scene

    folder = tmp_path / "my scenes" / folder_name
    render_scene(folder, seed=7, num_views=3, width=64, height=48)
    config = {
        "scenes": {"odd.scene-1": str(folder)},
        "train": {"finetune": {"enabled": False}},
        "fuse": {"min_consistent_views": 1},
    }
    (tmp_path / "odd.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    result = snakemake("--cores", "2", "--configfile", str(tmp_path / "odd.yaml"), "--directory", str(run))
    out = result.stdout + result.stderr
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists(), "a path was run as a command"
    assert result.returncode == 0, out[-5000:]
    results = run / "results" / "odd.scene-1"
    for name in ("scene.h5", "depth.h5", "fused.ply", "eval.json", "report/index.html"):
        assert (results / name).is_file() and (results / name).stat().st_size > 0, name
    metrics = json.loads((results / "eval.json").read_text())["metrics"]
    assert any(key.startswith("fscore@") for key in metrics)

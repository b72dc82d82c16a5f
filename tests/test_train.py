"""The training stage on a tiny synthetic scene: reproducibility, resume, outputs, fine-tuning, DDP."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import TrainConfig, load_config, section
from pipeline.formats.scene_file import Scene, SceneView, write_scene
from pipeline.model import load_checkpoint
from pipeline.stages.train import run_train
from pipeline.training import ViewSampler, lr_multiplier

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 48, 64


def _texture(x, y):
    return np.stack(
        [
            0.5 + 0.25 * np.sin(7 * x + 3 * y) + 0.15 * np.cos(13 * y - 5 * x),
            0.5 + 0.25 * np.sin(9 * y + 1) + 0.15 * np.sin(6 * x - 11 * y),
            0.5 + 0.25 * np.cos(8 * x + 0.7) + 0.15 * np.sin(5 * x + 10 * y),
        ],
        -1,
    )


def _view(image_id: int, centre, num_views: int) -> SceneView:
    """A camera at ``centre`` looking along +z at the textured plane z = 2."""
    K = np.array([[60.0, 0, WIDTH / 2], [0, 60.0, HEIGHT / 2], [0, 0, 1]])
    pose = np.hstack([np.eye(3), -np.asarray(centre, dtype=np.float64)[:, None]])
    ys, xs = np.meshgrid(np.arange(HEIGHT) + 0.5, np.arange(WIDTH) + 0.5, indexing="ij")
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1]], -1)
    distance = 2.0 - centre[2]
    points = np.asarray(centre[:2]) + rays * distance
    image = (np.clip(_texture(points[..., 0], points[..., 1]), 0, 1) * 255).round().astype(np.uint8)
    sources = [i for i in range(1, num_views + 1) if i != image_id]
    return SceneView(
        image_id=image_id, name=f"{image_id:03d}.png", image=image, K=K, cam_from_world=pose,
        depth_range=np.array([1.5, 2.6]), num_depth=48, source_ids=np.array(sources),
        source_scores=np.linspace(1.0, 0.5, len(sources)), mask=None, point3D_ids=np.zeros(0, np.int64),
        width=WIDTH, height=HEIGHT,
    )


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory) -> Path:
    centres = [(0.0, 0.0, 0.0), (0.2, 0.0, 0.0), (-0.2, 0.05, 0.0), (0.0, 0.2, 0.05)]
    views = {i + 1: _view(i + 1, c, len(centres)) for i, c in enumerate(centres)}
    mask = np.ones((HEIGHT, WIDTH), dtype=bool)
    mask[:, WIDTH // 2 :] = False  # view 1: the right half is not valid (as after undistortion)
    views[1].mask = mask
    scene = Scene(views, np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    path = tmp_path_factory.mktemp("scene") / "scene.h5"
    write_scene(path, scene)
    return path


def tiny_config(**changes) -> TrainConfig:
    raw = {
        "steps": 4, "batch_size": 1, "num_sources": 2, "width": 32, "height": 24, "crop_scale": [0.6, 1.0],
        "checkpoint_every": 2, "keep_checkpoints": 1, "device": "cpu", "progress": False, "num_threads": 1,
        "lr_schedule": {"kind": "cosine", "warmup_steps": 1},
        "model": {"num_initial_hypotheses": 8, "num_perturbation_hypotheses": [2, 2, 4], "iterations": [1, 1, 2]},
    }
    raw.update(changes)
    return section(load_config(overrides={"train": raw}), "train", TrainConfig)


def read_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "losses.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_checkpoint(path)
    return model.state_dict()


def test_lr_multiplier():
    schedule = tiny_config(lr_schedule={"kind": "cosine", "warmup_steps": 2, "min_ratio": 0.1}).lr_schedule
    assert lr_multiplier(0, schedule, 10) == pytest.approx(0.5)
    assert lr_multiplier(2, schedule, 10) == pytest.approx(1.0)
    assert lr_multiplier(10, schedule, 10) == pytest.approx(0.1)
    step = tiny_config(lr_schedule={"kind": "step", "warmup_steps": 0, "milestones": [3, 6], "gamma": 0.5}).lr_schedule
    assert [lr_multiplier(s, step, 10) for s in (0, 3, 7)] == [1.0, 0.5, 0.25]


def test_sampler_crops_keep_intrinsics_consistent(scene_path):
    """A crop + resize must move K with the pixels: the crop's centre pixel re-projects identically."""
    from pipeline.formats.scene_file import read_scene

    scene = read_scene(scene_path)
    sampler = ViewSampler([scene], 2, (24, 32), (0.5, 0.5))
    sample = sampler.sample(0, torch.Generator().manual_seed(0))
    assert sample["images"].shape == (3, 3, 24, 32) and sample["mask"].shape == (1, 24, 32)
    # the crop is 24x32 (no resize): its left edge is where cx moved; the mask moves with it
    left = round(WIDTH / 2 - float(sample["K"][0, 0, 2]))
    expected_mask = (torch.arange(32) + left < WIDTH // 2).expand(1, 24, 32)
    assert torch.equal(sample["mask"], expected_mask)
    # the texture value at the sample's pixel equals the texture of the ray through it (plane z = 2)
    K = sample["K"][0].numpy()
    y, x = 11.5, 15.5
    ray = np.linalg.inv(K) @ np.array([x, y, 1.0])
    expected = np.clip(_texture(ray[0] * 2.0, ray[1] * 2.0), 0, 1)
    got = sample["images"][0, :, 11, 15].numpy()
    np.testing.assert_allclose(got, expected, atol=0.08)
    first = sampler.item_indices(0, 2, 0, 1, seed=0)
    assert first == sampler.item_indices(0, 2, 0, 1, seed=0)
    epoch = [sampler.item_indices(s, 1, 0, 1, seed=0)[0] for s in range(len(sampler))]
    assert sorted(epoch) == list(range(len(sampler)))  # each view once per epoch


def test_reproducible_resume_and_outputs(scene_path, tmp_path):
    """Same seed -> same loss curve and weights; 4 steps straight = 2 steps + resume for 2 more."""
    config = tiny_config(steps=4, checkpoint_every=2, keep_checkpoints=1, progress=True)
    straight = run_train(config, tmp_path / "straight", [scene_path])
    run_train(config, tmp_path / "split", [scene_path], stop_at=2, resume=True)  # nothing yet: starts at 0
    assert load_checkpoint(tmp_path / "split" / "last.pt")[1]["step"] == 2
    assert [r["step"] for r in read_rows(tmp_path / "split")] == ["1", "2"]
    resumed = run_train(config, tmp_path / "split", [scene_path], resume=True)
    expected, got = weights(straight), weights(resumed)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    straight_rows, split_rows = read_rows(tmp_path / "straight"), read_rows(tmp_path / "split")
    assert [r["step"] for r in split_rows] == ["1", "2", "3", "4"]
    for column in ("loss", "lr", "photometric", "ssim", "smoothness"):
        assert [r[column] for r in straight_rows] == [r[column] for r in split_rows], column
    assert all(math.isfinite(float(r["photometric"])) and float(r["photometric"]) > 0 for r in straight_rows)
    assert len({r["lr"] for r in straight_rows}) > 1  # the schedule moved
    # outputs: numbered checkpoints (every 2 steps, the last 1 kept), plot, no temporary files left
    assert sorted(p.name for p in (tmp_path / "straight").glob("step_*.pt")) == ["step_0000004.pt"]
    assert (tmp_path / "straight" / "losses.png").stat().st_size > 1000
    assert not list((tmp_path / "straight").glob(".*"))
    _, extra = load_checkpoint(straight)
    assert extra["step"] == 4 and extra["mode"] == "train"


def test_finetune_freezes_batchnorm_and_respects_budget(scene_path, tmp_path):
    init = run_train(tiny_config(steps=1), tmp_path / "init", [scene_path])
    config = tiny_config(finetune={"steps": 1, "learning_rate": 1e-3, "full_resolution": True, "objective": "photometric"},
                         lr_schedule={"kind": "cosine", "warmup_steps": 100})
    tuned = run_train(config, tmp_path / "tuned", finetune=scene_path, init=init)
    before, after = weights(init), weights(tuned)
    running = [k for k in before if k.endswith("running_mean") or k.endswith("running_var")]
    assert running and all(torch.equal(before[k], after[k]) for k in running)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert load_checkpoint(tuned)[1]["mode"] == "finetune"
    # Fine-tuning runs at its own constant rate from the first step (no training warm-up).
    assert float(read_rows(tmp_path / "tuned")[0]["lr"]) == pytest.approx(1e-3)
    # The time limit counts from the end of the first step (which loads the kernels): the run stops after step 2.
    budget = tiny_config(finetune={"steps": 50, "max_seconds": 1e-6, "objective": "photometric"})
    stopped = run_train(budget, tmp_path / "budget", finetune=scene_path, init=init)
    assert load_checkpoint(stopped)[1]["step"] == 2
    with pytest.raises(ValueError, match="--init"):
        run_train(config, tmp_path / "x", finetune=scene_path)


def test_resume_refuses_a_run_of_another_init(scene_path, tmp_path):
    """A rule's folder outlives a change of its --init: resuming it must not hand back the old run."""
    first = run_train(tiny_config(steps=1), tmp_path / "a", [scene_path])
    other = run_train(tiny_config(steps=1, seed=1), tmp_path / "b", [scene_path])
    config = tiny_config(steps=2, checkpoint_every=1)
    run_train(config, tmp_path / "run", [scene_path], init=first, stop_at=1, resume=True)
    with pytest.raises(ValueError, match="other weights than --init"):
        run_train(config, tmp_path / "run", [scene_path], init=other, resume=True)
    resumed = run_train(config, tmp_path / "run", [scene_path], init=first, resume=True)  # the same init: resumes
    _, extra = load_checkpoint(resumed)
    assert extra["step"] == 2 and len(extra["init_sha256"]) == 64
    with pytest.raises(FileNotFoundError, match="--init"):
        run_train(config, tmp_path / "c", [scene_path], init=tmp_path / "missing.pt")


def test_resume_refuses_other_settings_or_input_files(scene_path, tmp_path):
    """A rule's folder outlives a change of its inputs: a resume goes on only with the same settings
    and the same bytes in every scene (and label) file; steps, threads and checkpointing may change."""
    import shutil

    import h5py

    scene = tmp_path / "scene.h5"
    shutil.copyfile(scene_path, scene)
    config = tiny_config(steps=2, checkpoint_every=1)
    run_train(config, tmp_path / "run", [scene], stop_at=1, resume=True)
    with pytest.raises(ValueError, match=r"other train settings.*remove .*run to start afresh"):
        run_train(tiny_config(steps=2, checkpoint_every=1, learning_rate=0.01), tmp_path / "run", [scene], resume=True)
    with pytest.raises(ValueError, match="trained on 1 scene file"):
        run_train(config, tmp_path / "run", [scene, scene], resume=True)
    with h5py.File(scene, "a") as handle:  # still a valid scene, other bytes
        handle.attrs["note"] = "re-prepared"
    with pytest.raises(ValueError, match=f"other content of scene file {scene}"):
        run_train(config, tmp_path / "run", [scene], resume=True)
    shutil.copyfile(scene_path, scene)
    longer = tiny_config(steps=3, checkpoint_every=2, keep_checkpoints=2, num_threads=1, log_every=2)
    _, extra = load_checkpoint(run_train(longer, tmp_path / "run", [scene], resume=True))
    assert extra["step"] == 3 and len(extra["inputs"]["scenes"]) == 1
    # a checkpoint without the digests cannot be shown to continue this run
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["extra"]["inputs"]
    torch.save(state, last)
    with pytest.raises(ValueError, match="records no digests"):
        run_train(longer, tmp_path / "run", [scene], resume=True)


@pytest.mark.parametrize("recipe", ["jdacs", "jdacs_ms", "mvs2", "m3vsnet"])
def test_other_recipes_train(recipe, scene_path, tmp_path, caplog):
    config = tiny_config(steps=1, batch_size=2, loss={"recipe": recipe})  # batch 2: per-element poses
    with caplog.at_level("WARNING"):
        run_train(config, tmp_path / recipe, [scene_path])
    row = read_rows(tmp_path / recipe)[0]
    extra = {"jdacs": "augmentation", "jdacs_ms": "augmentation", "mvs2": "cross_view", "m3vsnet": "depth_normal"}[recipe]
    assert math.isfinite(float(row[extra])) and float(row["loss"]) > 0
    if recipe.startswith("jdacs"):
        assert "cosegmentation" not in row and "co-segmentation consistency is OFF" in caplog.text
    if recipe == "m3vsnet":  # no VGG16 weights: the network's own frozen features
        assert math.isfinite(float(row["feature"])) and "is OFF" not in caplog.text


def test_bad_arguments(scene_path, tmp_path):
    config = tiny_config()
    with pytest.raises(ValueError, match="no scenes"):
        run_train(config, tmp_path / "a", [])
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        run_train(config, tmp_path / "a", [tmp_path / "missing.h5"])
    with pytest.raises(ValueError, match="train.model"):
        run_train(tiny_config(model={"iterations": [1, 2]}), tmp_path / "a", [scene_path])


def test_cli_torchrun_two_processes(scene_path, tmp_path):
    """DistributedDataParallel on CPU (gloo), two processes, two steps, through the CLI."""
    config = dataclasses.asdict(tiny_config(steps=2))
    config["num_threads"] = 1
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({"train": _plain(config)}))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "pipeline", "train",
         "--config", str(config_path), "--out", str(tmp_path / "ddp"), "--scenes", str(scene_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, extra = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert extra["step"] == 2 and extra["world_size"] == 2
    assert len(read_rows(tmp_path / "ddp")) == 2


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def test_cli_reports_bad_input_as_one_line(scene_path, tmp_path, capsys):
    from pipeline.cli import main

    code = main(["train", "--out", str(tmp_path / "x"), "--finetune", str(scene_path), "--scenes", str(scene_path)])
    assert code == 1 and "either --scenes or --finetune" in capsys.readouterr().err
    code = main(["train", "--out", str(tmp_path / "x"), "--finetune", str(scene_path)])
    assert code == 1 and "--init" in capsys.readouterr().err


def test_jdacs_with_cosegmentation_weights(scene_path, tmp_path):
    """With a (here random) torchvision-format VGG16 file the co-segmentation term is on."""
    from pipeline.losses import VGG16Features

    torch.manual_seed(0)
    vgg = VGG16Features("relu2_2")
    weights_path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in vgg.features.state_dict().items()}, weights_path)
    config = tiny_config(steps=1, vgg16_weights=str(weights_path), loss={"recipe": "jdacs", "cosegmentation": {"layer": "relu2_2"}})
    run_train(config, tmp_path / "out", [scene_path])
    row = read_rows(tmp_path / "out")[0]
    assert math.isfinite(float(row["cosegmentation"])) and float(row["cosegmentation"]) > 0


# ------------------------------------------------------------------------------------------------
# self-training on pseudo labels


def _position_labels(scene_path: Path, path: Path, size=(HEIGHT, WIDTH)) -> Path:
    """A label file whose value encodes the pixel: 1 + row + column / 1000 (0 on the first row)."""
    from pipeline.formats.depth_file import DepthView, write_depth_file
    from pipeline.formats.scene_file import read_scene

    rows, cols = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    values = (1.0 + rows + cols / 1000.0).astype(np.float32)
    values[0] = 0.0
    views = [DepthView(i, v.name, values, None, v.K, v.cam_from_world) for i, v in read_scene(scene_path).views.items()]
    write_depth_file(path, views, {"kind": "selfmvs.depth_labels"})
    return path


def test_sampler_crops_labels_with_the_reference(scene_path, tmp_path):
    from pipeline.formats.scene_file import read_scene
    from pipeline.training.data import read_labels as _read_labels

    scene = read_scene(scene_path)
    labels = _read_labels(_position_labels(scene_path, tmp_path / "labels.h5"), scene, scene_path)
    sampler = ViewSampler([scene], 2, (24, 32), (0.5, 0.5), labels=[labels])
    for item in range(len(sampler)):
        sample = sampler.sample(item, torch.Generator().manual_seed(item))
        left = round(WIDTH / 2 - float(sample["K"][0, 0, 2]))
        top = round(HEIGHT / 2 - float(sample["K"][0, 1, 2]))
        expected = labels[sampler.items[item][1]][top : top + 24, left : left + 32]
        assert sample["label"].shape == (1, 24, 32) and torch.equal(sample["label"][0], expected)
    resized = ViewSampler([scene], 2, (12, 16), (1.0, 1.0), labels=[labels]).sample(0, torch.Generator().manual_seed(0))
    # nearest neighbour: every value is a label value (no blend of two pixels' depths)
    assert set(resized["label"].flatten().tolist()) <= set(labels[1].flatten().tolist())
    plain = ViewSampler([scene], 2, (24, 32), (0.5, 0.5), labels=[None]).sample(0, torch.Generator().manual_seed(0))
    assert torch.equal(plain["label"], torch.zeros(1, 24, 32))
    assert "label" not in ViewSampler([scene], 2, (24, 32)).sample(0, torch.Generator().manual_seed(0))


def test_sampler_mirror_flips_the_sample_into_a_consistent_scene(scene_path, tmp_path):
    """mirror_probability 1: the sample drawn with the same generator as without mirroring, flipped
    left-right, with cameras that see the reflected world point at the flipped pixels of every view."""
    from pipeline.formats.scene_file import read_scene
    from pipeline.training.data import read_labels as _read_labels

    scene = read_scene(scene_path)
    labels = _read_labels(_position_labels(scene_path, tmp_path / "labels.h5"), scene, scene_path)
    plain = ViewSampler([scene], 2, (24, 32), (0.5, 0.5), labels=[labels])
    mirrored = ViewSampler([scene], 2, (24, 32), (0.5, 0.5), labels=[labels], mirror_probability=1.0)
    for item in range(len(plain)):
        a = plain.sample(item, torch.Generator().manual_seed(item))
        b = mirrored.sample(item, torch.Generator().manual_seed(item))
        for key in ("images", "mask", "label"):
            assert torch.equal(b[key], a[key].flip(-1)), key
        assert torch.equal(b["depth_range"], a["depth_range"])
        point = torch.tensor([0.3, -0.2, 0.4, 1.0], dtype=torch.float64)
        reflected = point * torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
        for view in range(a["K"].shape[0]):
            pa = a["K"][view].double() @ (a["cam_from_world"][view].double() @ point)[:3]
            pb = b["K"][view].double() @ (b["cam_from_world"][view].double() @ reflected)[:3]
            torch.testing.assert_close(pb[2], pa[2])  # same depth
            torch.testing.assert_close(pb[0] / pb[2], 32 - pa[0] / pa[2])
            torch.testing.assert_close(pb[1] / pb[2], pa[1] / pa[2])
    # at 0.5 some samples are mirrored and some not, reproducibly
    half = ViewSampler([scene], 2, (24, 32), (0.5, 0.5), mirror_probability=0.5)
    flips = [not torch.equal(half.sample(i, torch.Generator().manual_seed(i))["images"],
                             plain.sample(i, torch.Generator().manual_seed(i))["images"]) for i in range(len(plain))]
    again = [not torch.equal(half.sample(i, torch.Generator().manual_seed(i))["images"],
                             plain.sample(i, torch.Generator().manual_seed(i))["images"]) for i in range(len(plain))]
    assert flips == again and any(flips) and not all(flips)
    with pytest.raises(ValueError, match="mirror_probability"):
        ViewSampler([scene], 2, (24, 32), mirror_probability=1.5)


def test_train_on_pseudo_labels(scene_path, tmp_path, caplog):
    """Only the pseudo-label term: it trains, is logged, and the label files are recorded."""
    from pipeline.formats.depth_file import DepthView, write_depth_file
    from pipeline.formats.scene_file import read_scene

    scene = read_scene(scene_path)
    # the true depth of the plane z = 2 (cameras look along +z), labelled on the left half only
    views = []
    for image_id, view in scene.views.items():
        depth = np.zeros((HEIGHT, WIDTH), np.float32)
        depth[:, : WIDTH // 2] = 2.0 - float(-view.cam_from_world[2, 3])
        views.append(DepthView(image_id, view.name, depth, None, view.K, view.cam_from_world))
    labels = tmp_path / "labels.h5"
    write_depth_file(labels, views, {"kind": "selfmvs.depth_labels"})
    # the default recipe (mvs2) with its every term off: the one-reference step on the labels alone
    only_labels = {"weights": {"photometric": 0, "ssim": 0, "smoothness": 0, "cross_view": 0, "pseudo_label": 1.0}}
    config = tiny_config(steps=2, loss=only_labels)
    last = run_train(config, tmp_path / "out", [scene_path], labels=[labels])
    rows = read_rows(tmp_path / "out")
    assert set(rows[0]) >= {"pseudo_label", "loss"} and "photometric" not in rows[0]
    assert all(float(r["pseudo_label"]) > 0 and float(r["loss"]) == pytest.approx(float(r["pseudo_label"])) for r in rows)
    assert load_checkpoint(last)[1]["labels"] == [str(labels)]
    # fine-tuning takes one label file with its one scene
    tuned = run_train(tiny_config(finetune={"steps": 1, "objective": "photometric"}, loss=only_labels), tmp_path / "ft",
                      finetune=scene_path, init=last, labels=[labels])
    assert float(read_rows(tmp_path / "ft")[0]["pseudo_label"]) > 0 and tuned.is_file()
    # its default objective: the labels alone, at train.finetune.label_weight, whatever train.loss says
    with caplog.at_level("INFO"):
        run_train(tiny_config(finetune={"steps": 1, "label_weight": 0.5}), tmp_path / "ft_labels", finetune=scene_path,
                  init=last, labels=[labels])
    row = read_rows(tmp_path / "ft_labels")[0]
    assert "photometric" not in row and float(row["loss"]) == pytest.approx(0.5 * float(row["pseudo_label"]))
    assert "terms {'pseudo_label': 0.5}" in caplog.text
    with pytest.raises(ValueError, match="objective is 'labels' but no label file"):
        run_train(tiny_config(finetune={"steps": 1}), tmp_path / "ft_none", finetune=scene_path, init=last)
    # a training run from trained weights can keep their BatchNorm statistics
    frozen = run_train(tiny_config(steps=1, freeze_batchnorm=True, loss=only_labels), tmp_path / "frozen", [scene_path],
                       init=last, labels=[labels])
    before, after = weights(last), weights(frozen)
    running = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert running and all(torch.equal(before[k], after[k]) for k in running)
    # labels given but the term is off: said, and not loaded
    with caplog.at_level("WARNING"):
        run_train(tiny_config(steps=1), tmp_path / "off", [scene_path], labels=[labels])
    assert "pseudo_label is 0" in caplog.text


def test_pseudo_label_bad_input(scene_path, tmp_path):
    config = tiny_config(steps=1, loss={"weights": {"pseudo_label": 1.0}})
    with pytest.raises(ValueError, match="no label files"):
        run_train(config, tmp_path / "a", [scene_path])
    with pytest.raises(ValueError, match="one per scene"):
        run_train(config, tmp_path / "a", [scene_path], labels=[scene_path, scene_path])
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        run_train(config, tmp_path / "a", [scene_path], labels=[tmp_path / "nothing.h5"])
    small = _position_labels(scene_path, tmp_path / "small.h5", size=(HEIGHT // 2, WIDTH // 2))
    with pytest.raises(ValueError, match=r"small\.h5: view 1 is 32x24.*stores it at 64x48"):
        run_train(config, tmp_path / "a", [scene_path], labels=[small])
    with pytest.raises(ValueError, match="not a readable label file"):
        run_train(config, tmp_path / "a", [scene_path], labels=[scene_path])


# ------------------------------------------------------------------------------------------------
# fine-tuning budgets: steps fixed before the run, the time limit only a loud safety stop


class SlowClock:
    """A machine ``seconds_per_call`` slower at every look at the clock."""

    def __init__(self, seconds_per_call: float):
        self.now, self.seconds_per_call = 0.0, seconds_per_call

    def __call__(self) -> float:
        self.now += self.seconds_per_call
        return self.now


def test_finetune_steps_scale_with_the_image_not_the_clock():
    from pipeline.config import FinetuneConfig
    from pipeline.training import finetune_steps

    config = FinetuneConfig()
    assert config.steps is None and config.max_seconds >= 600  # the limit is a safety stop, not the budget
    assert finetune_steps(config, 320 * 240 / 1e6) == 215  # the demo scene
    assert finetune_steps(config, 640 * 480 / 1e6) == 54  # a step does 4x the work: 4x fewer steps
    assert finetune_steps(config, 1e-4) == config.max_steps and finetune_steps(config, 100.0) == config.min_steps
    assert finetune_steps(dataclasses.replace(config, steps=7), 100.0) == 7


def test_finetune_makes_the_same_steps_on_a_busy_machine(scene_path, tmp_path, monkeypatch):
    """Scaled step budget (3 steps on the 64x48 scene) with the default time limit: a machine slow
    enough that the former 120 s budget would have stopped after 2 steps gives the same weights."""
    from pipeline.training import loop

    init = run_train(tiny_config(steps=1), tmp_path / "init", [scene_path])
    config = tiny_config(finetune={"megapixel_steps": 3 * HEIGHT * WIDTH / 1e6, "min_steps": 1, "objective": "photometric",
                                   "full_resolution": True})
    assert config.finetune.steps is None
    idle = run_train(config, tmp_path / "idle", finetune=scene_path, init=init)
    monkeypatch.setattr(loop, "clock", SlowClock(200.0))
    busy = run_train(config, tmp_path / "busy", finetune=scene_path, init=init)
    for path in (idle, busy):
        _, extra = load_checkpoint(path)
        assert extra["step"] == extra["total_steps"] == 3 and extra["stopped_early"] is None
    expected, got = weights(idle), weights(busy)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in read_rows(tmp_path / "idle")] == [r["loss"] for r in read_rows(tmp_path / "busy")]


def test_time_limit_stops_loudly_and_is_recorded(scene_path, tmp_path, monkeypatch, caplog):
    from pipeline.formats.loss_log import read_run_summary
    from pipeline.training import loop

    init = run_train(tiny_config(steps=1), tmp_path / "init", [scene_path])
    monkeypatch.setattr(loop, "clock", SlowClock(100.0))  # 100 s per step: over 150 s after step 3
    config = tiny_config(finetune={"steps": 5, "max_seconds": 150, "objective": "photometric"})
    with caplog.at_level("WARNING"):
        stopped = run_train(config, tmp_path / "ft", finetune=scene_path, init=init)
    expected = {"reason": "max_seconds", "max_seconds": 150.0, "steps_done": 3, "steps_planned": 5}
    _, extra = load_checkpoint(stopped)
    assert extra["step"] == 3 and extra["stopped_early"] == expected
    assert "STOPPED EARLY by the time limit of 150 s after step 3 of 5" in caplog.text
    summary = read_run_summary(tmp_path / "ft" / "summary.json")
    assert summary["stopped_early"] == expected and summary["steps_done"] == 3 and summary["mode"] == "finetune"
    assert len(read_rows(tmp_path / "ft")) == 3
    # training from scratch has no time limit unless set
    assert tiny_config().max_seconds is None
    caplog.clear()
    run_train(tiny_config(steps=3, checkpoint_every=5), tmp_path / "scratch", [scene_path])
    assert "STOPPED EARLY" not in caplog.text
    assert read_run_summary(tmp_path / "scratch" / "summary.json")["stopped_early"] is None
    run_train(tiny_config(steps=5, max_seconds=150), tmp_path / "limited", [scene_path])
    assert load_checkpoint(tmp_path / "limited" / "last.pt")[1]["stopped_early"]["steps_done"] == 3


def test_refactor_keeps_the_weights(scene_path, tmp_path):
    """3 training steps and 2 fine-tuning steps give bit for bit the pinned weights (sha256 of every tensor, CPU).

    Pinned at commit 750a40a and kept through the move into pipeline.training; changed once since, on
    2026-12-07, when the CPU backward of kernels.adaptive_aggregation stopped summing per-thread gradient
    copies (a different float summation order, now the same at any thread count), and again that day when
    its backward took the forward's sum of weights (summed over the neighbours in order) instead of
    recomputing it with torch's ``sum(dim=1)`` (whose vectorised reduction orders the terms otherwise), and
    a third time that day when that backward became one pass over two fixed bands of rows whose cost
    gradients are summed band by band, with the hypotheses innermost (other float summation orders)."""
    import hashlib

    def digest(path):
        state = weights(path)
        h = hashlib.sha256()
        for key in sorted(state):
            h.update(key.encode())
            h.update(state[key].detach().contiguous().numpy().tobytes())
        return h.hexdigest()

    centres = [(0.0, 0.0, 0.0), (0.2, 0.0, 0.0), (-0.2, 0.05, 0.0), (0.0, 0.2, 0.05)]
    views = {i + 1: _view(i + 1, c, len(centres)) for i, c in enumerate(centres)}
    scene = tmp_path / "scene.h5"  # the module's scene without its mask
    write_scene(scene, Scene(views, np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8)))
    plain = {"recipe": "unsup_mvsnet"}  # pinned with this recipe, the default until 2026-12-07
    trained = run_train(tiny_config(steps=3, checkpoint_every=2, loss=plain), tmp_path / "train", [scene])
    tuned = run_train(tiny_config(finetune={"steps": 2, "objective": "photometric", "full_resolution": True},
                                  loss=plain), tmp_path / "ft", finetune=scene, init=trained)
    assert digest(trained) == "7c8f73e83b563b5bdd730126d892281d06e6303cf54e625bf2117d866d828d99"
    assert digest(tuned) == "c38a0268d63641b102075a7bc47c38785de03543fe60687863c9fb49daf3f51d"


# ------------------------------------------------------------------------------------------------
# the papers' systems: MVS^2's symmetric training, M3VSNet's feature term, the SPN from shipped weights


def _vgg_file(path: Path, seed: int = 0) -> Path:
    """A torchvision-format VGG16 state dict with seeded random weights (stands in for ImageNet's)."""
    from pipeline.losses import VGG16Features

    torch.manual_seed(seed)
    vgg = VGG16Features("relu4_3")
    torch.save({f"features.{k}": v for k, v in vgg.features.state_dict().items()}, path)
    return path


def test_sampler_view_masks_follow_every_view(scene_path):
    """view_masks: the reference's mask first, each source's own (view 1's right half invalid), and
    the same draws as without them."""
    from pipeline.formats.scene_file import read_scene

    scene = read_scene(scene_path, load_images=True)
    plain = ViewSampler([scene], 2, (24, 32), (1.0, 1.0))
    masked = ViewSampler([scene], 2, (24, 32), (1.0, 1.0), view_masks=True)
    for item, (_, ref_id, sources) in enumerate(masked.items):
        a = plain.sample(item, torch.Generator().manual_seed(5))
        b = masked.sample(item, torch.Generator().manual_seed(5))
        assert "view_masks" not in a and b["view_masks"].shape == (3, 1, 24, 32)
        assert torch.equal(a["images"], b["images"]) and torch.equal(b["view_masks"][0], b["mask"])
        for position, view_id in enumerate(sources, start=1):
            invalid = ~b["view_masks"][position, 0]
            assert (invalid[:, 16:].all() and not invalid[:, :15].any()) if view_id == 1 else not invalid.any()


def test_symmetric_forward_is_one_forward_per_reference():
    """The batched symmetric forward with shared features gives, for each view v, the depth of a
    plain forward with v as the reference (eval mode: BatchNorm does not depend on the batch)."""
    from pipeline.model import ModelConfig, PatchmatchNet
    from pipeline.training.step import shares_features, symmetric_forward, symmetric_orders

    torch.manual_seed(0)
    model = PatchmatchNet(ModelConfig(num_initial_hypotheses=8, num_perturbation_hypotheses=[2, 2, 4],
                                      iterations=[1, 1, 2])).eval()
    assert shares_features(model) and symmetric_orders(3) == [[0, 1, 2], [1, 0, 2], [2, 0, 1]]
    batch, views = 2, 3
    images = torch.rand(batch, views, 3, 24, 32)
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]]).expand(batch, views, 3, 3).clone()
    poses = torch.eye(4).expand(batch, views, 4, 4).clone()
    poses[:, :, 0, 3] = torch.tensor([0.0, 0.2, -0.2])
    ranges = torch.tensor([1.5, 2.6]).expand(batch, views, 2).clone()
    ranges[1, 2] = torch.tensor([1.0, 3.0])
    with torch.no_grad():
        view_stage_depths = symmetric_forward(model, model, images, K, poses, ranges)
        assert len(view_stage_depths) == views
        for v, order in enumerate(symmetric_orders(views)):
            alone = model([images[:, u] for u in order], [K[:, u] for u in order], [poses[:, u] for u in order],
                          ranges[:, v, 0], ranges[:, v, 1])
            assert sorted(view_stage_depths[v]) == sorted(alone.stage_depths)
            for stage, depths in alone.stage_depths.items():
                for ours, theirs in zip(view_stage_depths[v][stage], depths):
                    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_mvs2_trains_every_view_as_reference(scene_path, tmp_path, monkeypatch, caplog):
    """recipe mvs2 steps on SelfSupervisedLoss.symmetric (one depth set per view, masks of every view);
    the other recipes keep the one-reference objective."""
    from pipeline.losses import SelfSupervisedLoss

    calls = []
    symmetric, forward = SelfSupervisedLoss.symmetric, SelfSupervisedLoss.forward

    def spy_symmetric(self, images, K, cam_from_world, view_stage_depths, **kwargs):
        calls.append(("symmetric", images.shape[1], len(view_stage_depths), tuple(kwargs["masks"].shape)))
        return symmetric(self, images, K, cam_from_world, view_stage_depths, **kwargs)

    def spy_forward(self, *args, **kwargs):
        calls.append(("forward",))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SelfSupervisedLoss, "symmetric", spy_symmetric)
    monkeypatch.setattr(SelfSupervisedLoss, "forward", spy_forward)
    with caplog.at_level("INFO"):
        run_train(tiny_config(steps=2, batch_size=2, loss={"recipe": "mvs2"}), tmp_path / "mvs2", [scene_path])
    assert calls == [("symmetric", 3, 3, (2, 3, 1, 24, 32))] * 2
    assert "symmetric: every view of a sample the reference in turn" in caplog.text
    rows = read_rows(tmp_path / "mvs2")
    assert all(float(row["cross_view"]) > 0 and math.isfinite(float(row["loss"])) for row in rows)
    calls.clear()
    run_train(tiny_config(steps=1, loss={"recipe": "unsup_mvsnet"}), tmp_path / "plain", [scene_path])
    assert calls == [("forward",)]


def test_mvs2_refuses_one_reference_terms(scene_path, tmp_path):
    with pytest.raises(ValueError, match=r"mvs2 .*augmentation.*train.loss.weights.augmentation: 0"):
        run_train(tiny_config(steps=1, loss={"recipe": "mvs2", "weights": {"augmentation": 0.01}}),
                  tmp_path / "x", [scene_path])


def test_m3vsnet_feature_term_from_the_vgg16_file(scene_path, tmp_path, caplog):
    """With train.vgg16_weights the feature term uses VGG16 (a column of losses.csv); without, it is on
    as well, on the network's own frozen features (from scratch a random projection: a WARNING)."""
    weights_path = _vgg_file(tmp_path / "vgg16.pth")
    with caplog.at_level("INFO"):
        run_train(tiny_config(steps=1, vgg16_weights=str(weights_path), loss={"recipe": "m3vsnet"}),
                  tmp_path / "on", [scene_path])
    assert "is OFF" not in caplog.text and "frozen copy of the network" not in caplog.text
    row = read_rows(tmp_path / "on")[0]
    assert all(math.isfinite(float(row[t])) for t in ("photometric", "ssim", "smoothness", "depth_normal", "feature"))
    assert float(row["feature"]) > 0
    assert "feature_reference" not in torch.load(tmp_path / "on" / "last.pt", weights_only=True)["extra"]
    caplog.clear()
    with caplog.at_level("INFO"):
        run_train(tiny_config(steps=1, loss={"recipe": "m3vsnet"}), tmp_path / "own", [scene_path])
    assert "is OFF" not in caplog.text
    assert "frozen copy of the network's own feature maps" in caplog.text and "random projection" in caplog.text
    row = read_rows(tmp_path / "own")[0]
    assert math.isfinite(float(row["feature"])) and float(row["feature"]) > 0
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        run_train(tiny_config(steps=1, vgg16_weights=str(tmp_path / "missing.pth"), loss={"recipe": "m3vsnet"}),
                  tmp_path / "bad", [scene_path])


@pytest.mark.parametrize("backbone", ["patchmatchnet", "cvp"])
def test_m3vsnet_own_features_are_those_of_the_start(backbone, scene_path, tmp_path, caplog):
    """Without VGG16 weights the feature term's frozen copy is the network before its first step:
    checkpoints keep it, a resumed run restores it (not the resumed weights), and an --init run
    copies the init's features (no random-projection WARNING)."""
    from pipeline.losses import FrozenNetworkFeatures
    from pipeline.model.checkpoint import read_checkpoint
    from pipeline.training.data import build_model

    model = {"backbone": "cvp", "cvp_levels": 2} if backbone == "cvp" else tiny_config().model
    config = tiny_config(steps=2, checkpoint_every=1, model=model, loss={"recipe": "m3vsnet"})

    def reference(path):
        return read_checkpoint(path)["extra"]["feature_reference"]

    def frozen_state(network):
        return FrozenNetworkFeatures(network.multiscale_features()).state_dict()

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    torch.manual_seed(config.seed)
    initial = frozen_state(build_model(config, None))  # what the run builds from its seed
    folder = tmp_path / "run"
    first = run_train(config, folder, [scene_path], stop_at=1, resume=True)
    assert "feature" in read_rows(folder)[0]
    assert same(reference(first), initial)
    after_one, _ = load_checkpoint(first)
    assert not same(frozen_state(after_one), initial)  # the network's own features did train
    caplog.clear()
    with caplog.at_level("WARNING"):
        resumed = run_train(config, folder, [scene_path], resume=True)
    assert read_checkpoint(resumed)["extra"]["step"] == 2
    assert same(reference(resumed), initial) and "holds no initial feature maps" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        tuned = run_train(tiny_config(steps=1, model=model, loss={"recipe": "m3vsnet"}), tmp_path / "init",
                          [scene_path], init=resumed)
    resumed_model, _ = load_checkpoint(resumed)
    assert same(reference(tuned), frozen_state(resumed_model)) and "random projection" not in caplog.text


SPN_MODEL = {"num_initial_hypotheses": 8, "num_perturbation_hypotheses": [2, 2, 4], "iterations": [1, 1, 2],
             "refinement": "spn", "spn_steps": 3}


def test_spn_starts_fresh_on_weights_without_one(scene_path, tmp_path, caplog):
    """train.model {refinement: spn} + --init of weights without spn.*: a fresh SPN (logged) that
    leaves the depth unchanged; the run trains it and its checkpoints hold it."""
    from pipeline.model import load_checkpoint

    base = run_train(tiny_config(steps=1), tmp_path / "base", [scene_path])
    with caplog.at_level("INFO"):
        spn_model, _ = load_checkpoint(base, model_overrides={"refinement": "spn", "spn_steps": 3})
    assert "fresh SPN" in caplog.text
    plain, _ = load_checkpoint(base)
    images = [torch.rand(1, 3, 24, 32) for _ in range(3)]
    K = [torch.tensor([[[40.0, 0, 16], [0, 40.0, 12], [0, 0, 1]]])] * 3
    poses = [torch.eye(4)[None].clone() for _ in range(3)]
    poses[1][0, 0, 3], poses[2][0, 0, 3] = 0.2, -0.2
    depth_range = (torch.tensor([1.5]), torch.tensor([2.6]))
    with torch.no_grad():
        assert torch.equal(spn_model(images, K, poses, *depth_range).depth, plain(images, K, poses, *depth_range).depth)

    tuned = run_train(tiny_config(steps=2, model=SPN_MODEL, loss={"recipe": "mvs2"}), tmp_path / "spn", [scene_path],
                      init=base)
    model, _ = load_checkpoint(tuned)  # strict: the SPN's weights are in the file
    assert model.config.refinement == "spn"
    assert any(not torch.equal(p, torch.zeros_like(p)) for k, p in model.state_dict().items() if k.startswith("spn.affinity"))
    finetuned = run_train(tiny_config(model=SPN_MODEL, finetune={"steps": 1, "objective": "photometric"}),
                          tmp_path / "ft", finetune=scene_path, init=base)
    assert load_checkpoint(finetuned)[0].config.refinement == "spn"


def test_spn_fresh_start_leaves_every_other_key_strict(scene_path, tmp_path):
    from pipeline.model import CheckpointError, load_checkpoint

    base = run_train(tiny_config(steps=1), tmp_path / "base", [scene_path])
    payload = torch.load(base, weights_only=True)
    state = payload["state_dict"]
    dropped = sorted(k for k in state if not k.startswith("spn."))[0]
    broken = {**payload, "state_dict": {k: v for k, v in state.items() if k != dropped}}
    torch.save(broken, tmp_path / "missing_key.pt")
    with pytest.raises(CheckpointError, match=f"missing keys.*{dropped}"):
        load_checkpoint(tmp_path / "missing_key.pt", model_overrides={"refinement": "spn"})
    torch.save({**payload, "state_dict": {**state, "extra.weight": torch.zeros(1)}}, tmp_path / "unexpected.pt")
    with pytest.raises(CheckpointError, match="unexpected keys.*extra.weight"):
        load_checkpoint(tmp_path / "unexpected.pt", model_overrides={"refinement": "spn"})
    # An SPN checkpoint missing part of its SPN is not a fresh start.
    spn_state = load_checkpoint(base, model_overrides={"refinement": "spn"})[0].state_dict()
    partial = {k: v for k, v in spn_state.items() if k != "spn.affinity.weight"}
    torch.save({**payload, "model_config": {**payload["model_config"], "refinement": "spn"}, "state_dict": partial},
               tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing keys.*spn.affinity.weight"):
        load_checkpoint(tmp_path / "partial.pt")
    # train --init with the override reports the file
    with pytest.raises(ValueError, match="missing_key.pt"):
        run_train(tiny_config(steps=1, model=SPN_MODEL), tmp_path / "x", [scene_path], init=tmp_path / "missing_key.pt")


def test_losses_are_read_back_once_per_window(scene_path, tmp_path, monkeypatch):
    """train.log_every: the same rows as reading every step, with one host read per window."""
    from pipeline.training import loop

    every_step = run_train(tiny_config(steps=7, checkpoint_every=100, log_every=1), tmp_path / "one", [scene_path])
    reads = []
    real_tolist, real_float, real_item = torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.item

    def counted(real, name):
        def read(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename == loop.__file__:
                reads.append(name)
            return real(self, *args, **kwargs)
        return read

    monkeypatch.setattr(torch.Tensor, "tolist", counted(real_tolist, "tolist"))
    monkeypatch.setattr(torch.Tensor, "__float__", counted(real_float, "float"))
    monkeypatch.setattr(torch.Tensor, "item", counted(real_item, "item"))
    windowed = run_train(tiny_config(steps=7, checkpoint_every=100, log_every=3), tmp_path / "three", [scene_path])
    monkeypatch.undo()
    assert reads == ["tolist"] * 4  # windows closed after step 1 (its own time), 3, 6 and 7 (the last)
    one, three = read_rows(tmp_path / "one"), read_rows(tmp_path / "three")
    assert [r["step"] for r in three] == [str(s) for s in range(1, 8)]
    for column in ("loss", "lr", "photometric", "ssim", "smoothness"):
        assert [r[column] for r in three] == [r[column] for r in one], column
    assert len({r["seconds"] for r in three[1:3]}) == 1  # steps 2 and 3: one window, its mean time
    for key, value in weights(every_step).items():
        torch.testing.assert_close(weights(windowed)[key], value, rtol=0, atol=0, msg=key)


def test_a_non_finite_loss_inside_a_window_names_its_step(scene_path, tmp_path, monkeypatch):
    from pipeline.training import loop

    real_step, calls = loop.train_step, []

    def poisoned(*args, **kwargs):
        total, values = real_step(*args, **kwargs)
        calls.append(1)
        return (total * float("nan"), values) if len(calls) == 3 else (total, values)

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        run_train(tiny_config(steps=6, checkpoint_every=100, log_every=5, loss={"recipe": "unsup_mvsnet"}),
                  tmp_path / "nan", [scene_path])  # the one-reference step (mvs2 steps through symmetric_train_step)
    assert len(calls) == 5  # found when the window of steps 2-5 closed

# Input helpers of the rules: which scenes exist, where their photos come from, which checkpoint
# infers them. No rule logic lives anywhere else.
import json
import sys
from pathlib import Path

def _selfmvs_command():
    """The package's console command: inside a rule's conda env it is on PATH; otherwise the one
    installed beside the Python running Snakemake (the project's .venv), so no activation is needed."""
    if workflow.deployment_settings.deployment_method:
        return "selfmvs"
    beside = Path(sys.executable).parent / "selfmvs"
    return str(beside) if beside.is_file() else "selfmvs"


SELFMVS = _selfmvs_command()


def scene_names():
    """The scenes of this run: those of `scenes:` or else the synthetic demo scene."""
    return list(config["scenes"]) or [config["demo"]["name"]]


def is_demo(scene):
    return not config["scenes"] and scene == config["demo"]["name"]


def has_sparse(path):
    root = Path(path)
    return any((root / sub).is_dir() for sub in ("sparse/0", "sparse"))


def scene_input(wildcards):
    """The scene folder `prepare` reads: the rendered demo, the user's folder, or the sfm output."""
    scene = wildcards.scene
    if is_demo(scene):
        return f"results/{scene}/input"
    path = config["scenes"][scene]
    return path if has_sparse(path) else f"results/{scene}/sfm"


def sfm_images(wildcards):
    return str(Path(config["scenes"][wildcards.scene]) / "images")


def config_json(wildcards):
    """The run's validated config as JSON, snapshotted per scene by `scene_config`."""
    return json.dumps(config, sort_keys=True)


def infer_checkpoint(wildcards):
    """The fine-tuned checkpoint when per-scene fine-tuning is on, else the base checkpoint."""
    if config["train"]["finetune"]["enabled"]:
        return f"results/{wildcards.scene}/finetune/last.pt"
    return base_checkpoint()


def finetune_labels(wildcards):
    """The scene's own labels when fine-tuning trains on them (train.finetune.objective: labels)."""
    if config["train"]["finetune"]["objective"] == "labels":
        return [f"results/{wildcards.scene}/finetune_labels/labels.h5"]
    return []


def finetune_labels_option(wildcards):
    """`--labels FILE` as separate words, so that the rule's shell quotes each (`{params.labels:q}`)."""
    files = finetune_labels(wildcards)
    return ["--labels", files[0]] if files else []


def base_checkpoint():
    return config["infer"]["checkpoint"] or str(Path(workflow.basedir) / "pipeline" / "checkpoints" / "selfmvs_synthetic.pt")


def training_curves(wildcards):
    """The fine-tuning loss log, when the scene was fine-tuned."""
    if config["train"]["finetune"]["enabled"]:
        return [f"results/{wildcards.scene}/finetune/losses.csv"]
    return []


def training_summary(wildcards):
    """How the scene's fine-tuning ended (summary.json), when it was fine-tuned."""
    if config["train"]["finetune"]["enabled"]:
        return [f"results/{wildcards.scene}/finetune/summary.json"]
    return []


def training_summary_option(wildcards):
    files = training_summary(wildcards)
    return ["--training-summary", files[0]] if files else []


def training_curves_option(wildcards):
    files = training_curves(wildcards)
    return ["--training-csv", files[0]] if files else []


def training_seeds():
    """Every training scene's name: the object scenes' seeds, then the indoor rooms' seeds, then the
    photo scenes' names. A name is one folder under results/_training/, so the two seed lists must
    not share one (a photo scene's name starts with a letter, the schema's rule), no room may be one
    of the indoor family's held-out rooms (bench/quality_heldout.py --family indoor), and a photo
    scene needs its COLMAP model (training does not run sfm)."""
    from pipeline.synth.indoor import HELDOUT_SEEDS

    data = config["training_data"]
    objects, rooms = list(data["seeds"]), list(data["indoor_seeds"])
    held_out = sorted(set(rooms) & set(HELDOUT_SEEDS))
    if held_out:
        raise ValueError(f"training_data.indoor_seeds: {held_out} are held-out rooms (pipeline.synth.indoor.HELDOUT_SEEDS)")
    shared = sorted(set(objects) & set(rooms))
    if shared:
        raise ValueError(f"training_data: seeds and indoor_seeds share {shared}; a seed names one training scene")
    for name, folder in data["photo_scenes"].items():
        if not has_sparse(folder):
            raise ValueError(f"training_data.photo_scenes.{name}: {folder} has no COLMAP model (sparse/ or sparse/0/)")
    return objects + rooms + list(data["photo_scenes"])


def training_scene_folder(wildcards):
    """The folder a training scene is prepared from: a photo scene's own folder, or the render of a seed."""
    photos = config["training_data"]["photo_scenes"]
    return photos[wildcards.seed] if wildcards.seed in photos else f"results/_training/scenes/{wildcards.seed}"


def training_render_options(wildcards):
    """`render-scene` options of one training seed, as separate words (`{params.options:q}`):
    the indoor family and its size for a seed of indoor_seeds, the object scenes' size otherwise."""
    data = config["training_data"]
    if int(wildcards.seed) in data["indoor_seeds"]:
        return ["--family", "indoor", "--num-views", str(data["indoor_num_views"]),
                "--width", str(data["indoor_width"]), "--height", str(data["indoor_height"])]
    return ["--family", "object", "--num-views", str(data["num_views"]),
            "--width", str(data["width"]), "--height", str(data["height"])]


def training_scenes():
    return [f"results/_training/h5/{seed}.h5" for seed in training_seeds()]


def self_training_init():
    return config["self_training"]["init"] or "results/_training/final.pt"


def self_training_labels():
    return [f"results/_self_training/labels/{seed}.h5" for seed in training_seeds()]


def benchmark_files(wildcards):
    stages = ["prepare", "infer", "fuse", "evaluate"]
    if config["train"]["finetune"]["enabled"]:
        stages.insert(1, "finetune")
        if config["train"]["finetune"]["objective"] == "labels":
            stages[1:1] = ["finetune_source_infer", "finetune_source_fuse", "finetune_labels"]
    return [f"benchmarks/{wildcards.scene}/{stage}.tsv" for stage in stages]


def all_outputs():
    outputs = []
    for scene in scene_names():
        outputs += [
            f"results/{scene}/fused.ply",
            f"results/{scene}/eval.json",
            f"results/{scene}/report/index.html",
        ]
    return outputs


# The scene names config.schema.yaml allows (scenes: propertyNames): no `/`, no leading `.` or `_`,
# so `..` cannot reach outside results/ and the `_training` folders are no scene's. A training scene
# is a seed (rendered) or the name of a photo scene (training_data.photo_scenes: starting with a letter).
wildcard_constraints:
    scene=r"[A-Za-z0-9][A-Za-z0-9_.\-]*",
    seed=r"\d+|[A-Za-z][A-Za-z0-9_.\-]*",

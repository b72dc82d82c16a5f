# Labels of the scene itself for fine-tuning (train.finetune.objective: labels): the base
# checkpoint's depth where fusion keeps it, plus depth carried between views (no ground truth).
use rule infer as finetune_source_infer with:
    input:
        scene="results/{scene}/scene.h5",
        checkpoint=base_checkpoint(),
        config="results/{scene}/config.yaml",
    output:
        temp("results/{scene}/finetune_labels/depth.h5"),
    log:
        "logs/{scene}/finetune_source_infer.log",
    benchmark:
        "benchmarks/{scene}/finetune_source_infer.tsv"


# Fusion that also keeps its per-view masks, the input of `selfmvs pseudo-labels`.
rule finetune_source_fuse:
    input:
        scene="results/{scene}/scene.h5",
        depth="results/{scene}/finetune_labels/depth.h5",
        config="results/{scene}/config.yaml",
    output:
        cloud=temp("results/{scene}/finetune_labels/fused.ply"),
        masks=temp("results/{scene}/finetune_labels/fused_masks.h5"),
    params:
        selfmvs=SELFMVS,
    log:
        "logs/{scene}/finetune_source_fuse.log",
    benchmark:
        "benchmarks/{scene}/finetune_source_fuse.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    shell:
        "{params.selfmvs:q} fuse {input.scene:q} {input.depth:q} {output.cloud:q} --masks {output.masks:q}"
        " --config {input.config:q} > {log:q} 2>&1"


rule finetune_labels:
    input:
        depth="results/{scene}/finetune_labels/depth.h5",
        masks="results/{scene}/finetune_labels/fused_masks.h5",
    output:
        "results/{scene}/finetune_labels/labels.h5",
    params:
        selfmvs=SELFMVS,
        transfer=["--transfer"] if config["train"]["finetune"]["label_transfer"] else [],
    log:
        "logs/{scene}/finetune_labels.log",
    benchmark:
        "benchmarks/{scene}/finetune_labels.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    shell:
        "{params.selfmvs:q} pseudo-labels {input.depth:q} {input.masks:q} {output:q} {params.transfer:q} > {log:q} 2>&1"


rule finetune:
    input:
        scene="results/{scene}/scene.h5",
        checkpoint=base_checkpoint(),
        config="results/{scene}/config.yaml",
        labels=finetune_labels,
    output:
        checkpoint="results/{scene}/finetune/last.pt",
        curves="results/{scene}/finetune/losses.csv",
        summary="results/{scene}/finetune/summary.json",
    params:
        selfmvs=SELFMVS,
        labels=finetune_labels_option,
    log:
        "logs/{scene}/finetune.log",
    benchmark:
        "benchmarks/{scene}/finetune.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    shell:
        "{params.selfmvs:q} train --config {input.config:q} --finetune {input.scene:q} --init {input.checkpoint:q}"
        ' {params.labels:q} --out "$(dirname {output.checkpoint:q})" > {log:q} 2>&1'


# The base checkpoint: self-supervised training on varied synthetic scenes
# (`snakemake train_base`; the result is copied to pipeline/checkpoints/ when it is shipped).
# A seed of training_data.indoor_seeds renders a room of the indoor family at its own size.
rule training_scene:
    wildcard_constraints:
        seed=r"\d+",
    output:
        directory("results/_training/scenes/{seed}"),
    params:
        selfmvs=SELFMVS,
        options=training_render_options,
    log:
        "logs/_training/render_{seed}.log",
    benchmark:
        "benchmarks/_training/render_{seed}.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs:q} render-scene {output:q} --seed {wildcards.seed:q} --varied {params.options:q} > {log:q} 2>&1"


# Training scenes are prepared with the run's `prepare:` section, like the scenes of `scenes:`: the
# render of a seed, or a folder of training_data.photo_scenes as it is.
use rule prepare as training_prepare with:
    input:
        scene=training_scene_folder,
        config="results/_training/config.yaml",
    output:
        "results/_training/h5/{seed}.h5",
    log:
        "logs/_training/prepare_{seed}.log",
    benchmark:
        "benchmarks/_training/prepare_{seed}.tsv"


rule train_base:
    # The trainer's folder is not a declared output: Snakemake deletes the outputs of a stopped
    # job, and this long run must keep last.pt and losses.csv to resume. The output is a copy of
    # the final state, made only when every step is done.
    input:
        scenes=training_scenes(),
        config="results/_training/config.yaml",
    output:
        "results/_training/final.pt",
    params:
        selfmvs=SELFMVS,
        folder="results/_training/checkpoint",
    log:
        "logs/_training/train.log",
    benchmark:
        "benchmarks/_training/train.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    shell:
        "{params.selfmvs:q} train --config {input.config:q} --scenes {input.scenes:q}"
        " --out {params.folder:q} --resume > {log:q} 2>&1 && cp {params.folder:q}/last.pt {output:q}"


# Self-training (`snakemake train_self --configfile config/train_self.yaml`): the `self_training.init`
# weights label each training scene with the depth their own fusion keeps, then train on the labels.
use rule infer as self_training_infer with:
    input:
        scene="results/_training/h5/{seed}.h5",
        checkpoint=self_training_init(),
        config="results/_self_training/config.yaml",
    output:
        "results/_self_training/depth/{seed}.h5",
    log:
        "logs/_self_training/infer_{seed}.log",
    benchmark:
        "benchmarks/_self_training/infer_{seed}.tsv"


use rule finetune_source_fuse as self_training_fuse with:
    input:
        scene="results/_training/h5/{seed}.h5",
        depth="results/_self_training/depth/{seed}.h5",
        config="results/_self_training/config.yaml",
    output:
        cloud=temp("results/_self_training/fused/{seed}.ply"),
        masks="results/_self_training/fused/{seed}_masks.h5",
    log:
        "logs/_self_training/fuse_{seed}.log",
    benchmark:
        "benchmarks/_self_training/fuse_{seed}.tsv"


# Labels without carrying depth between views (no --transfer), as train_self was measured with.
use rule finetune_labels as self_training_labels with:
    input:
        depth="results/_self_training/depth/{seed}.h5",
        masks="results/_self_training/fused/{seed}_masks.h5",
    output:
        "results/_self_training/labels/{seed}.h5",
    params:
        selfmvs=SELFMVS,
        transfer=[],
    log:
        "logs/_self_training/labels_{seed}.log",
    benchmark:
        "benchmarks/_self_training/labels_{seed}.tsv"
    threads: 1


rule train_self:
    # Like train_base: the trainer's folder is not a declared output, so a stopped run resumes.
    input:
        scenes=training_scenes(),
        labels=self_training_labels(),
        init=self_training_init(),
        config="results/_self_training/config.yaml",
    output:
        "results/_self_training/final.pt",
    params:
        selfmvs=SELFMVS,
        folder="results/_self_training/checkpoint",
    log:
        "logs/_self_training/train.log",
    benchmark:
        "benchmarks/_self_training/train.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    shell:
        "{params.selfmvs:q} train --config {input.config:q} --scenes {input.scenes:q} --labels {input.labels:q}"
        " --init {input.init:q} --out {params.folder:q} --resume > {log:q} 2>&1 && cp {params.folder:q}/last.pt {output:q}"

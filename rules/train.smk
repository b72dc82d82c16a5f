# Labels of the scene itself for fine-tuning (train.finetune.objective: labels): the base
# checkpoint's depth where fusion keeps it, plus depth carried between views (no ground truth).
rule finetune_source_infer:
    input:
        scene="results/{scene}/scene.h5",
        checkpoint=base_checkpoint(),
        config="results/{scene}/config.yaml",
    output:
        temp("results/{scene}/finetune_labels/depth.h5"),
    params:
        selfmvs=SELFMVS,
    log:
        "logs/{scene}/finetune_source_infer.log",
    benchmark:
        "benchmarks/{scene}/finetune_source_infer.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1 if config["infer"]["device"] == "cuda" else 0,
    shell:
        "{params.selfmvs} infer {input.scene} {input.checkpoint} {output} --config {input.config} > {log} 2>&1"


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
    resources:
        mem_mb=4000,
    shell:
        "{params.selfmvs} fuse {input.scene} {input.depth} {output.cloud} --masks {output.masks}"
        " --config {input.config} > {log} 2>&1"


rule finetune_labels:
    input:
        depth="results/{scene}/finetune_labels/depth.h5",
        masks="results/{scene}/finetune_labels/fused_masks.h5",
    output:
        "results/{scene}/finetune_labels/labels.h5",
    params:
        selfmvs=SELFMVS,
        transfer="--transfer" if config["train"]["finetune"]["label_transfer"] else "",
    log:
        "logs/{scene}/finetune_labels.log",
    benchmark:
        "benchmarks/{scene}/finetune_labels.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    shell:
        "{params.selfmvs} pseudo-labels {input.depth} {input.masks} {output} {params.transfer} > {log} 2>&1"


rule finetune:
    input:
        scene="results/{scene}/scene.h5",
        checkpoint=base_checkpoint(),
        config="results/{scene}/config.yaml",
        labels=finetune_labels,
    output:
        checkpoint="results/{scene}/finetune/last.pt",
        curves="results/{scene}/finetune/losses.csv",
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
    resources:
        mem_mb=8000,
        gpu=1 if config["train"]["device"] == "cuda" else 0,
    shell:
        "{params.selfmvs} train --config {input.config} --finetune {input.scene} --init {input.checkpoint}"
        " {params.labels} --out $(dirname {output.checkpoint}) > {log} 2>&1"


# The base checkpoint: self-supervised training on varied synthetic scenes
# (`snakemake train_base`; the result is copied to pipeline/checkpoints/ when it is shipped).
rule training_scene:
    output:
        directory("results/_training/scenes/{seed}"),
    params:
        selfmvs=SELFMVS,
        views=config["training_data"]["num_views"],
        width=config["training_data"]["width"],
        height=config["training_data"]["height"],
    log:
        "logs/_training/render_{seed}.log",
    benchmark:
        "benchmarks/_training/render_{seed}.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs} render-scene {output} --seed {wildcards.seed} --varied --num-views {params.views}"
        " --width {params.width} --height {params.height} > {log} 2>&1"


rule training_prepare:
    input:
        "results/_training/scenes/{seed}",
    output:
        "results/_training/h5/{seed}.h5",
    params:
        selfmvs=SELFMVS,
    log:
        "logs/_training/prepare_{seed}.log",
    benchmark:
        "benchmarks/_training/prepare_{seed}.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs} prepare {input} {output} > {log} 2>&1"


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
    resources:
        mem_mb=8000,
        gpu=1 if config["train"]["device"] == "cuda" else 0,
    shell:
        "{params.selfmvs} train --config {input.config} --scenes {input.scenes}"
        " --out {params.folder} --resume > {log} 2>&1 && cp {params.folder}/last.pt {output}"


# Self-training (`snakemake train_self --configfile config/train_self.yaml`): the `self_training.init`
# weights label each training scene with the depth their own fusion keeps, then train on the labels.
rule self_training_infer:
    input:
        scene="results/_training/h5/{seed}.h5",
        checkpoint=self_training_init(),
        config="results/_self_training/config.yaml",
    output:
        "results/_self_training/depth/{seed}.h5",
    params:
        selfmvs=SELFMVS,
    log:
        "logs/_self_training/infer_{seed}.log",
    benchmark:
        "benchmarks/_self_training/infer_{seed}.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    shell:
        "{params.selfmvs} infer {input.scene} {input.checkpoint} {output} --config {input.config} > {log} 2>&1"


rule self_training_fuse:
    input:
        scene="results/_training/h5/{seed}.h5",
        depth="results/_self_training/depth/{seed}.h5",
        config="results/_self_training/config.yaml",
    output:
        cloud=temp("results/_self_training/fused/{seed}.ply"),
        masks="results/_self_training/fused/{seed}_masks.h5",
    params:
        selfmvs=SELFMVS,
    log:
        "logs/_self_training/fuse_{seed}.log",
    benchmark:
        "benchmarks/_self_training/fuse_{seed}.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    shell:
        "{params.selfmvs} fuse {input.scene} {input.depth} {output.cloud} --masks {output.masks}"
        " --config {input.config} > {log} 2>&1"


rule self_training_labels:
    input:
        depth="results/_self_training/depth/{seed}.h5",
        masks="results/_self_training/fused/{seed}_masks.h5",
    output:
        "results/_self_training/labels/{seed}.h5",
    params:
        selfmvs=SELFMVS,
    log:
        "logs/_self_training/labels_{seed}.log",
    benchmark:
        "benchmarks/_self_training/labels_{seed}.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs} pseudo-labels {input.depth} {input.masks} {output} > {log} 2>&1"


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
    resources:
        mem_mb=8000,
        gpu=1 if config["train"]["device"] == "cuda" else 0,
    shell:
        "{params.selfmvs} train --config {input.config} --scenes {input.scenes} --labels {input.labels}"
        " --init {input.init} --out {params.folder} --resume > {log} 2>&1 && cp {params.folder}/last.pt {output}"

# Snapshot of the run's validated config per scene; every stage of the scene reads it.
rule scene_config:
    output:
        "results/{scene}/config.yaml",
    params:
        selfmvs=SELFMVS,
        config=config_json,
    log:
        "logs/{scene}/config.log",
    benchmark:
        "benchmarks/{scene}/config.tsv"
    conda:
        "../envs/selfmvs.yaml"
    localrule: True
    shell:
        "{params.selfmvs:q} config {output:q} --json {params.config:q} > {log:q} 2>&1"


# The same snapshot for the training runs (their folders start with `_`, which no scene name does).
use rule scene_config as training_config with:
    output:
        "results/_training/config.yaml",
    log:
        "logs/_training/config.log",
    benchmark:
        "benchmarks/_training/config.tsv"


use rule scene_config as self_training_config with:
    output:
        "results/_self_training/config.yaml",
    log:
        "logs/_self_training/config.log",
    benchmark:
        "benchmarks/_self_training/config.tsv"

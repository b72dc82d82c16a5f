rule finetune:
    input:
        scene="results/{scene}/scene.h5",
        checkpoint=base_checkpoint(),
        config="results/{scene}/config.yaml",
    output:
        "results/{scene}/finetune/checkpoint.pt",
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
        "{SELFMVS} train --config {input.config} --finetune {input.scene} --init {input.checkpoint}"
        " --out $(dirname {output}) > {log} 2>&1"

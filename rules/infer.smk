rule infer:
    input:
        scene="results/{scene}/scene.h5",
        checkpoint=infer_checkpoint,
        config="results/{scene}/config.yaml",
    output:
        "results/{scene}/depth.h5",
    params:
        selfmvs=SELFMVS,
    log:
        "logs/{scene}/infer.log",
    benchmark:
        "benchmarks/{scene}/infer.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1 if config["infer"]["device"] == "cuda" else 0,
    shell:
        "{params.selfmvs} infer {input.scene} {input.checkpoint} {output} --config {input.config} > {log} 2>&1"

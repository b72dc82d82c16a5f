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
    shell:
        "{params.selfmvs:q} infer {input.scene:q} {input.checkpoint:q} {output:q} --config {input.config:q} > {log:q} 2>&1"

rule fuse:
    input:
        scene="results/{scene}/scene.h5",
        depth="results/{scene}/depth.h5",
        config="results/{scene}/config.yaml",
    output:
        "results/{scene}/fused.ply",
    params:
        selfmvs=SELFMVS,
    log:
        "logs/{scene}/fuse.log",
    benchmark:
        "benchmarks/{scene}/fuse.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs:q} fuse {input.scene:q} {input.depth:q} {output:q} --config {input.config:q} > {log:q} 2>&1"


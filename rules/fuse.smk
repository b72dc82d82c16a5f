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
    resources:
        mem_mb=4000,
    shell:
        "{params.selfmvs} fuse {input.scene} {input.depth} {output} --config {input.config} > {log} 2>&1"

rule prepare:
    input:
        scene=scene_input,
        config="results/{scene}/config.yaml",
    output:
        "results/{scene}/scene.h5",
    params:
        selfmvs=SELFMVS,
    log:
        "logs/{scene}/prepare.log",
    benchmark:
        "benchmarks/{scene}/prepare.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{params.selfmvs} prepare {input.scene} {output} --config {input.config} > {log} 2>&1"

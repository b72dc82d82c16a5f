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
    shell:
        "{params.selfmvs:q} prepare {input.scene:q} {output:q} --config {input.config:q} > {log:q} 2>&1"

rule sfm:
    input:
        sfm_images,
    output:
        directory("results/{scene}/sfm"),
    params:
        selfmvs=SELFMVS,
    log:
        "logs/{scene}/sfm.log",
    benchmark:
        "benchmarks/{scene}/sfm.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 4
    resources:
        mem_mb=8000,
    shell:
        "{params.selfmvs} sfm $(dirname {input}) {output} --threads {threads} > {log} 2>&1"

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
    shell:
        '{params.selfmvs:q} sfm "$(dirname {input:q})" {output:q} --threads {threads} > {log:q} 2>&1'

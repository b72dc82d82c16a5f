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
        "{params.selfmvs} config {output} --json {params.config:q} > {log} 2>&1"

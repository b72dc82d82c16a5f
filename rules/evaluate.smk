rule evaluate:
    input:
        scene_dir=scene_input,
        scene="results/{scene}/scene.h5",
        depth="results/{scene}/depth.h5",
        fused="results/{scene}/fused.ply",
        config="results/{scene}/config.yaml",
    output:
        "results/{scene}/eval.json",
    params:
        selfmvs=SELFMVS,
    log:
        "logs/{scene}/evaluate.log",
    benchmark:
        "benchmarks/{scene}/evaluate.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    shell:
        "{params.selfmvs} evaluate {input.scene_dir} {input.scene} {input.depth} {input.fused} {output}"
        " --config {input.config} > {log} 2>&1"

rule evaluate:
    input:
        scene_dir=scene_input,
        scene="results/{scene}/scene.h5",
        depth="results/{scene}/depth.h5",
        fused="results/{scene}/fused.ply",
        config="results/{scene}/config.yaml",
        training=training_summary,
    output:
        "results/{scene}/eval.json",
    params:
        selfmvs=SELFMVS,
        training=training_summary_option,
    log:
        "logs/{scene}/evaluate.log",
    benchmark:
        "benchmarks/{scene}/evaluate.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs:q} evaluate {input.scene_dir:q} {input.scene:q} {input.depth:q} {input.fused:q} {output:q}"
        " --config {input.config:q} {params.training:q} > {log:q} 2>&1"

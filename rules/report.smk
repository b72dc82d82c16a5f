rule report:
    input:
        scene="results/{scene}/scene.h5",
        depth="results/{scene}/depth.h5",
        fused="results/{scene}/fused.ply",
        eval="results/{scene}/eval.json",
        scene_dir=scene_input,
        training=training_curves,
        benchmarks=benchmark_files,
        config="results/{scene}/config.yaml",
    output:
        page=report(
            "results/{scene}/report/index.html",
            caption="../docs/captions/report.rst",
            category="{scene}",
            labels={"scene": "{scene}", "figure": "summary page"},
        ),
    params:
        selfmvs=SELFMVS,
        training=training_curves_option,
    log:
        "logs/{scene}/report.log",
    benchmark:
        "benchmarks/{scene}/report.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs:q} report {input.scene:q} {input.depth:q} {input.fused:q} {input.eval:q}"
        ' "$(dirname {output.page:q})" --scene-dir {input.scene_dir:q} {params.training:q}'
        " --benchmarks {input.benchmarks:q} --title {wildcards.scene:q} --config {input.config:q} > {log:q} 2>&1"

rule demo_scene:
    output:
        directory("results/{scene}/input"),
    params:
        selfmvs=SELFMVS,
        seed=config["demo"]["seed"],
        views=config["demo"]["num_views"],
        width=config["demo"]["width"],
        height=config["demo"]["height"],
        distortion=["--distortion"] if config["demo"]["distortion"] else [],
    log:
        "logs/{scene}/demo_scene.log",
    benchmark:
        "benchmarks/{scene}/demo_scene.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs:q} render-scene {output:q} --seed {params.seed:q} --num-views {params.views:q}"
        " --width {params.width:q} --height {params.height:q} {params.distortion:q} > {log:q} 2>&1"

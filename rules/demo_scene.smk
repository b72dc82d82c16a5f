rule demo_scene:
    output:
        directory("results/{scene}/input"),
    params:
        selfmvs=SELFMVS,
        seed=config["demo"]["seed"],
        views=config["demo"]["num_views"],
        width=config["demo"]["width"],
        height=config["demo"]["height"],
        distortion="--distortion" if config["demo"]["distortion"] else "",
    log:
        "logs/{scene}/demo_scene.log",
    benchmark:
        "benchmarks/{scene}/demo_scene.tsv"
    conda:
        "../envs/selfmvs.yaml"
    threads: 1
    shell:
        "{params.selfmvs} render-scene {output} --seed {params.seed} --num-views {params.views}"
        " --width {params.width} --height {params.height} {params.distortion} > {log} 2>&1"

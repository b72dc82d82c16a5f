# selfmvs: photos registered by COLMAP -> depth maps, a fused point cloud and a report.
# This file is the table of contents; the rules live in rules/*.smk.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="pipeline/config.schema.yaml")


include: "rules/common.smk"
include: "rules/config.smk"
include: "rules/demo_scene.smk"
include: "rules/sfm.smk"
# infer and fuse before train: the training rules reuse them (`use rule ... with:`).
include: "rules/prepare.smk"
include: "rules/infer.smk"
include: "rules/fuse.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        all_outputs(),
    default_target: True

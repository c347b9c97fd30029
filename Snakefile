# ParaTAA study workflow. Config says WHAT (config/*.yaml), the profile says WHERE (local/ or slurm/):
#   snakemake --profile local                                # the default study on this machine
#   snakemake --profile local --configfile config/smoke.yaml # CI smoke study
#   snakemake --profile slurm --configfile config/paper.yaml # the paper's study on a SLURM cluster
#   ... then python -m analysis: reports/<study>/tables/, figures/<study>/, reports/<study>/audit.{md,html}
# See workflow/README.md.

configfile: "config/study.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/noise.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/analysis.smk"


rule all:
    input:
        # every job's own output too: one that is missing (deleted, or removed by the verification in
        # common.smk) is made again even where the aggregate still exists
        TARGETS["baseline"],
        TARGETS["group"],
        AGGREGATE,
        rules.tables.output,
        rules.audit.output,
    default_target: True

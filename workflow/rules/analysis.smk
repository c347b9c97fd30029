# Tables, figures and the audit of the paper's claims (python -m analysis, analysis/README.md), run on the
# driver once the aggregate exists. `--config` gets the validated study config the workflow ran, recorded by
# `study_config` as results/<study>/config.yaml, so the analysis' --strict check expects exactly the matrix
# that was computed, whichever --configfile / --config produced it. Tables, figures and the audit are registered
# for `snakemake --report report.html` (one HTML page holding the study; captions in workflow/report/).


report: "../report/workflow.rst"


rule study_config:
    output:
        PATHS["study_config"],
    log:
        PATHS["log_study_config"],
    params:
        # a changed config (seeds, solvers, ...) reruns this rule and, through its output, the analysis
        # key order kept: it is the solvers' (and the tables') order. A function, so that braces in free text (a
        # prompt "a {word} digit", a model path) are not read as wildcards
        config=lambda wc: json.dumps(config),
    localrule: True
    conda:
        "../../environment.yml"
    script:
        "../scripts/study_config.py"


rule tables:
    input:
        aggregate=AGGREGATE,
        config=PATHS["study_config"],
    output:
        report(
            directory(PATHS["tables"]),
            patterns=["{name}.csv"],
            category="Tables",
            caption="../report/tables.rst",
            labels={"table": "{name}"},
        ),
    log:
        PATHS["log_analysis"].format(part="tables"),
    params:
        results=results_of,
        reports=lambda wc, output: str(Path(output[0]).parent),
        figures=lambda wc: PATHS["figures"],  # not written by --only tables
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        analysis_cmd("tables")


rule figures:
    input:
        aggregate=AGGREGATE,
        config=PATHS["study_config"],
    output:
        report(
            directory(PATHS["figures"]),
            patterns=["{name}.png"],
            category="Figures",
            caption="../report/figures.rst",
            labels={"figure": "{name}"},
        ),
    log:
        PATHS["log_analysis"].format(part="figures"),
    params:
        results=results_of,
        reports=lambda wc: PATHS["reports"],  # not written by --only figures
        figures=lambda wc, output: output[0],
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        analysis_cmd("figures")


rule audit:
    input:
        aggregate=AGGREGATE,
        config=PATHS["study_config"],
        figures=PATHS["figures"],
    output:
        md=PATHS["audit_md"],
        html=report(PATHS["audit_html"], category="Audit", caption="../report/audit.rst", labels={"page": "audit"}),
    log:
        PATHS["log_analysis"].format(part="audit"),
    params:
        results=results_of,
        reports=lambda wc, output: str(Path(output.md).parent),
        figures=lambda wc, input: input.figures,
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        analysis_cmd("audit")

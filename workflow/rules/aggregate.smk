# Every run's tables concatenated, after every run's hashes are verified (parataa.storage.write_aggregate).


rule aggregate:
    input:
        TARGETS["baseline"],
        TARGETS["group"],
    output:
        AGGREGATE,
    log:
        PATHS["log_aggregate"],
    params:
        py=PYTHON,
        out=lambda wc, output: str(Path(output[0]).parent),
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        "{params.py} -m parataa.jobs aggregate {params.out} {input} > {log} 2>&1"

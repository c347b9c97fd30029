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
        out=lambda wc, output: str(Path(output[0]).parent),
    localrule: True
    conda:
        "../../environment.yml"
    shell:
        '"$PARATAA_PYTHON" -m parataa.jobs aggregate {params.out:q} {input:q} > {log:q} 2>&1'

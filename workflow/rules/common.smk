# Config validation and the study matrix. All bookkeeping lives in parataa.jobs.plan (tested on its own).
import copy
import json
import shlex
import sys
from pathlib import Path

from parataa.jobs import plan
from parataa.jobs.config import ConfigError, load_schema, validate_config

# The interpreter running Snakemake (a venv's or conda env's) runs the rules' Python commands too, also when
# snakemake was started as .venv/bin/snakemake without activating the environment.
PYTHON = shlex.quote(sys.executable)


# The Snakefile's `configfile: "config/study.yaml"` is loaded even when --configfile names another study, and
# Snakemake deep-merges the two: a study without some solver (or option) would inherit study.yaml's. When
# config files are given on the command line, they (plus --config) alone define the study.
if workflow.config_settings.configfiles:
    config = copy.deepcopy(dict(workflow.config_settings.overwrite_config))
try:
    config = validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

PATHS = plan.paths(config)
TARGETS = plan.targets(config)
AGGREGATE = PATHS["aggregate"]
_n = plan.count(config)
print(
    f"study {config['study']}: {len(config['models'])} model(s) x {len(config['samplers'])} sampler(s) x "
    f"{len(config['steps'])} step count(s): {_n['cells']} cells, {_n['shards']} seed shard(s), "
    f"{_n['runs']} runs in {_n['jobs']} jobs -> {config['results_dir']}/{config['study']}/",
    file=sys.stderr,
)


wildcard_constraints:
    model="[A-Za-z0-9._-]+",
    sampler="ddim|ddpm",
    steps="[0-9]+",
    shard="[0-9]+",
    group="[0-9]+",


def shard_seeds(wc):
    return plan.shards(config)[int(wc.shard)]


def record_path(kind, wc):
    """Where the submitit job id of a rule's job is kept (beside, not inside, its outputs)."""
    g = f"-group-{wc.group}" if kind == "group" else ""
    return f"{PATHS['records']}/{wc.model}_{wc.sampler}-{wc.steps}_shard-{wc.shard}{g}.json"


def analysis_cmd(part):
    """Shell command making one part of the analysis (tables, figures or audit) with python -m analysis."""
    return (
        f"{PYTHON} -m analysis --results {{params.results}} --out {{params.reports}} --figures-dir {{params.figures}} "
        f"--config {{input.config}} --strict --only {part} > {{log}} 2>&1"
    )


def results_of(wc, input):
    """results/<study>, from the aggregate manifest results/<study>/aggregate/manifest.json."""
    return str(Path(input.aggregate).parent.parent)

# Config validation and the study matrix. All bookkeeping lives in parataa.jobs.plan (tested on its own).
import copy
import json
import os
import sys
from pathlib import Path

from parataa.jobs import identity, plan, preflight
from parataa.jobs.config import ConfigError, load_schema, validate_config

# The interpreter running Snakemake (a venv's or conda env's) runs the rules' Python commands too, also when
# snakemake was started as .venv/bin/snakemake without activating the environment. Shell commands name it as
# "$PARATAA_PYTHON", an environment variable the shell expands when the job runs: it is neither a parameter nor
# part of a rule's code, so running Snakemake from another interpreter (venv -> conda, `python -m snakemake`)
# does not re-plan the study. Every placeholder of a shell command is quoted (:q).
os.environ["PARATAA_PYTHON"] = sys.executable


envvars:
    "PARATAA_PYTHON",


# The Snakefile's `configfile: "config/study.yaml"` is loaded even when --configfile names another study, and
# Snakemake deep-merges the two: a study without some solver (or option) would inherit study.yaml's. When
# config files are given on the command line, they (plus --config) alone define the study.
if workflow.config_settings.configfiles:
    config = copy.deepcopy(dict(workflow.config_settings.overwrite_config))
try:
    config = validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# The plan: every job's spec built once, with the weights identity of each model (hashed in full only when a
# weights file changed size or mtime since the last plan; parataa.jobs.identity).
WEIGHTS, _notes = identity.study_weights(config)
for _line in _notes:
    print(_line, file=sys.stderr)
PLAN = plan.Plan(config, WEIGHTS)
PATHS = PLAN.paths
TARGETS = {"baseline": PLAN.targets("baseline"), "group": PLAN.targets("sample")}
AGGREGATE = PATHS["aggregate"]
_n = plan.count(config)
print(
    f"study {config['study']}: {len(config['models'])} model(s) x {len(config['samplers'])} sampler(s) x "
    f"{len(config['steps'])} step count(s): {_n['cells']} cells, {_n['shards']} seed shard(s), "
    f"{_n['runs']} runs in {_n['jobs']} jobs -> {config['results_dir']}/{config['study']}/",
    file=sys.stderr,
)


def canonical(spec):
    """A job spec (parataa.jobs.spec.JobSpec) as a plain dict with every mapping's keys sorted. Snakemake
    compares parameters by their repr, and the order in which a config file lists a model's options changes no
    result, so it must not re-plan a job."""
    return json.loads(json.dumps(spec.to_dict(), sort_keys=True))


def gpus_for(processes):
    """GPUs of a job with this many processes: one each on a CUDA study (device cuda:N needs GPUs 0..N to be
    visible), none on the CPU. submitit's local executor shows a job only the GPUs it asked for."""
    device = str(config["device"])
    if not device.startswith("cuda"):
        return 0
    return max(processes, int(device.split(":")[1]) + 1 if ":" in device else 1)


def job_of(rule, wc):
    return PLAN.job(rule, wc.model, wc.sampler, wc.steps, wc.shard, getattr(wc, "group", None))


# Snakemake sees only declared outputs and keeps what it ran for them in .snakemake/ (lost with a fresh clone or
# a copied results dir). Every finished job is checked against its own record instead: made for the spec the
# config asks for now, its runs intact (cheap: sizes and mtimes, full hashes where they changed). A job that
# fails is forced to run again (as with --forcerun), in a dry run too; nothing is deleted
# (parataa.jobs.plan.Plan.stale, parataa.jobs.verify).
STALE = PLAN.stale()
for _out, _why in STALE.items():
    _what = "baseline" if _out.endswith("manifest.json") else "job group"
    print(f"[plan] {_what} {_out}: {_why}; the job is planned again", file=sys.stderr)


def force_stale(wc):
    """An input function of the baseline and sample rules that adds no input: it marks the stale jobs' outputs
    as forced in the DAG being built (Snakemake evaluates input functions while it builds the DAG, before it
    decides which jobs must run; command-line settings such as --forcerun are fixed before the Snakefile is
    read, so the plan cannot set them)."""
    if STALE:
        workflow.dag.forcefiles.update(STALE)
    return []

# Ctrl-C and `kill -INT` reach the rule jobs, whose launchers cancel their jobs; the launchers also watch this
# process and cancel local jobs if it disappears. A lock left by a Snakemake killed hard is named as such.
preflight.forward_interrupts()
_stale = preflight.stale_lock()
if _stale:
    print(_stale, file=sys.stderr)


def runs_on_slurm():
    """True when a job about to run submits to SLURM (its executor resource, from the profile)."""
    return any(
        j.rule.name in ("baseline", "sample") and str(j.resources.get("executor")) == "slurm"
        for j in workflow.dag.needrun_jobs()
    )


onstart:
    # Before any job starts (real runs only, not -n): with --profile slurm, a scheduler that answers.
    if runs_on_slurm():
        _problem = preflight.check_slurm()
        if _problem:
            raise WorkflowError(_problem)
    preflight.record_driver(sys.argv)


onsuccess:
    preflight.forget_driver()


onerror:
    preflight.forget_driver()


wildcard_constraints:
    model="[A-Za-z0-9._-]+",
    sampler="ddim|ddpm|dpmpp-2m|flow-euler",
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
        '"$PARATAA_PYTHON" -m analysis --results {params.results:q} --out {params.reports:q} '
        f"--figures-dir {{params.figures:q}} --config {{input.config:q}} --strict --only {part} > {{log:q}} 2>&1"
    )


def results_of(wc, input):
    """results/<study>, from the aggregate manifest results/<study>/aggregate/manifest.json."""
    return str(Path(input.aggregate).parent.parent)

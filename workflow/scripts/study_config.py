# Snakemake `script:` of the study_config rule: the validated study config (defaults filled in, --config
# applied) as YAML, the expected matrix `python -m analysis --config ... --strict` checks the results against.
import json
from pathlib import Path

import yaml

sm = snakemake  # noqa: F821 - injected by Snakemake
out = Path(sm.output[0])
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(
    "# The validated study config this workflow ran (defaults filled in, --config applied), written by the\n"
    "# study_config rule; python -m analysis --config reads it as the expected matrix of --strict.\n"
    + yaml.safe_dump(json.loads(sm.params.config), sort_keys=False)
)
Path(sm.log[0]).parent.mkdir(parents=True, exist_ok=True)
Path(sm.log[0]).write_text(f"wrote {out}\n")

import os

if os.environ.get("PARATAA_CLI_PROCESSES") is not None:
    # a worker of `--processes N`: bind it to torch.distributed.run's life before the CLI's imports (seconds on a
    # loaded machine), so that a command ended during them leaves no worker behind (cli/_processes.py)
    from .cli._processes import worker_guard

    if worker_guard() is not None:
        raise SystemExit(1)

from .cli import main  # noqa: E402

raise SystemExit(main())

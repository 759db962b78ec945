"""Ray actors: thin wrappers that take and return `messages/` types and call the plain classes
in `flakebot/`. Only this package (and the CLI and driver entry points) imports Ray."""

from ray._private.worker import WORKER_MODE, global_worker

from flakebot.logs import setup_worker_logging

# A Ray worker loads this package to make an actor: its logs are set up here rather than by a
# job's worker_process_setup_hook, so a run on a kept cluster (`flakebot up`) needs no runtime
# environment and takes the cluster's idle, already started workers (about 0.5 s per actor).
if getattr(global_worker, "mode", None) == WORKER_MODE:
    setup_worker_logging()

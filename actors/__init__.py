"""Ray actors: thin wrappers that take and return `messages/` types and call the plain classes
in `flakebot/`. Only this package (and the CLI and driver entry points) imports Ray."""

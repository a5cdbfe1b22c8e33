"""One module per `capi-consumer` subcommand; each exposes `main(args) -> exit code`."""

"""One module per `clipkit` subcommand; each defines `register(subparsers)`."""

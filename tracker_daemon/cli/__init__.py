"""The command line: `tracker-daemon` and its subcommands (cli), their help texts (cli_help)
and `tracker-daemon status` (status_cli); `python -m tracker_daemon.cli` runs it. May use
everything below it: the daemon, bench, config and the subsystem packages."""

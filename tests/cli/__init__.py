"""The command: options, config file, start-up errors, reloads, workers, metrics, systemd."""

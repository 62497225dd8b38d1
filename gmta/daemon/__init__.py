"""The process shell: start the configured modules, wait for signals, stop cleanly."""

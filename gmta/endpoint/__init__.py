"""Endpoint modules ``smtp``, ``submission`` and ``lmtp``: glue between net and the pipeline."""

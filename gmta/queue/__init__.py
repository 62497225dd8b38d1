"""The durable queue: ``target.queue``, its spool, scheduler, DSNs and the ``gmta queue`` CLI.

- :mod:`gmta.queue.record` — what the queue knows about a message (the ``.meta`` JSON);
- :mod:`gmta.queue.store` — the spool on disk: commit order, fsync, locks, recovery;
- :mod:`gmta.queue.schedule` — the retry delay formula;
- :mod:`gmta.queue.scheduler` — the bounded window of next attempts and the worker pool;
- :mod:`gmta.queue.attempt` — one delivery attempt and its per-recipient results;
- :mod:`gmta.queue.dsn` — RFC 3464 delivery status notifications;
- :mod:`gmta.queue.target` — the ``target.queue`` module;
- :mod:`gmta.queue.cli` — ``gmta queue list|show|flush|remove|hold|release``.

The layout on disk is described in ``docs/reference/queue.md``.
"""

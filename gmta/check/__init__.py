"""Check modules (``check.*``): sender authentication and the other checks.

The interface they implement is ``gmta.pipeline.check``; this package holds
the modules themselves, one job per file: ``spf``, ``dkim``, ``dnsbl``,
``misc`` (require_mx_record, require_matching_rdns), ``authorize_sender``,
``command``; ``action`` reads the ``*_action`` directives, ``dmarc`` is the
RFC 7489 evaluation the endpoints' ``dmarc`` directive enables, and
``dnsfuncs`` adapts gmta's resolver to the DNS hooks of dkimpy and pyspf.
"""

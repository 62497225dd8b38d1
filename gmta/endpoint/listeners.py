"""The listening side every endpoint module shares: bind, serve, hand over on reload.

An endpoint (``smtp``/``submission``/``lmtp``, ``openmetrics``) has ``addresses``
and serves each on a listening socket. :class:`Listeners` binds them (possibly
as root, before privileges are dropped), starts a server on each, and on reload
(:mod:`gmta.daemon.reload`) takes over the old configuration's sockets for the
same addresses instead of binding again, so no connection is refused.
"""

from __future__ import annotations

from gmta.net import listen


class Listeners:
    """Mixin for endpoint modules; call :meth:`init_listeners` in ``configure``."""

    addresses: list
    instance_name: str

    def init_listeners(self) -> None:
        self.servers: list = []
        self.bound_sockets: list = []
        #: On reload: the old configuration's listening socket per address (or None).
        self.inherited_sockets: list = []

    def bind(self) -> None:
        """Possibly as root (ports below 1024); :meth:`start_listeners` serves on these."""
        try:
            for index, address in enumerate(self.addresses):
                old = self.inherited_sockets[index] if self.inherited_sockets else None
                # A duplicate descriptor of the same kernel socket: it stays open
                # (with connections waiting in its backlog) when the old endpoint
                # closes its own descriptor, so a reload refuses no connection.
                self.bound_sockets.append(listen.duplicate(old) if old is not None
                                          else listen.bind(address, self.instance_name))
        except OSError:
            self.unbind()
            raise

    def unbind(self) -> None:
        for sock in self.bound_sockets:
            sock.close()
        self.bound_sockets = []

    def start_listeners(self, make_server) -> None:
        """Serve every address: ``make_server(address, sock)`` returns a started server."""
        if not self.bound_sockets:
            self.bind()
        sockets, self.bound_sockets = self.bound_sockets, []
        for address, sock in zip(self.addresses, sockets, strict=True):
            server = make_server(address, sock)
            self.servers.append(server)
            self.log.info("listening", endpoint=self.instance_name,
                          address=listen.local_address(server, address))

    # -- reload (gmta.daemon.reload) -------------------------------------------------------

    def listening_sockets(self) -> list:
        """The listening socket of each address, in the order of ``addresses``."""
        return [getattr(server, "socket", None) for server in self.servers]

    def inherit_listeners(self, sockets: list) -> None:
        """Before ``bind()``: serve on these sockets of the old configuration (None: bind anew)."""
        self.inherited_sockets = list(sockets)

    def stop_accepting(self) -> None:
        """Close this endpoint's listening descriptors; sockets handed on stay open."""
        for server in self.servers:
            server.close()

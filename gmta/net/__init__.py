"""gevent drivers: listeners, the server session loop, TLS contexts, DNS."""

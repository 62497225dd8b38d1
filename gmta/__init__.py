"""gmta: a mail transfer agent in Python on gevent."""

# A literal, so importing the package never touches the filesystem (peers-and-style 7.6.5).
__version__ = "0.1.0"

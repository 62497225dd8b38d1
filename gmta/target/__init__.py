"""Delivery targets: where accepted mail goes (remote MX, smarthost, LMTP, Maildir)."""

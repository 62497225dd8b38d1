"""The message pipeline: what happens to each recipient between RCPT and the targets."""

"""gmta.randomid: secrets.token_hex's output from a pool of os.urandom bytes."""

from __future__ import annotations

import os
import re

from gmta import randomid


def test_tokens_are_hex_of_the_asked_length_and_distinct():
    tokens = [randomid.token_hex(8) for _ in range(3 * randomid._POOL_SIZE // 8)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tokens)
    assert len(set(tokens)) == len(tokens)   # across refills of the pool too


def test_a_token_larger_than_the_pool():
    assert len(randomid.token_hex(randomid._POOL_SIZE + 1)) == 2 * (randomid._POOL_SIZE + 1)


def test_a_forked_child_does_not_reuse_the_parents_bytes():
    randomid.token_hex(8)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        os.write(write, randomid.token_hex(8).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child != randomid.token_hex(8)

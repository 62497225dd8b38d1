"""Message body buffers: ``ram``, ``fs`` and ``auto`` policies, spill, open, discard."""

from __future__ import annotations

import os

import pytest

from gmta.buffer import BufferPolicy, BufferWriter, FileBuffer, MemoryBuffer


def files_in(path) -> list[str]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def write_all(writer: BufferWriter, *chunks: bytes):
    for chunk in chunks:
        writer.write(chunk)
    return writer.finish()


# -- policies -------------------------------------------------------------------------

def test_ram_policy_never_spills(tmp_path):
    writer = BufferPolicy("ram", 10, str(tmp_path / "buf")).writer()
    body = write_all(writer, b"x" * 1000, b"y" * 1000)
    assert isinstance(body, MemoryBuffer)
    assert body.size == 2000
    assert body.open().read() == b"x" * 1000 + b"y" * 1000
    assert not (tmp_path / "buf").exists()


def test_fs_policy_always_writes_a_file(tmp_path):
    directory = tmp_path / "buf"
    body = write_all(BufferPolicy("fs", 0, str(directory)).writer(), b"a")
    assert isinstance(body, FileBuffer)
    assert os.path.dirname(body.path) == str(directory)
    assert body.size == 1
    with body.open() as f:
        assert f.read() == b"a"


def test_fs_policy_with_an_empty_body_still_writes_a_file(tmp_path):
    body = write_all(BufferPolicy("fs", 0, str(tmp_path)).writer())
    assert isinstance(body, FileBuffer)
    assert body.size == 0
    with body.open() as f:
        assert f.read() == b""
    body.remove()
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("mode", ["ram", "auto"])
def test_empty_body_in_memory(mode, tmp_path):
    body = write_all(BufferPolicy(mode, 10, str(tmp_path)).writer(), b"", b"")
    assert isinstance(body, MemoryBuffer)
    assert body.size == 0
    assert body.open().read() == b""
    assert files_in(tmp_path) == []


def test_default_policy_is_auto_with_one_mebibyte():
    policy = BufferPolicy()
    assert (policy.mode, policy.memory_limit) == ("auto", 1 << 20)
    assert policy.writer().memory_limit == 1 << 20


def test_auto_policy_at_the_limit_stays_in_memory(tmp_path):
    body = write_all(BufferPolicy("auto", 10, str(tmp_path)).writer(), b"12345", b"67890")
    assert isinstance(body, MemoryBuffer)
    assert body.size == 10
    assert files_in(tmp_path) == []


def test_auto_policy_spills_one_byte_past_the_limit(tmp_path):
    writer = BufferPolicy("auto", 10, str(tmp_path)).writer()
    writer.write(b"12345")
    writer.write(b"67890")
    assert files_in(tmp_path) == []
    writer.write(b"!")
    # The file exists from the moment the limit is passed, with what came before.
    [name] = files_in(tmp_path)
    assert name.startswith("body-")
    body = writer.finish()
    assert isinstance(body, FileBuffer)
    assert body.size == 11
    with body.open() as f:
        assert f.read() == b"1234567890!"


def test_auto_policy_spills_a_single_big_chunk(tmp_path):
    body = write_all(BufferPolicy("auto", 4, str(tmp_path)).writer(), b"0123456789")
    assert isinstance(body, FileBuffer)
    with body.open() as f:
        assert f.read() == b"0123456789"


def test_spill_creates_the_directory(tmp_path):
    directory = tmp_path / "a" / "b"
    body = write_all(BufferPolicy("auto", 1, str(directory)).writer(), b"xyz")
    assert directory.is_dir()
    assert os.path.dirname(body.path) == str(directory)


def test_spill_without_a_directory_uses_the_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    body = write_all(BufferWriter(0, None), b"data")
    try:
        assert os.path.dirname(body.path) == str(tmp_path)
    finally:
        body.remove()


# -- reading ----------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [None, 0, 3])
def test_open_is_repeatable(limit, tmp_path):
    body = write_all(BufferWriter(limit, str(tmp_path)), b"hello ", b"world")
    for _ in range(3):
        with body.open() as f:
            assert f.read() == b"hello world"
    # Independent readers: reading one does not move the other.
    first, second = body.open(), body.open()
    assert first.read(5) == b"hello"
    assert second.read() == b"hello world"
    assert first.read() == b" world"
    first.close()
    second.close()


def test_chunks_are_kept_in_order_across_the_spill(tmp_path):
    chunks = [bytes([65 + i]) * (i + 1) for i in range(20)]
    body = write_all(BufferWriter(50, str(tmp_path)), *chunks)
    assert isinstance(body, FileBuffer)
    with body.open() as f:
        assert f.read() == b"".join(chunks)
    assert body.size == sum(map(len, chunks))


# -- freeing ----------------------------------------------------------------------------

def test_remove_deletes_the_file_and_is_idempotent(tmp_path):
    body = write_all(BufferWriter(0, str(tmp_path)), b"abc")
    assert files_in(tmp_path) != []
    body.remove()
    assert files_in(tmp_path) == []
    body.remove()   # already gone: no error


def test_memory_remove_frees_the_data():
    body = write_all(BufferWriter(None), b"abc")
    body.remove()
    assert body.data == b""


def test_discard_removes_the_spilled_file(tmp_path):
    writer = BufferWriter(2, str(tmp_path))
    writer.write(b"abcdef")
    assert len(files_in(tmp_path)) == 1
    writer.discard()
    assert files_in(tmp_path) == []
    writer.discard()  # twice is harmless


def test_discard_in_memory_drops_the_data(tmp_path):
    writer = BufferWriter(100, str(tmp_path))
    writer.write(b"abc")
    writer.discard()
    assert writer._memory == []
    assert files_in(tmp_path) == []


def test_discard_when_the_file_vanished(tmp_path):
    writer = BufferWriter(0, str(tmp_path))
    writer.write(b"abc")
    [name] = files_in(tmp_path)
    os.unlink(tmp_path / name)
    writer.discard()
    assert files_in(tmp_path) == []


def test_discard_after_finish_keeps_the_buffer(tmp_path):
    writer = BufferWriter(0, str(tmp_path))
    writer.write(b"abc")
    body = writer.finish()
    writer.discard()   # the finished buffer now belongs to the caller
    with body.open() as f:
        assert f.read() == b"abc"

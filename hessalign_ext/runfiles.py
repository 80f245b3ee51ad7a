"""A run's files, safe against a crash at any instant (SIGKILL, OOM killer, preemption).

- ``checkpoint.pt`` is replaced atomically: the new one goes to ``checkpoint.pt.tmp`` in the
  same folder (a rename is only atomic within one file system), is flushed and fsync'ed,
  renamed over the old one with ``os.replace``, and the folder is fsync'ed so that the
  rename itself survives a power cut. A crash leaves the old or the new file, never a mix.
- The checkpoint file is ``MAGIC``, the sha256 of the payload, a newline, then the payload
  (``torch.save`` bytes), so a truncated, overwritten or damaged file is refused with
  :class:`CorruptFileError` before anything is unpickled. Recovery: delete the checkpoint,
  and the run restarts from step 0.
- ``results.jsonl`` lines are appended by one ``write`` of the whole line, then fsync'ed.
  A crash mid-write can only tear the *last* line (no final newline): :func:`read_records`
  drops it with a warning. Any other line that is not a JSON record is corruption and
  raises :class:`CorruptFileError` naming the file and line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Iterable, List

import torch

__all__ = ["RunError", "ConfigError", "CorruptFileError", "write_atomic", "append_record", "record_line",
           "read_records", "write_records", "save_checkpoint", "load_checkpoint"]

MAGIC = b"hessalign checkpoint v1\n"
_DIGEST_LEN = 64  # hex sha256


class RunError(Exception):
    """A problem the user has to fix (arguments, files); the CLI prints it as one line."""


class ConfigError(RunError, ValueError):
    """Bad arguments or hparams of a run."""


class CorruptFileError(RunError):
    """A checkpoint or results file that is damaged or does not belong to the run."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: readers (and a restart after a crash) see all or nothing."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")  # fixed name: a crash's leftover is overwritten, not piled up
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def record_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


def append_record(path: Path, record: dict) -> None:
    """Append one results line with a single ``write`` and fsync it.

    The folder entry of a newly created file becomes durable with the checkpoint's folder
    fsync, which follows every append.
    """
    data = memoryview(record_line(record).encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:  # one write; only a short write (disk full) needs another
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> List[dict]:
    """The records of a results file; a torn last line is dropped with a warning on stderr."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends with a newline, as every whole line does
    if torn:
        print(f"hessalign: warning: {path}: ignoring a torn last line ({len(torn)} bytes without a newline, "
              "left by a crash mid-write)", file=sys.stderr)
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise CorruptFileError(f"{path}, line {number}: not a results record: {line[:60]!r}")
        records.append(record)
    return records


def write_records(path: Path, records: Iterable[dict]) -> None:
    write_atomic(path, "".join(record_line(r) for r in records).encode())


def save_checkpoint(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    write_atomic(path, MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def load_checkpoint(path: Path, keys: Iterable[str]) -> dict:
    """The state saved by :func:`save_checkpoint`, after checking its checksum and ``keys``."""
    path = Path(path)
    data = path.read_bytes()
    recovery = "delete it to restart the run from step 0"

    def corrupt(why):
        return CorruptFileError(f"{path}: {why}; {recovery}")

    if not data.startswith(MAGIC):
        raise corrupt("not a hessalign checkpoint (bad header)")
    head = len(MAGIC) + _DIGEST_LEN
    digest, payload = data[len(MAGIC):head], data[head + 1:]
    if data[head:head + 1] != b"\n" or hashlib.sha256(payload).hexdigest().encode() != digest:
        raise corrupt("checksum mismatch (truncated or damaged)")
    # weights_only=False: the state holds numpy/python RNG states; the checksum above shows
    # the bytes are the ones this module wrote
    # map_location cpu: RNG states must be CPU tensors (load_state_dict moves the rest to the model)
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    missing = sorted(set(keys) - set(state)) if isinstance(state, dict) else sorted(keys)
    if missing:
        raise corrupt(f"missing {', '.join(missing)}")
    return state

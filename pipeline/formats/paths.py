"""Checks on the paths a command is given, before anything is written."""

from __future__ import annotations

import hashlib
import os
from typing import Mapping


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):  # symlinks resolved; also for files not there yet
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts, case-insensitive file systems
    except OSError:
        return False  # one of them does not exist (yet)


def check_outputs_distinct(
    inputs: Mapping[str, str | os.PathLike], outputs: Mapping[str, str | os.PathLike]
) -> None:
    """Raise ValueError if an output is one of the inputs or two outputs are one file.

    Writing an output over an input destroys the input (``selfmvs infer same.h5 model.pt same.h5``
    would replace the scene by depth maps). ``inputs`` and ``outputs`` map a role (``"scene"``,
    ``"depth"``) to its path; the message names both roles and paths.
    """
    for out_role, out_path in outputs.items():
        for in_role, in_path in inputs.items():
            if _same_file(out_path, in_path):
                raise ValueError(
                    f"output {out_role} {os.fspath(out_path)!r} is the input {in_role} {os.fspath(in_path)!r}; "
                    "writing it would destroy the input: choose another output path"
                )
    roles = list(outputs.items())
    for index, (role_a, path_a) in enumerate(roles):
        for role_b, path_b in roles[index + 1:]:
            if _same_file(path_a, path_b):
                raise ValueError(
                    f"outputs {role_a} {os.fspath(path_a)!r} and {role_b} {os.fspath(path_b)!r} are the same file"
                )


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes as hex: the content identity of a checkpoint or scene file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()

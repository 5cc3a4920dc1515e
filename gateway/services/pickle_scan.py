"""Find the globals a pickle would import, without unpickling: a symbolic run of its opcodes.

The scanner follows the pickle stack machine closely enough to know, for every GLOBAL, INST and
STACK_GLOBAL, which module and name it resolves, including names fetched back from the memo.
Anything it cannot resolve is reported, never assumed safe.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

SAFE_GLOBALS = frozenset(
    {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "BFloat16Storage"),
        ("torch", "BoolStorage"),
        ("torch", "ByteStorage"),
        ("torch", "FloatStorage"),
        ("torch", "HalfStorage"),
        ("torch", "IntStorage"),
        ("torch", "LongStorage"),
        ("torch", "bfloat16"),
        ("torch", "float16"),
        ("torch", "float32"),
    }
)
STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
    }
)
MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
EXTENSIONS = frozenset({"EXT1", "EXT2", "EXT4"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
MAX_PICKLES = 64


class _Unknown:
    """A stack value the scanner does not track."""


UNKNOWN = _Unknown()
MARK = object()


def looks_like_pickle(path: str, head: bytes) -> bool:
    """Whether a file should be scanned: by name, by a pickle protocol header, or a zip archive."""
    return (
        path.lower().endswith(PICKLE_SUFFIXES)
        or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
        or head.startswith(b"PK\x03\x04")
    )


def scan(stream: BinaryIO) -> list[str]:
    """Problems in a pickle file, or in every pickle inside a zip archive (torch.save format)."""
    start = stream.read(4)
    stream.seek(0)
    if start.startswith(b"PK\x03\x04"):
        return _scan_zip(stream)
    return _scan_stream(stream, "")


def _scan_zip(stream: BinaryIO) -> list[str]:
    try:
        archive = zipfile.ZipFile(stream)
    except zipfile.BadZipFile:
        return ["zip archive could not be read"]
    problems: list[str] = []
    with archive:
        for name in archive.namelist():
            if name.endswith(".pkl"):
                with archive.open(name) as member:
                    problems += _scan_stream(io.BytesIO(member.read()), f"{name}: ")
    return problems


def _scan_stream(stream: BinaryIO, where: str) -> list[str]:
    """Scan consecutive pickles until the end of the stream (legacy torch files hold several)."""
    problems: list[str] = []
    for _ in range(MAX_PICKLES):
        if not stream.read(1):
            return problems
        stream.seek(-1, io.SEEK_CUR)
        try:
            problems += [where + p for p in _globals_problems(stream)]
        except Exception as exc:  # a stream we cannot follow is a finding, not a pass
            return [*problems, f"{where}pickle stream could not be parsed: {type(exc).__name__}"]
    return [*problems, f"{where}more than {MAX_PICKLES} pickles in one file"]


def _globals_problems(stream: BinaryIO) -> Iterator[str]:
    stack: list[object] = []
    memo: dict[int, object] = {}
    for opcode, arg, _pos in pickletools.genops(stream):
        name = opcode.name
        if name in STRING_OPS:
            stack.append(str(arg))
        elif name in MEMO_GET:
            stack.append(memo.get(int(arg), UNKNOWN))  # type: ignore[arg-type]
        elif name in MEMO_PUT:
            memo[int(arg)] = stack[-1] if stack else UNKNOWN  # type: ignore[arg-type]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else UNKNOWN
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            yield from _check(module, attr)
            _apply_stack_effect(opcode, stack)
        elif name == "STACK_GLOBAL":
            name_of = stack.pop() if stack else UNKNOWN
            module_of = stack.pop() if stack else UNKNOWN
            if isinstance(module_of, str) and isinstance(name_of, str):
                yield from _check(module_of, name_of)
            else:
                yield "pickle computes the name of a global it imports; refusing to trust it"
            stack.append(UNKNOWN)
        elif name in EXTENSIONS:
            yield "pickle imports a global through the extension registry"
            stack.append(UNKNOWN)
        else:
            _apply_stack_effect(opcode, stack)


def _apply_stack_effect(opcode: pickletools.OpcodeInfo, stack: list[object]) -> None:
    before, after = opcode.stack_before, opcode.stack_after
    if pickletools.stackslice in before:
        while stack and stack.pop() is not MARK:
            pass
        before = [b for b in before if b not in (pickletools.markobject, pickletools.stackslice)]
    for _ in before:
        if stack:
            stack.pop()
    stack.extend(MARK if item is pickletools.markobject else UNKNOWN for item in after)


def _check(module: str, attr: str) -> Iterator[str]:
    if (module, attr) not in SAFE_GLOBALS:
        yield f"pickle imports unsafe global {module}.{attr}"

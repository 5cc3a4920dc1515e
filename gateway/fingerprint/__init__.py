"""Per-recipient fingerprints of safetensors weights: keyed marking and tracing (no Flask)."""

from gateway.fingerprint.keys import FingerprintKey, Keyring, codeword, keyring
from gateway.fingerprint.marker import CHUNK, MarkedTensor, mark, marked_tensors
from gateway.fingerprint.safetensors import Header, NotSafetensors, TensorInfo, read_header

__all__ = [
    "CHUNK",
    "FingerprintKey",
    "Header",
    "Keyring",
    "MarkedTensor",
    "NotSafetensors",
    "TensorInfo",
    "codeword",
    "keyring",
    "mark",
    "marked_tensors",
    "read_header",
]

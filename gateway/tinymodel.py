"""A small but real Llama-shaped model (config, tokenizer, safetensors weights) made locally."""

from __future__ import annotations

import json
import random
import struct
from array import array
from pathlib import Path
from typing import Any

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def tensor_shapes(config: dict[str, Any]) -> dict[str, list[int]]:
    """Tensor names and shapes of a Llama model with this config."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes = {
        "model.embed_tokens.weight": [v, h],
        "model.norm.weight": [h],
        "lm_head.weight": [v, h],
    }
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}.self_attn.{proj}.weight"] = [h, h]
        shapes[f"{p}.mlp.gate_proj.weight"] = [i, h]
        shapes[f"{p}.mlp.up_proj.weight"] = [i, h]
        shapes[f"{p}.mlp.down_proj.weight"] = [h, i]
        shapes[f"{p}.input_layernorm.weight"] = [h]
        shapes[f"{p}.post_attention_layernorm.weight"] = [h]
    return shapes


def write_safetensors(path: Path, shapes: dict[str, list[int]], seed: int = 7) -> None:
    """F32 tensors: small deterministic normals, norms at one; a valid safetensors file."""
    rng = random.Random(seed)  # noqa: S311 (model weights, not secrets)
    header: dict[str, object] = {"__metadata__": {"format": "pt", "source": "airlock-demo"}}
    blobs, offset = [], 0
    for name in sorted(shapes):
        count = 1
        for dim in shapes[name]:
            count *= dim
        values = array(
            "f",
            [1.0] * count
            if name.endswith("norm.weight")
            else (rng.gauss(0.0, 0.02) for _ in range(count)),
        )
        data = values.tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": shapes[name],
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for data in blobs:
            out.write(data)


def tokenizer(vocab_size: int) -> dict[str, object]:
    """A byte-level WordLevel tokenizer in the `tokenizers` JSON format."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for n in range(vocab_size - 3):
        vocab[f"tok{n}"] = n + 3
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for t, i in list(vocab.items())[:3]
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def write_tiny_model(directory: Path) -> Path:
    """Write every file of the demo model into `directory` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 32}, indent=2) + "\n"
    )
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer(CONFIG["vocab_size"])) + "\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": 512,
            },
            indent=2,
        )
        + "\n"
    )
    (directory / "README.md").write_text(
        "# acme/tiny-llm\n\nA tiny Llama-shaped model generated for the Airlock demo. "
        "Its weights are random: it is for exercising the release path, not for generation.\n"
    )
    write_safetensors(directory / "model.safetensors", tensor_shapes(CONFIG))
    return directory

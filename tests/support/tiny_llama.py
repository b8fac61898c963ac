"""Write a tiny random Llama that real vLLM can serve: run with the vLLM virtualenv's
Python (it has torch, transformers and tokenizers), `python tiny_llama.py DIR`.

Nothing is downloaded: the tokenizer is trained here on a few words, the weights are
random (seeded), and the files are the ones vLLM reads from a local model directory
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json with a chat
template). It answers gibberish, quickly, which is all the tier needs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

SPECIAL = ["<unk>", "<s>", "</s>"]
# Enough text for a byte-level BPE of a few hundred tokens.
TEXT = [
    "the model answers every question it is asked on the host",
    "hello world say hi stream a few tokens and stop when asked",
    "modeld switches models loads them and says when they answer",
    "user assistant system: one two three four five six seven eight nine ten",
] * 20
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def write_tokenizer(out: Path) -> int:
    """Train a byte-level BPE on TEXT and write the files vLLM loads; return its size."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TEXT, trainer=trainer)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 512,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    return int(tokenizer.get_vocab_size())


def write_model(out: Path, vocab: int) -> None:
    """Two layers, 128 wide, heads of 64 (a size vLLM's CPU attention supports)."""
    torch.manual_seed(23)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)


def main() -> None:
    """Write the model into the directory named on the command line."""
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    write_model(out, write_tokenizer(out))
    print(out)


if __name__ == "__main__":
    main()

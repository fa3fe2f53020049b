"""A character-level tokenizer for the toy suite, saved as a Hugging Face fast tokenizer.

One token per character keeps digits aligned with their positions (what arithmetic needs) and makes
token counts equal character counts. A `<s>` is prepended on encode, as Llama tokenizers do, so vLLM,
transformers and lm-eval all see the same ids for the same prompt.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, processors

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARACTERS = "0123456789abcdefghijklmnopqrstuvwxyz +=-*,:?\n"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

# The prompt format is plain text, so a chat turn is just the user's words; the template exists so that
# chat-completions clients (and lm-eval's chat path) work against the toy models too.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def build_tokenizer() -> Tokenizer:
    """The toy vocabulary: four special tokens, then one token per character."""
    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *CHARACTERS))}
    # BPE with no merges splits text into single characters and maps unknown ones to <unk>.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", BOS_ID)]
    )
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def save_tokenizer(out_dir: Path, max_length: int) -> None:
    """Save as a transformers `PreTrainedTokenizerFast` directory with a chat template."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


_CHAR_IDS = {char: index for index, char in enumerate(CHARACTERS, start=len(SPECIAL_TOKENS))}


def encode(text: str) -> list[int]:
    """Character ids without the leading `<s>`; the same ids the saved tokenizer gives (tested)."""
    return [_CHAR_IDS.get(char, UNK_ID) for char in text]


def decode(ids: list[int]) -> str:
    """Characters for ids, dropping special tokens."""
    return "".join(CHARACTERS[i - len(SPECIAL_TOKENS)] for i in ids if i >= len(SPECIAL_TOKENS))


def vocab_size() -> int:
    return len(SPECIAL_TOKENS) + len(CHARACTERS)

"""Server flags: which ones the harness owns (an `extra_args` copy is refused) and which values are secrets
(redacted before anything is stored)."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Server flags the harness sets itself (bench.serve.server_command): an extra_args copy would win silently
# (argparse keeps the last), and results would be recorded under settings that did not run.
HARNESS_FLAGS = {
    "--model": "models[].source names the weights",
    "--served-model-name": "models[].name is the served name",
    "--host": "the server binds 127.0.0.1, where its clients (lm-eval, the load generator) run",
    "--port": "each server gets a free port of its own",
    "--tensor-parallel-size": "use serve.tensor_parallel_size",
    "-tp": "use serve.tensor_parallel_size",
    "--dtype": "use serve.dtype",
    "--max-model-len": "use serve.max_model_len",
    "--gpu-memory-utilization": "use serve.gpu_memory_utilization",
    "--seed": "use run.seed",
    "--revision": "use models[].revision",
    "--config": "a vLLM config file could set any harness flag; give its options in extra_args",
}


def _flag_name(arg: str) -> str:
    """`--foo_bar=1` -> `--foo-bar`: vLLM's parser accepts underscores for dashes."""
    flag = arg.split("=", 1)[0]
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def harness_flag_owner(arg: str) -> str | None:
    """What owns a server flag the harness sets (for the error message), or None for a flag extra_args may set.

    Catches `--port 1`, `--port=1`, `--tensor_parallel_size` and abbreviations argparse would expand (`--hos`).
    """
    flag = _flag_name(arg)
    if flag in HARNESS_FLAGS:
        return HARNESS_FLAGS[flag]
    if flag.startswith("--") and len(flag) > 3:
        for owned, owner in HARNESS_FLAGS.items():
            if owned.startswith(flag):
                return f"{owner} ({flag!r} abbreviates {owned!r})"
    return None


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value the server gets for `flag` (`--max-num-seqs 8`, `--max_num_seqs=8`; the last one wins, as in
    argparse), or None when `args` do not set it."""
    value = None
    for index, arg in enumerate(args):
        name, equals, inline = arg.partition("=")
        if _flag_name(name) == flag:
            value = inline if equals else (args[index + 1] if index + 1 < len(args) else None)
    return value


REDACTED = "<redacted>"
_SECRET_WORDS = frozenset({"token", "key", "apikey", "secret", "password", "passwd", "credential", "credentials"})
_SECRET_VALUE = re.compile(r"(sk-|hf_|ghp_|github_pat_|xox[abp]-|AKIA)[A-Za-z0-9_-]{8,}")


def _secret_flag(flag: str) -> bool:
    """`--api-key`, `--hf-token`, `--db-password`: a word of the flag's name is a secret's (not `--tokenizer`)."""
    return flag.startswith("-") and any(word in _SECRET_WORDS for word in flag.lstrip("-").lower().split("-"))


def redact_args(args: Sequence[str]) -> list[str]:
    """Server arguments with secret-looking values replaced by `<redacted>`, for anything that is stored.

    A value is secret when its flag is named like one (`--api-key X`, `--api-key=X`, `--hf-token X`) or when it
    looks like a provider key itself (`sk-...`, `hf_...`). Flags and every other value are kept.
    """
    redacted, after_secret_flag = [], False
    for arg in args:
        flag, equals, value = arg.partition("=")
        if after_secret_flag and not arg.startswith("-"):
            redacted.append(REDACTED)
        elif equals and _secret_flag(_flag_name(flag)):
            redacted.append(f"{flag}={REDACTED}")
        elif _SECRET_VALUE.search(arg):
            redacted.append(f"{flag}={REDACTED}" if equals and flag.startswith("-") else REDACTED)
        else:
            redacted.append(arg)
        after_secret_flag = not equals and _secret_flag(_flag_name(arg))
    return redacted

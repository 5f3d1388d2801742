#!/usr/bin/env python
"""Train turbogen's embedded default model from scratch and write it to the package assets.

The model is the small Llama-architecture causal LM that ``turbogen demo`` runs on
(``turbogen.models.default_model_config``: hidden 256, 4 layers, 8 heads over 4 KV heads,
tied embeddings), with a byte-level BPE tokenizer of 2048 tokens trained here on the same text.

Source text
-----------
Jane Austen's six completed novels: Sense and Sensibility (1811), Pride and Prejudice (1813),
Mansfield Park (1814), Emma (1815), Northanger Abbey and Persuasion (1817). Austen died in 1817;
the novels are in the public domain everywhere. The texts are the Project Gutenberg
transcriptions as packaged by the CRAN package ``janeaustenr`` 1.0.0 (Julia Silge; the package is
MIT-licensed, the novels themselves public domain), taken from the Debian package
``r-cran-janeaustenr`` version 1.0.0-1 (Debian main, MIT), whose SHA-256 is pinned below.
Nothing in the package is R code we run: the script reads the novels straight out of R's
lazy-load database (``data/Rdata.rdb``), which is a sequence of zlib-compressed, XDR-serialised
character vectors, one line of the printed book per element.

Reproducing
-----------
On Debian or Ubuntu with Debian's archive configured::

    apt-get update                                   # once, so apt-get download finds the package
    PYTHONPATH=python python scripts/train_default_model.py

Elsewhere, fetch ``r-cran-janeaustenr_1.0.0-1_all.deb`` from any Debian mirror and pass it with
``--deb``; ``dpkg-deb`` is then the only Debian tool needed. The run is seeded and single-process;
with the defaults (700 steps of 24 windows of 128 tokens, about 2 passes over the text) it
takes about 24 minutes on one thread of a busy 2-core CPU, reaches a training loss of about 3.3
and a validation loss of about 3.7 nats per token, and overwrites the model files in
``python/turbogen/assets/default_model/`` (its README.md is left alone). Bit-identical weights
need the same torch build and thread count, since float reductions are not associative.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib

import torch
import transformers

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# The script trains the model that turbogen.models defines; import it from this checkout.
sys.path.insert(0, str(REPO_ROOT / "python"))

from turbogen import models  # noqa: E402

DEBIAN_PACKAGE = "r-cran-janeaustenr"
DEBIAN_VERSION = "1.0.0-1"
DEBIAN_DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
RDATA_MEMBER = "./usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"

DEFAULT_OUTPUT = REPO_ROOT / "python" / "turbogen" / "assets" / "default_model"
SAMPLE_PROMPTS = ("It is a truth universally acknowledged", "Mr. Darcy", "She was")
# Plain greedy decoding, overriding the shipped sampling defaults.
GREEDY = dict(do_sample=False, temperature=None, top_k=None, top_p=None, repetition_penalty=None, max_new_tokens=40)


# --------------------------------------------------------------------------------------------
# Fetching the text
# --------------------------------------------------------------------------------------------


def download_deb(directory: pathlib.Path) -> pathlib.Path:
    """``apt-get download`` the pinned package version into ``directory``; return the .deb."""
    subprocess.run(["apt-get", "download", f"{DEBIAN_PACKAGE}={DEBIAN_VERSION}"], cwd=directory, check=True)
    (deb,) = directory.glob(f"{DEBIAN_PACKAGE}_*.deb")
    return deb


def read_rdata_from_deb(deb: pathlib.Path) -> bytes:
    """Check the .deb against the pinned hash and return its ``Rdata.rdb`` bytes."""
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    if digest != DEBIAN_DEB_SHA256:
        raise ValueError(f"{deb}: SHA-256 {digest} is not the pinned {DEBIAN_DEB_SHA256} ({DEBIAN_PACKAGE} {DEBIAN_VERSION})")
    filesystem_tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(filesystem_tar)) as archive:
        member = archive.extractfile(RDATA_MEMBER)
        if member is None:
            raise ValueError(f"{deb} has no {RDATA_MEMBER}")
        return member.read()


def read_lazyload_character_vectors(database: bytes) -> list[list[str | None]]:
    """Decode every object of an R lazy-load database that holds a character vector.

    The database is a concatenation of records: a 4-byte big-endian uncompressed length, then a
    zlib stream holding one object in R's XDR serialisation (format version 2 or 3). Only
    character vectors (STRSXP) without attributes are decoded, which is all this package holds;
    anything else raises ValueError rather than being misread. NA strings come back as None.
    """
    vectors = []
    remaining = database
    while remaining:
        expected_length = int.from_bytes(remaining[:4], "big")
        decompressor = zlib.decompressobj()
        serialized = decompressor.decompress(remaining[4:])
        if not decompressor.eof or len(serialized) != expected_length:
            raise ValueError("truncated or non-zlib record in the lazy-load database")
        vectors.append(_unserialize_character_vector(serialized))
        remaining = decompressor.unused_data
    return vectors


def _unserialize_character_vector(data: bytes) -> list[str | None]:
    STRSXP, CHARSXP, HAS_ATTRIBUTES, NA_LENGTH = 16, 9, 1 << 9, -1
    position = 0

    def read_int() -> int:
        nonlocal position
        value = int.from_bytes(data[position : position + 4], "big", signed=True)
        position += 4
        return value

    if data[:2] != b"X\n":
        raise ValueError("not an XDR-format R serialisation")
    position = 2
    version = read_int()
    read_int(), read_int()  # the writer's R version and the minimal reader version
    if version == 3:
        encoding_name_length = read_int()  # then the writer's native encoding, e.g. "UTF-8"
        position += encoding_name_length
    elif version != 2:
        raise ValueError(f"unsupported R serialisation version {version}")
    flags = read_int()
    if flags & 0xFF != STRSXP or flags & HAS_ATTRIBUTES:
        raise ValueError(f"expected a plain character vector, got SEXP flags {flags:#x}")
    strings: list[str | None] = []
    for _ in range(read_int()):
        if read_int() & 0xFF != CHARSXP:
            raise ValueError("malformed character vector element")
        length = read_int()
        if length == NA_LENGTH:
            strings.append(None)
            continue
        strings.append(data[position : position + length].decode("utf-8"))
        position += length
    return strings


def novel_paragraphs(lines: list[str | None]) -> list[str]:
    """Join a novel's printed lines into paragraphs (blank lines separate them).

    Underscores, the transcription's italics markers, are dropped; they are markup, not text.
    """
    paragraphs, current = [], []
    for line in lines + [""]:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(re.sub(r"\s+", " ", " ".join(current).replace("_", "")))
            current = []
    return paragraphs


def load_novels(deb: pathlib.Path | None) -> list[list[str]]:
    """Return the six novels, each a list of paragraphs, fetching the .deb unless given."""
    with tempfile.TemporaryDirectory() as scratch:
        rdata = read_rdata_from_deb(deb if deb is not None else download_deb(pathlib.Path(scratch)))
    novels = [novel_paragraphs(lines) for lines in read_lazyload_character_vectors(rdata)]
    if len(novels) != 6:
        raise ValueError(f"expected Jane Austen's 6 novels in {DEBIAN_PACKAGE}, found {len(novels)}")
    return novels


# --------------------------------------------------------------------------------------------
# Training data: token stream with paragraph starts
# --------------------------------------------------------------------------------------------


class WindowSampler:
    """Random training windows ``[<s>] + tokens[start : start + length]`` from one token stream.

    Windows start at paragraph starts only, so every window begins the way a user's prompt does
    (``<s>`` followed by the start of some text) and the model learns what ``<s>`` means.
    Paragraphs are separated by a newline; novels by ``</s>``.
    """

    def __init__(self, tokenizer, novels: list[list[str]], length: int) -> None:
        self.length = length
        stream: list[int] = []
        starts: list[int] = []
        for paragraphs in novels:
            encoded = tokenizer.backend_tokenizer.encode_batch(
                [paragraph + "\n" for paragraph in paragraphs], add_special_tokens=False
            )
            for encoding in encoded:
                starts.append(len(stream))
                stream.extend(encoding.ids)
            stream.append(tokenizer.eos_token_id)
        self.tokens = torch.tensor(stream, dtype=torch.long)
        # Pad so a window starting at the last paragraph is full length.
        self.tokens = torch.cat([self.tokens, torch.full((length,), tokenizer.eos_token_id)])
        self.starts = torch.tensor(starts, dtype=torch.long)
        self.bos_id = tokenizer.bos_token_id

    def batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        chosen = self.starts[torch.randint(len(self.starts), (batch_size,), generator=generator)]
        offsets = chosen[:, None] + torch.arange(self.length)[None, :]
        bos = torch.full((batch_size, 1), self.bos_id, dtype=torch.long)
        return torch.cat([bos, self.tokens[offsets]], dim=1)

    @property
    def num_tokens(self) -> int:
        return int(len(self.tokens) - self.length)


def split_novels(novels: list[list[str]], validation_fraction: float) -> tuple[list[list[str]], list[list[str]]]:
    """Hold out the last ``validation_fraction`` of each novel's paragraphs for validation."""
    train, validation = [], []
    for paragraphs in novels:
        cut = len(paragraphs) - max(1, int(len(paragraphs) * validation_fraction))
        train.append(paragraphs[:cut])
        validation.append(paragraphs[cut:])
    return train, validation


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to a tenth of it."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def mean_loss(model, batches: list[torch.Tensor]) -> float:
    model.eval()
    losses = [model(input_ids=batch, labels=batch).loss.item() for batch in batches]
    model.train()
    return sum(losses) / len(losses)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # model initialisation; data order has its own generator
    started = time.perf_counter()

    novels = load_novels(args.deb)
    print(f"corpus: {sum(map(len, novels))} paragraphs, {sum(len(p) for n in novels for p in n)} characters", flush=True)
    tokenizer = models.build_byte_level_tokenizer((p for n in novels for p in n), vocab_size=args.vocab_size)
    train_novels, validation_novels = split_novels(novels, validation_fraction=0.02)
    train_windows = WindowSampler(tokenizer, train_novels, args.seq_len)
    validation_windows = WindowSampler(tokenizer, validation_novels, args.seq_len)
    print(
        f"tokenizer: {len(tokenizer)} tokens; train stream {train_windows.num_tokens} tokens, "
        f"validation {validation_windows.num_tokens}",
        flush=True,
    )

    model = transformers.LlamaForCausalLM(models.default_model_config(vocab_size=len(tokenizer)))
    model.generation_config = models.default_generation_config()
    model.train()
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", flush=True)

    # Weight decay on matrices only; norms' gains stay free.
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    undecayed = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.1}, {"params": undecayed, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    data_generator = torch.Generator().manual_seed(args.seed)
    validation_generator = torch.Generator().manual_seed(args.seed + 1)
    validation_batches = [validation_windows.batch(args.batch_size, validation_generator) for _ in range(8)]

    train_loss_ema = None
    for step in range(args.steps):
        step_lr = learning_rate(step, args.steps, args.lr, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        batch = train_windows.batch(args.batch_size, data_generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss_ema = loss.item() if train_loss_ema is None else 0.95 * train_loss_ema + 0.05 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - started
            message = f"step {step + 1}/{args.steps}  train loss (EMA) {train_loss_ema:.3f}  lr {step_lr:.2e}  {elapsed:.0f}s"
            if (step + 1) % (args.log_every * 5) == 0 or step + 1 == args.steps:
                message += f"  validation loss {mean_loss(model, validation_batches):.3f}"
            print(message, flush=True)

    training_seconds = time.perf_counter() - started
    model.eval()
    final_validation = mean_loss(model, validation_batches)
    print(f"trained in {training_seconds:.0f}s; final validation loss {final_validation:.3f}", flush=True)

    save(model, tokenizer, args.output, args.save_dtype)
    # Check what was written, as it will be loaded: validation loss and greedy samples.
    shipped, shipped_tokenizer = models.load_model(args.output)
    print(f"validation loss of the saved {args.save_dtype} weights: {mean_loss(shipped, validation_batches):.3f}")
    for name in sorted(args.output.iterdir()):
        print(f"  {name.name}: {name.stat().st_size / 1e6:.2f} MB")
    for prompt in SAMPLE_PROMPTS:
        inputs = shipped_tokenizer(prompt, return_tensors="pt")
        output = shipped.generate(**inputs, **GREEDY)
        print(f"greedy: {shipped_tokenizer.decode(output[0], skip_special_tokens=True)!r}", flush=True)


def save(model, tokenizer, output: pathlib.Path, dtype_name: str) -> None:
    """Write config, generation config, safetensors weights and tokenizer files to ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob("*.safetensors*"):
        stale.unlink()
    model.to(getattr(torch, dtype_name)).save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", type=pathlib.Path, help=f"a local {DEBIAN_PACKAGE}_{DEBIAN_VERSION}_all.deb (default: apt-get download it)")
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--warmup-steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--save-dtype", choices=("bfloat16", "float32"), default="bfloat16")
    return parser.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())

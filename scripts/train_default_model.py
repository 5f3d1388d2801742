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

The draft model (``--draft``)
-----------------------------
``--draft`` trains instead the embedded model's draft for speculative decoding
(``turbogen.models.default_draft_config``: the default model cut to ONE layer, same hidden size and the
same tokenizer), distilled from the shipped default model, which must already be in place (``--target``).
Speculation accepts a draft token when it equals the target's, so the draft is trained to predict the
target, not the text: it starts from the target's own embeddings, first layer and final norm, and
minimises the KL divergence from the target's next-token distribution plus a cross-entropy on the
target's argmax token, on a mix of book windows and the target's own continuations (greedy, greedy with a
repetition penalty, and sampled with the shipped defaults) of book paragraphs, which are the contexts it
drafts in. It reports the draft's greedy acceptance (the fraction of the target's greedy tokens that
the draft predicts from the same prefix) on held-out text and on the sample prompts, and the tokens
per verification that speculation with k drafts would then emit, and writes config.json,
generation_config.json and model.safetensors to ``python/turbogen/assets/draft_model/`` (no tokenizer
files: the draft uses the target's; its README.md is left alone)::

    PYTHONPATH=python python scripts/train_default_model.py --draft
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
DEFAULT_DRAFT_OUTPUT = REPO_ROOT / "python" / "turbogen" / "assets" / "draft_model"
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


# --------------------------------------------------------------------------------------------
# The draft (--draft): distillation from the shipped target
# --------------------------------------------------------------------------------------------

# How the target continues the paragraphs whose continuations the draft trains on, with the share
# of the pool each gets: plain greedy (the speculative benchmark), greedy under the demo's repetition
# penalty, and sampling with the shipped defaults (a coupled-sampling draft sees these contexts).
CONTINUATION_MODES = (
    (0.5, dict(do_sample=False, temperature=None, top_k=None, top_p=None, repetition_penalty=None)),
    (0.25, dict(do_sample=False, temperature=None, top_k=None, top_p=None, repetition_penalty=1.3)),
    (0.25, dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1)),
)
# Drafts per verification over which the acceptance report sweeps.
REPORTED_DRAFT_COUNTS = (1, 2, 3, 4, 5, 6, 8)
# Tokens of each held-out paragraph that the target continues for the acceptance report (after <s>).
HELD_OUT_PREFIX = 16


@torch.no_grad()
def target_continuations(target, windows: WindowSampler, count: int, generator: torch.Generator,
                         prefix_lengths: tuple[int, int] = (4, 48), batch_size: int = 32) -> torch.Tensor:
    """``[count, windows.length + 1]`` sequences: ``<s>`` + the start of a random paragraph (a random
    number of tokens in ``prefix_lengths``) continued by the target to the window's length, in the
    :data:`CONTINUATION_MODES` mix (seeded through ``generator``)."""
    total = windows.length + 1
    sequences = []
    batches = math.ceil(count / batch_size)
    cumulative_shares = [sum(share for share, _ in CONTINUATION_MODES[: i + 1]) for i in range(len(CONTINUATION_MODES))]
    boundaries = [round(batches * share) for share in cumulative_shares]
    for index in range(batches):
        mode = next(settings for boundary, (_, settings) in zip(boundaries, CONTINUATION_MODES) if index < boundary)
        prefix = int(torch.randint(prefix_lengths[0], prefix_lengths[1] + 1, (), generator=generator))
        prompts = windows.batch(batch_size, generator)[:, : prefix + 1]
        if mode["do_sample"]:
            torch.manual_seed(int(torch.randint(2**31, (), generator=generator)))
        new_tokens = total - prompts.shape[1]
        output = target.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=target.config.pad_token_id, **mode)
        sequences.append(output[:, :total])
    return torch.cat(sequences)[:count]


def distillation_loss(draft_logits: torch.Tensor, target_logits: torch.Tensor, argmax_weight: float) -> torch.Tensor:
    """KL(target || draft) of the next-token distributions, mean over positions, plus ``argmax_weight``
    times the draft's cross-entropy on the target's argmax token (what greedy speculation accepts)."""
    vocab = draft_logits.shape[-1]
    draft_log_probs = torch.log_softmax(draft_logits.float().reshape(-1, vocab), dim=-1)
    target_log_probs = torch.log_softmax(target_logits.float().reshape(-1, vocab), dim=-1)
    kl = torch.nn.functional.kl_div(draft_log_probs, target_log_probs, log_target=True, reduction="batchmean")
    argmax_ce = torch.nn.functional.nll_loss(draft_log_probs, target_log_probs.argmax(-1))
    return kl + argmax_weight * argmax_ce


@torch.no_grad()
def greedy_acceptance(draft, target, sequences: torch.Tensor, first_generated: int) -> dict:
    """How speculation with ``draft`` fares on the target's greedy continuations ``sequences``
    (``[rows, length]``, generated from position ``first_generated`` on; no padding).

    For greedy decoding, teacher forcing is exact: wherever the draft's argmax equals the target's
    token, the draft's next context is the target's, so the number of drafts the target accepts
    from position p on is the run of consecutive agreements starting at p. Returns ``agreement``
    (the fraction of generated tokens the draft predicts) and ``tokens_per_verify[k]`` (mean tokens
    one verification with up to k drafts emits, the target's own token included), walking each row as
    speculation does: accept the run (at most k), emit one target token, continue after it.
    """
    predicted = draft(input_ids=sequences).logits.argmax(-1)[:, first_generated - 1 : -1]
    actual = sequences[:, first_generated:]
    agrees = (predicted == actual).tolist()
    tokens_per_verify = {}
    for k in REPORTED_DRAFT_COUNTS:
        emitted = verifies = 0
        for row in agrees:
            position = 0
            while position < len(row):
                run = 0
                while run < k and position + run < len(row) and row[position + run]:
                    run += 1
                step = min(run + 1, len(row) - position)
                emitted, verifies, position = emitted + step, verifies + 1, position + step
        tokens_per_verify[k] = emitted / verifies
    return dict(agreement=float((predicted == actual).float().mean()), tokens_per_verify=tokens_per_verify)


def prompt_continuations(target, tokenizer, prompts, new_tokens: int) -> list[tuple[torch.Tensor, int]]:
    """The target's plain greedy continuation of each prompt: ``(sequence [1, length], prompt length)``."""
    results = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt")
        settings = dict(GREEDY, max_new_tokens=new_tokens, pad_token_id=target.config.pad_token_id)
        output = target.generate(**inputs, **settings)
        results.append((output, inputs["input_ids"].shape[1]))
    return results


def report_acceptance(draft, target, tokenizer, held_out: torch.Tensor, first_generated: int) -> None:
    """Print the draft's greedy acceptance on held-out paragraphs and on the sample prompts."""
    def line(name: str, result: dict) -> str:
        per_k = ", ".join(f"k={k}: {value:.2f}" for k, value in result["tokens_per_verify"].items())
        return f"  {name}: agreement {result['agreement']:.3f}; tokens per verify {per_k}"

    held_out_result = greedy_acceptance(draft, target, held_out, first_generated)
    print(line("held-out paragraphs, greedy continuations", held_out_result))
    continuations = prompt_continuations(target, tokenizer, SAMPLE_PROMPTS, 128)
    for prompt, (sequence, prompt_length) in zip(SAMPLE_PROMPTS, continuations):
        print(line(repr(prompt), greedy_acceptance(draft, target, sequence, prompt_length)), flush=True)


def train_draft(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    target, tokenizer = models.load_model(args.target)
    target.requires_grad_(False)
    novels = load_novels(args.deb)
    train_novels, validation_novels = split_novels(novels, validation_fraction=0.02)
    train_windows = WindowSampler(tokenizer, train_novels, args.seq_len)
    validation_windows = WindowSampler(tokenizer, validation_novels, args.seq_len)

    config = models.default_draft_config(vocab_size=len(tokenizer))
    draft = transformers.LlamaForCausalLM(config)
    # Start from the target: its embeddings (tied, so the output layer too), first layer and final norm.
    draft.model.embed_tokens.load_state_dict(target.model.embed_tokens.state_dict())
    draft.model.layers[0].load_state_dict(target.model.layers[0].state_dict())
    draft.model.norm.load_state_dict(target.model.norm.state_dict())
    draft.generation_config = models.default_draft_generation_config()
    draft.train()
    print(f"draft: {sum(p.numel() for p in draft.parameters()) / 1e6:.2f} M parameters, "
          f"{config.num_hidden_layers} layer", flush=True)

    data_generator = torch.Generator().manual_seed(args.seed)
    validation_generator = torch.Generator().manual_seed(args.seed + 1)
    pool = target_continuations(target, train_windows, args.continuations, data_generator)
    validation_pool = target_continuations(target, validation_windows, 64, validation_generator,
                                           prefix_lengths=(HELD_OUT_PREFIX, HELD_OUT_PREFIX))
    held_out = validation_pool[: 64 // 2]  # the plain greedy half: the mode comes first in the mix
    validation_batches = [validation_windows.batch(args.batch_size, validation_generator) for _ in range(4)]
    validation_batches += list(validation_pool.split(args.batch_size))
    print(f"target continuations: {len(pool)} for training, {len(validation_pool)} held out "
          f"({time.perf_counter() - started:.0f}s)", flush=True)

    @torch.no_grad()
    def validation_loss() -> float:
        draft.eval()
        losses = [distillation_loss(draft(input_ids=b).logits, target(input_ids=b).logits, args.argmax_weight).item()
                  for b in validation_batches]
        draft.train()
        return sum(losses) / len(losses)

    print(f"before training: validation loss {validation_loss():.3f}", flush=True)
    draft.eval()
    report_acceptance(draft, target, tokenizer, held_out, first_generated=HELD_OUT_PREFIX + 1)
    draft.train()

    decayed = [p for p in draft.parameters() if p.dim() >= 2]
    undecayed = [p for p in draft.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.1}, {"params": undecayed, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    generated_rows = round(args.batch_size * args.continuation_share)
    loss_ema = None
    for step in range(args.steps):
        step_lr = learning_rate(step, args.steps, args.lr, args.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = step_lr
        chosen = torch.randint(len(pool), (generated_rows,), generator=data_generator)
        batch = torch.cat([train_windows.batch(args.batch_size - generated_rows, data_generator), pool[chosen]])
        with torch.no_grad():
            target_logits = target(input_ids=batch).logits
        loss = distillation_loss(draft(input_ids=batch).logits, target_logits, args.argmax_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            message = (f"step {step + 1}/{args.steps}  distillation loss (EMA) {loss_ema:.3f}  lr {step_lr:.2e}  "
                       f"{time.perf_counter() - started:.0f}s")
            if (step + 1) % (args.log_every * 5) == 0 or step + 1 == args.steps:
                message += f"  validation {validation_loss():.3f}"
            print(message, flush=True)

    training_seconds = time.perf_counter() - started
    print(f"trained in {training_seconds:.0f}s", flush=True)
    save_draft(draft, args.output, args.save_dtype)
    shipped, _ = models.load_draft_model(args.output)
    for name in sorted(args.output.iterdir()):
        print(f"  {name.name}: {name.stat().st_size / 1e6:.2f} MB")
    print(f"the saved {args.save_dtype} draft's greedy acceptance:", flush=True)
    report_acceptance(shipped, target, tokenizer, held_out, first_generated=HELD_OUT_PREFIX + 1)


def save_draft(model, output: pathlib.Path, dtype_name: str) -> None:
    """Write config, generation config and safetensors weights (no tokenizer) to ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob("*.safetensors*"):
        stale.unlink()
    model.to(getattr(torch, dtype_name)).save_pretrained(output, safe_serialization=True)
    for written in output.iterdir():
        written.chmod(0o644)  # safetensors may write owner-only files; the package ships them to everyone


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
    parser.add_argument("--draft", action="store_true",
                        help="train the draft model for speculative decoding, distilled from --target")
    parser.add_argument("--target", type=pathlib.Path, default=DEFAULT_OUTPUT,
                        help="with --draft: the trained model to distil (default: the shipped default model)")
    parser.add_argument("--output", type=pathlib.Path, default=None,
                        help=f"default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)}, "
                             f"with --draft {DEFAULT_DRAFT_OUTPUT.relative_to(REPO_ROOT)}")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 24, with --draft 16")
    parser.add_argument("--steps", type=int, default=None, help="default: 700, with --draft 1000")
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: 40, with --draft 50")
    parser.add_argument("--lr", type=float, default=None, help="default: 2e-3, with --draft 1e-3")
    parser.add_argument("--continuations", type=int, default=2048,
                        help="with --draft: target continuations generated for training")
    parser.add_argument("--continuation-share", type=float, default=0.5,
                        help="with --draft: the share of each batch taken from the continuations "
                             "(the rest: book windows)")
    parser.add_argument("--argmax-weight", type=float, default=0.5,
                        help="with --draft: weight of the cross-entropy on the target's argmax token")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--save-dtype", choices=("bfloat16", "float32"), default="bfloat16")
    args = parser.parse_args(argv)
    if args.draft:
        defaults = dict(output=DEFAULT_DRAFT_OUTPUT, batch_size=16, steps=1000, warmup_steps=50, lr=1e-3)
    else:
        defaults = dict(output=DEFAULT_OUTPUT, batch_size=24, steps=700, warmup_steps=40, lr=2e-3)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


if __name__ == "__main__":
    arguments = parse_args()
    (train_draft if arguments.draft else train)(arguments)

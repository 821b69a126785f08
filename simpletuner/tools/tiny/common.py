"""Pieces every tiny-model builder shares: seeding, quiet builds, a locally
trained CLIP BPE tokenizer, CLIP text-encoder configs and a tiny VAE with the
real 8x downscale."""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator


# --------------------------------------------------------------------------- #
# Shared pieces
# --------------------------------------------------------------------------- #

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

#: The words the tiny BPE tokenizers are trained on.  Every word here encodes
#: to a handful of known ids; unseen words still encode, via single bytes.
WORDS: tuple[str, ...] = tuple(
    """
    a an the of in on at to with and or for from by as is are was be this that
    it its his her their our your my no not one two three four five six seven
    eight nine ten 0 1 2 3 4 5 6 7 8 9
    photo photograph picture image painting drawing sketch illustration render
    portrait landscape closeup close up view shot scene style art artwork digital
    oil watercolor pencil ink cartoon anime realistic photorealistic detailed
    high quality resolution sharp focus blurry bokeh lighting light dark shadow
    red green blue yellow orange purple pink brown black white gray grey cyan
    magenta violet gold golden silver beige teal navy maroon colour color colorful
    bright pale vivid pastel neon
    square circle triangle rectangle star heart shape shapes line lines dot dots
    cube sphere cone cylinder pyramid round flat curved straight stripe striped
    checkered pattern grid small large big tiny huge tall short long wide narrow
    left right top bottom center middle front back above below inside outside
    next near far behind between over under
    cat dog bird fish horse cow sheep lion tiger bear rabbit mouse duck fox wolf
    person man woman boy girl child people face hand eye eyes hair smile
    tree trees flower flowers grass leaf leaves forest garden field mountain
    mountains hill river lake sea ocean beach sand water sky cloud clouds sun
    moon stars rain snow fire ice rock stone wood road street city town house
    building room wall door window table chair bed car bus train boat plane
    bicycle book cup bottle box ball hat shirt dress shoes bag apple banana
    cake bread pizza food
    morning evening night day sunset sunrise summer winter spring autumn
    beautiful pretty cute old new young happy sad empty full simple minimal
    modern vintage background foreground texture surface metal glass paper
    plastic
    standing sitting running walking flying swimming lying looking holding
    wearing playing eating made covered filled
    very much many some all each every more most
    """.split()
)


@contextlib.contextmanager
def quiet_build() -> Iterator[None]:
    """Silence library logging and warnings while building (restored afterwards)."""
    import diffusers
    import transformers

    t_level = transformers.logging.get_verbosity()
    d_level = diffusers.logging.get_verbosity()
    t_bar = transformers.logging.is_progress_bar_enabled()
    d_bar = diffusers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.logging.set_verbosity(t_level)
        diffusers.logging.set_verbosity(d_level)
        if t_bar:
            transformers.logging.enable_progress_bar()
        if d_bar:
            diffusers.utils.logging.enable_progress_bar()


def seed_everything(seed: int) -> None:
    """Seed torch before constructing each model so weights are reproducible."""
    import torch

    torch.manual_seed(seed)


def _byte_alphabet() -> list[str]:
    """The 256 byte-level characters of GPT-2/CLIP BPE, in CLIP's vocab order."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _learn_bpe_merges(words: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn CLIP-style BPE merges (``</w>`` on each word's last symbol).

    A plain-Python trainer instead of ``tokenizers.trainers.BpeTrainer``,
    whose tie-breaking between equally frequent pairs varies from run to run;
    here ties go to the lexicographically smallest pair, so the vocabulary is
    identical every time.
    """
    counts: dict[tuple[str, ...], int] = {}
    for word in words:
        word = word.lower()
        if word:
            symbols = tuple(word[:-1]) + (word[-1] + "</w>",)
            counts[symbols] = counts.get(symbols, 0) + 1

    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: dict[tuple[str, str], int] = {}
        for symbols, n in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        left, right = best
        merged_counts: dict[tuple[str, ...], int] = {}
        for symbols, n in counts.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    out.append(left + right)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            key = tuple(out)
            merged_counts[key] = merged_counts.get(key, 0) + n
        counts = merged_counts
    return merges


def write_clip_tokenizer(folder: str | Path, num_merges: int = 600) -> "transformers.CLIPTokenizer":  # noqa: F821
    """Train a small CLIP BPE tokenizer on :data:`WORDS` and save it into *folder*.

    The vocabulary mirrors CLIP's: 256 byte characters, the same 256 with
    ``</w>``, the learned merges, then ``<|startoftext|>`` and ``<|endoftext|>``.
    ``vocab.json``/``merges.txt`` are written first and loaded back through
    ``CLIPTokenizer.from_pretrained`` (constructing ``CLIPTokenizer`` with file
    arguments silently ignores them in transformers 5.x), then
    ``save_pretrained`` writes the remaining config files.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    merges = _learn_bpe_merges(WORDS, num_merges)

    base = _byte_alphabet()
    tokens = base + [c + "</w>" for c in base]
    seen = set(tokens)
    for left, right in merges:
        merged = left + right
        if merged not in seen:
            seen.add(merged)
            tokens.append(merged)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=None), encoding="utf-8")
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for left, right in merges:
            f.write(f"{left} {right}\n")

    tokenizer = CLIPTokenizer.from_pretrained(
        str(folder),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=77,
    )
    _check_tokenizer(tokenizer)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def _check_tokenizer(tokenizer) -> None:
    """Fail loudly if the tokenizer lost its vocabulary (the transformers 5.x pitfall)."""
    if len(tokenizer) < 100:
        raise RuntimeError(f"tiny CLIP tokenizer has only {len(tokenizer)} tokens; vocab.json was not loaded")
    text = "a red square photo of a blue circle"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(set(ids)) < 6 or tokenizer.unk_token_id in ids or tokenizer.decode(ids) != text:
        raise RuntimeError(f"tiny CLIP tokenizer does not round-trip {text!r}: {ids}")


def clip_tokenizer_files() -> dict[str, bytes]:
    """The files of a freshly trained tiny CLIP tokenizer, by name."""
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def load_clip_tokenizer(files: dict[str, bytes]):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    _check_tokenizer(tokenizer)
    return tokenizer


def add_vocab_files(files: dict[str, bytes], *folders: Path) -> None:
    """Put ``vocab.json``/``merges.txt`` next to ``tokenizer.json``, as in the real repos."""
    for folder in folders:
        for name in ("vocab.json", "merges.txt"):
            (folder / name).write_bytes(files[name])


def clip_text_config(tokenizer, *, hidden_size: int = 32, projection_dim: int = 32, num_layers: int = 2):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=projection_dim,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vae(seed: int, *, scaling_factor: float, latent_channels: int = 4, **extra):
    """An AutoencoderKL with four blocks, i.e. the real 8x spatial downscale."""
    from diffusers import AutoencoderKL

    seed_everything(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
        **extra,
    )




def trained_like_posterior(vae, seed: int) -> None:
    """Give a random tiny VAE the latent statistics of a trained one, in place.

    A randomly initialised encoder predicts a posterior standard deviation of
    about 1 around means of about 0.3, so sampled latents are mostly noise and
    two clearly different images get nearly the same latents.  A trained VAE
    is nearly deterministic and, after ``scaling_factor``, has latents of
    about unit standard deviation.  This sets the log-variance half of
    ``quant_conv`` to a constant (std ~0.0025) and scales the mean half so
    that scaled latents of random images have unit standard deviation.
    """
    import torch

    channels = vae.config.latent_channels
    generator = torch.Generator().manual_seed(seed)
    probe = torch.rand(4, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        weight, bias = vae.quant_conv.weight, vae.quant_conv.bias
        weight[channels:] = 0
        bias[channels:] = -12.0
        spread = vae.encode(probe).latent_dist.mean.std() * vae.config.scaling_factor
        weight[:channels] /= spread
        bias[:channels] /= spread

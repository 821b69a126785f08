"""A tiny T5 tokenizer (sentencepiece unigram, trained locally) and encoder.

The tokenizer is trained deterministically (one thread, fixed seed) on
sentences made of :data:`~simpletuner.tools.tiny.common.WORDS`, with T5's
special ids: pad 0, eos 1, unk 2 and no bos.  It is saved as ``spiece.model``
plus the configs, the layout ``T5Tokenizer``/``T5TokenizerFast.from_pretrained``
read, and a ``tokenizer.json`` so loading needs no conversion.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from simpletuner.tools.tiny.common import WORDS, seed_everything

#: Unigram vocabulary size before T5's ``<extra_id_*>`` tokens are appended.
T5_VOCAB_SIZE = 500
T5_EXTRA_IDS = 100
T5_MAX_LENGTH = 512


def _training_sentences(seed: int = 0, count: int = 2000) -> list[str]:
    rng = random.Random(seed)
    words = list(WORDS)
    sentences = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    sentences += [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(count)]
    return sentences


def _train_spiece_model(vocab_size: int = T5_VOCAB_SIZE) -> bytes:
    import sentencepiece as spm

    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_sentences()),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,
        byte_fallback=False,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def write_t5_tokenizer(folder: str | Path, model_max_length: int = T5_MAX_LENGTH):
    """Train the tiny T5 tokenizer, save it into *folder* and return it (loaded back)."""
    from transformers import T5Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(_train_spiece_model())
    tokenizer = T5Tokenizer.from_pretrained(
        str(folder), extra_ids=T5_EXTRA_IDS, model_max_length=model_max_length, legacy=False
    )
    tokenizer.save_pretrained(str(folder))
    tokenizer = T5Tokenizer.from_pretrained(str(folder))
    _check_t5_tokenizer(tokenizer)
    return tokenizer


def _check_t5_tokenizer(tokenizer) -> None:
    if (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) != (0, 1, 2):
        raise RuntimeError(
            "tiny T5 tokenizer has the wrong special ids: "
            f"pad={tokenizer.pad_token_id} eos={tokenizer.eos_token_id} unk={tokenizer.unk_token_id}"
        )
    text = "a red square photo of a blue circle"
    ids = tokenizer(text).input_ids
    if ids[-1] != 1 or 2 in ids or tokenizer.decode(ids, skip_special_tokens=True) != text:
        raise RuntimeError(f"tiny T5 tokenizer does not round-trip {text!r}: {ids}")


def tiny_t5_encoder(tokenizer, seed: int, d_model: int = 32, *, num_layers: int = 2, num_heads: int = 4, d_ff: int | None = None):
    """A randomly initialised ``T5EncoderModel`` sized for *tokenizer* (seeded)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff or 2 * d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )
    seed_everything(seed)
    return T5EncoderModel(config)

"""Tiny, seeded, randomly initialised checkpoints written with `save_pretrained`.

They are PLUMBING, not research features: the `offline` preset and the tests load them through the
same code path as real checkpoints, so the whole pipeline runs without downloads. Each directory is
built once (in a temp dir, then renamed: concurrent workers never see half a checkpoint) and holds a
README.txt saying so.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

_README = (
    "{what}\n\nPLUMBING ONLY: a tiny randomly initialised model (seed {seed}) written by "
    "mer_pipe.extractors.tiny so the pipeline and its tests run offline. Its features carry no "
    "emotion information; use real checkpoints (the `paper` preset) for research.\n"
)
_SEED = 0


def _ensure(dir: str | Path, build: Callable[[Path], None], what: str, readme: str | None = None) -> Path:
    """Build into a sibling temp dir and rename it into place unless `dir` already holds a checkpoint.
    readme: the README.txt text (default: the tiny PLUMBING note about `what`)."""
    target = Path(dir).expanduser().resolve()
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise for a tiny checkpoint
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            build(tmp)
        (tmp / "README.txt").write_text(readme if readme is not None else _README.format(what=what, seed=_SEED))
        _share(tmp)
        if target.exists() and not any(target.iterdir()):
            target.rmdir()
        try:
            os.rename(tmp, target)
        except OSError:
            # another worker renamed its copy first; theirs is identical (same seed)
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _share(folder: Path) -> None:
    """Give the checkpoint the modes plain mkdir/open would (less the umask, e.g. 0755 / 0644): mkdtemp
    makes the folder 0700 and transformers writes model.safetensors 0600, but a shared cache's group
    must be able to read the checkpoint."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def ensure_tiny_wav2vec2(dir: str | Path, *, feat_extract_norm: str = "group") -> Path:
    """Tiny wav2vec2 (hidden 32, 2 layers, 3 conv layers, 80-sample stride = 200 frames/s at 16 kHz).

    feat_extract_norm="group" mirrors wav2vec2-base (no attention mask, per-utterance normalisation);
    "layer" mirrors the large/lv60 family (padding + attention mask).
    """
    def build(out: Path) -> None:
        from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        layer = feat_extract_norm == "layer"
        cfg = Wav2Vec2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=(32, 32, 32), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            feat_extract_norm=feat_extract_norm, do_stable_layer_norm=layer, conv_bias=layer,
            vocab_size=8,
        )
        Wav2Vec2Model(cfg).eval().save_pretrained(out)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                 return_attention_mask=layer).save_pretrained(out)

    return _ensure(dir, build, f"tiny wav2vec2 (feat_extract_norm={feat_extract_norm})")


def ensure_tiny_swin(dir: str | Path) -> Path:
    """Tiny transformers Swin (image 64, patch 4, embed 16, depths (1, 1), window 4 -> 32-dim pooled)."""
    def build(out: Path) -> None:
        from transformers import SwinConfig, SwinModel, ViTImageProcessor

        cfg = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                         window_size=4, mlp_ratio=2.0)
        SwinModel(cfg, add_pooling_layer=True).eval().save_pretrained(out)
        ViTImageProcessor(do_resize=True, size={"height": 64, "width": 64}, do_normalize=True,
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)

    return _ensure(dir, build, "tiny Swin (transformers SwinModel)")


_TEXT_WORDS = (
    "i you he she we they it is am are was were be not no yes oh okay so what why how who where "
    "the a an and or but to of in on for with at this that my your me him her us them do does did "
    "have has had go going get know think feel love hate happy sad angry great good bad really "
    "sorry thanks please hello hi hey wow well just like right now here there time day "
).split()


def ensure_tiny_text(dir: str | Path) -> Path:
    """Tiny BERT (hidden 32, 2 layers, 512 positions) with a word-piece vocabulary of common words and characters."""
    def build(out: Path) -> None:
        import string

        from transformers import BertConfig, BertModel, BertTokenizer

        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(_TEXT_WORDS))
        vocab += list(string.ascii_lowercase + string.digits + string.punctuation)
        vocab += ["##" + c for c in string.ascii_lowercase + string.digits]
        vocab = list(dict.fromkeys(vocab))
        # transformers 5 takes the vocabulary as a dict (tokenizers backend), not a vocab file
        tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=512)
        tok.save_pretrained(out)
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)
        BertModel(cfg).eval().save_pretrained(out)

    return _ensure(dir, build, "tiny BERT text encoder")

"""The published encoder architectures of the `paper` and `deepmsi` presets, with their configs written in
code (no hub calls), and randomly initialised checkpoints built from them with `save_pretrained`.

They measure COST, not quality: the weights are random (seeded), so the features carry no emotion
information, but every layer, width and preprocessing step is the published one, so time, memory and
shard sizes are those of the real checkpoints. `tiny=True` keeps each family (same model class, tokenizer
and processor) at tiny widths, for a benchmark's quick mode. Builds go through extractors/tiny.py's
atomic `_ensure` (temp dir, then rename; a README.txt says what the folder is).

| name | published id | output |
|---|---|---|
| roberta-large | FacebookAI/roberta-large | 1024 |
| bert-base-uncased | google-bert/bert-base-uncased | 768 |
| wav2vec2-base | facebook/wav2vec2-base | 768 per frame |
| swin-base | microsoft/swin-base-patch4-window7-224 | 1024 per image |

Tokenizers: BERT's is the bert-base-uncased WordPiece vocabulary itself (the packaged all-MiniLM-L6-v2
ships it). RoBERTa's byte-level BPE (GPT-2's 50k merges) cannot be had offline: a byte-level BPE is
trained on the texts passed in (e.g. MELD's transcripts), which gives utterances of about the same token
counts; the embedding table keeps the published 50,265 rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .tiny import _SEED, _TEXT_WORDS, _ensure

PUBLISHED = {
    "roberta-large": "FacebookAI/roberta-large",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "wav2vec2-base": "facebook/wav2vec2-base",
    "swin-base": "microsoft/swin-base-patch4-window7-224",
}
_IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
_TINY_TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def roberta_large_config(tiny: bool = False) -> Any:
    """FacebookAI/roberta-large's config.json (tiny: the same with hidden 32, 2 layers)."""
    from transformers import RobertaConfig

    width = _TINY_TEXT if tiny else dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                         intermediate_size=4096)
    return RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                         hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                         initializer_range=0.02, pad_token_id=1, bos_token_id=0, eos_token_id=2, **width)


def bert_base_uncased_config(tiny: bool = False) -> Any:
    """google-bert/bert-base-uncased's config.json (tiny: hidden 32, 2 layers)."""
    from transformers import BertConfig

    width = _TINY_TEXT if tiny else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                         intermediate_size=3072)
    return BertConfig(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                      hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                      initializer_range=0.02, pad_token_id=0, **width)


def wav2vec2_base_config(tiny: bool = False) -> Any:
    """facebook/wav2vec2-base: 7 group-norm conv layers (stride 320 = 50 frames/s), 12 x 768 transformer
    (tiny: tiny.py's wav2vec2, hidden 32). Dropouts and layerdrop act only in training."""
    from transformers import Wav2Vec2Config

    if tiny:
        return Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              conv_dim=(32, 32, 32), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4),
                              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
                              do_stable_layer_norm=False, conv_bias=False, vocab_size=32)
    return Wav2Vec2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
        conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        feat_extract_norm="group", feat_extract_activation="gelu", conv_bias=False, do_stable_layer_norm=False,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, layer_norm_eps=1e-5, vocab_size=32,
        hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1, final_dropout=0.0,
        layerdrop=0.05, apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=10,
        codevector_dim=256, proj_codevector_dim=256, num_codevectors_per_group=320, num_codevector_groups=2,
    )


def swin_base_config(tiny: bool = False) -> Any:
    """microsoft/swin-base-patch4-window7-224: 224 px, patch 4, embed 128, depths (2, 2, 18, 2), heads
    (4, 8, 16, 32), window 7 -> 1024-d pooled (tiny: tiny.py's Swin, 64 px, 32-d)."""
    from transformers import SwinConfig

    if tiny:
        return SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                          window_size=4, mlp_ratio=2.0)
    return SwinConfig(image_size=224, patch_size=4, num_channels=3, embed_dim=128, depths=[2, 2, 18, 2],
                      num_heads=[4, 8, 16, 32], window_size=7, mlp_ratio=4.0, qkv_bias=True, hidden_act="gelu",
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.1,
                      use_absolute_embeddings=False, layer_norm_eps=1e-5, encoder_stride=32)


def default_texts() -> list[str]:
    """Sentences for training RoBERTa's stand-in BPE when no corpus text is given (tiny.py's word list)."""
    words = list(_TEXT_WORDS)
    return [" ".join(words[i:i + 8]) for i in range(0, len(words), 3)]


def _roberta(tiny: bool, texts: Sequence[str]) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        import tempfile

        from tokenizers import ByteLevelBPETokenizer
        from transformers import RobertaModel, RobertaTokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(list(texts), vocab_size=50265, min_frequency=2, show_progress=False,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        with tempfile.TemporaryDirectory() as tmp:
            bpe.save_model(tmp)
            tok = RobertaTokenizer(vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"),
                                   model_max_length=512)
        tok.save_pretrained(out)
        RobertaModel(roberta_large_config(tiny)).eval().save_pretrained(out)

    return build


def _bert(tiny: bool) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import AutoTokenizer, BertModel

        from .text_hf import default_text_model

        AutoTokenizer.from_pretrained(default_text_model(), model_max_length=512).save_pretrained(out)
        BertModel(bert_base_uncased_config(tiny)).eval().save_pretrained(out)

    return build


def _wav2vec2(tiny: bool) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        Wav2Vec2Model(wav2vec2_base_config(tiny)).eval().save_pretrained(out)
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                 return_attention_mask=False).save_pretrained(out)

    return build


def _swin(tiny: bool) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import SwinModel, ViTImageProcessor

        cfg = swin_base_config(tiny)
        SwinModel(cfg, add_pooling_layer=True).eval().save_pretrained(out)
        side = int(cfg.image_size)
        ViTImageProcessor(do_resize=True, size={"height": side, "width": side}, resample=3, do_rescale=True,
                          do_normalize=True, **_IMAGENET).save_pretrained(out)

    return build


def build_random_checkpoint(name: str, dir: str | Path, *, tiny: bool = False,
                            texts: Iterable[str] | None = None) -> Path:
    """Build (once) a randomly initialised `name` checkpoint (a key of PUBLISHED) in `dir`; returns its path.

    texts: what RoBERTa's stand-in BPE is trained on (default: a small word list); ignored by the others."""
    builders = {"roberta-large": lambda: _roberta(tiny, list(texts) if texts is not None else default_texts()),
                "bert-base-uncased": lambda: _bert(tiny), "wav2vec2-base": lambda: _wav2vec2(tiny),
                "swin-base": lambda: _swin(tiny)}
    if name not in builders:
        raise KeyError(f"no architecture {name!r}; choose one of: {', '.join(builders)}")
    what = f"random {name}: {'a tiny-width stand-in for' if tiny else 'the exact architecture of'} {PUBLISHED[name]}"
    readme = (f"{what}\n\nCOST ONLY: randomly initialised (seed {_SEED}) by mer_pipe.extractors.archs so the "
              "real-size paper path can be timed offline. Its features carry no emotion information.\n")
    return _ensure(dir, builders[name](), what, readme)


__all__ = ["PUBLISHED", "build_random_checkpoint", "roberta_large_config", "bert_base_uncased_config",
           "wav2vec2_base_config", "swin_base_config"]

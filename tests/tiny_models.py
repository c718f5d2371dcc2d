"""Tiny models built from config, so tests exercise real loading and generation code with nothing downloaded."""

from __future__ import annotations

from pathlib import Path

# 26 caption-ish words, so generated text reads like (random) captions.
WORDS = (
    "a photo of the woman man person smiling on beach with in red blue at city street "
    "standing sitting dog park and sunset coffee dress hair"
)


def build_tiny_blip(directory: Path) -> Path:
    """Save a random-weight BLIP captioner (processor + model, ~90k params) into `directory` and return it.

    It has the real BLIP architecture and file layout, so `AutoProcessor` / `AutoModelForImageTextToText` load
    it exactly as they load Salesforce/blip-image-captioning-base; its captions are random words.
    """
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split(), "[DEC]", "[ENC]"]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_file), bos_token="[DEC]")
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tokenizer
    )
    sep = vocab.index("[SEP]")
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": vocab.index("[DEC]"),
            "eos_token_id": sep,
            "sep_token_id": sep,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 384,
            "patch_size": 16,
        },
        projection_dim=32,
        image_text_hidden_size=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BlipForConditionalGeneration(config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    vocab_file.unlink()
    return directory

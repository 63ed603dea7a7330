"""Tiny random Hugging Face checkpoints for the inspect tests, made with ``save_pretrained``
(no downloads), each with its own tokenizer (trained here with ``tokenizers``) or image
processor: Qwen2 (decoder, byte-level BPE), T5 (encoder-decoder, SentencePiece-style
Unigram), ViT (image) and GPT-2 (attnkit's port and transformers both load it)."""
from __future__ import annotations

from pathlib import Path

SEED = "The cat sat on the mat because it was tired."
TEXTS = [SEED, "A dog ran in the park and it was happy.", "The mat was on the floor.",
         "Hello world, the cat is here.", "Translate this sentence to German please.",
         "It rained because the sky was grey.", "The tired cat slept on the warm mat."] * 3


def _bytelevel(vocab: int = 420):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _sentencepiece(vocab: int = 160):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXTS, trainers.UnigramTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def qwen2(d: Path, layers: int = 2, max_positions: int = 64, eos: bool = False) -> Path:
    import torch
    import transformers as tf
    torch.manual_seed(0)
    tok = _bytelevel()
    cfg = tf.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max_positions,
                         eos_token_id=tok.eos_token_id if eos else None,
                         pad_token_id=tok.pad_token_id)
    tf.Qwen2ForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def t5(d: Path) -> Path:
    import torch
    import transformers as tf
    torch.manual_seed(0)
    tok = _sentencepiece()
    cfg = tf.T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_decoder_layers=2, num_heads=4, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=None)
    tf.T5ForConditionalGeneration(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def vit(d: Path) -> Path:
    import torch
    import transformers as tf
    torch.manual_seed(0)
    cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_channels=3)
    tf.ViTModel(cfg).save_pretrained(d)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def gpt2(d: Path, n_positions: int = 64) -> Path:
    import torch
    import transformers as tf
    torch.manual_seed(0)
    tok = _bytelevel()
    cfg = tf.GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=32, n_layer=2,
                        n_head=4, bos_token_id=tok.bos_token_id, eos_token_id=None)
    tf.GPT2LMHeadModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def png(path: Path, w: int = 48, h: int = 40) -> Path:
    """A small test image: a bright square in the top-left quarter on a dark gradient."""
    import numpy as np
    from PIL import Image
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 4, y * 4, np.full_like(x, 60)], -1).astype(np.uint8)
    img[2:h // 2, 2:w // 2] = (250, 240, 30)
    Image.fromarray(img).save(path)
    return path

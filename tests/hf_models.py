"""Tiny random transformers models for the integration's parity matrix: one builder per
architecture, each saved with ``save_pretrained`` (no downloads)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

V = 97  # vocabulary of the text models


@dataclass
class Case:
    name: str
    build: Callable[[], object]   # -> a transformers model in eval mode
    kind: str                     # "encoder" | "decoder" | "seq2seq" | "image" | "audio"
    note: str = ""


def _t():
    import transformers as t
    return t


def bert():
    t = _t()
    return t.BertModel(t.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64,
                                    max_position_embeddings=64))


def roberta():
    t = _t()
    return t.RobertaModel(t.RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=64,
                                          max_position_embeddings=70, pad_token_id=1))


def distilbert():
    t = _t()
    return t.DistilBertModel(t.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4,
                                                hidden_dim=64, max_position_embeddings=64))


def gpt2():
    t = _t()
    return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4,
                                          n_positions=64))


def llama():
    t = _t()
    return t.LlamaForCausalLM(t.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, max_position_embeddings=64))


def mistral():
    t = _t()
    return t.MistralForCausalLM(t.MistralConfig(vocab_size=V, hidden_size=32,
                                                intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=4, num_key_value_heads=2,
                                                max_position_embeddings=64, sliding_window=5))


def qwen2():
    t = _t()
    return t.Qwen2ForCausalLM(t.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, max_position_embeddings=64))


def gemma2():
    t = _t()
    return t.Gemma2ForCausalLM(t.Gemma2Config(vocab_size=V, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, head_dim=8,
                                              max_position_embeddings=64, sliding_window=4,
                                              attn_logit_softcapping=2.0,
                                              query_pre_attn_scalar=8))


def t5():
    t = _t()
    return t.T5ForConditionalGeneration(t.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64,
                                                   num_layers=2, num_decoder_layers=2,
                                                   num_heads=4, decoder_start_token_id=0,
                                                   relative_attention_num_buckets=8))


def vit():
    t = _t()
    return t.ViTModel(t.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64))


def whisper():
    t = _t()
    return t.WhisperForConditionalGeneration(t.WhisperConfig(
        vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
        max_source_positions=16, max_target_positions=32, decoder_start_token_id=1,
        pad_token_id=0, eos_token_id=2, bos_token_id=1, suppress_tokens=None,
        begin_suppress_tokens=None))


def gpt_oss():
    t = _t()
    return t.GptOssForCausalLM(t.GptOssConfig(
        vocab_size=V, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=4, max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0))


def with_sinks(model):
    """GPT-OSS initialises its sink logits to zeros: random ones, so that they matter."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "sinks", None), torch.nn.Parameter):
                m.sinks.normal_(0.0, 2.0)
    return model


def gemma3():
    t = _t()
    return t.Gemma3ForCausalLM(t.Gemma3TextConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
        max_position_embeddings=64, query_pre_attn_scalar=8,
        layer_types=["sliding_attention", "full_attention"]))


def phi3():
    t = _t()
    return t.Phi3ForCausalLM(t.Phi3Config(vocab_size=V, hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, max_position_embeddings=64,
                                          pad_token_id=0))


def bloom():
    t = _t()
    return t.BloomForCausalLM(t.BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4))


CASES = [Case("bert", bert, "encoder"), Case("roberta", roberta, "encoder"),
         Case("distilbert", distilbert, "encoder"), Case("gpt2", gpt2, "decoder"),
         Case("llama", llama, "decoder", "GQA"), Case("mistral", mistral, "decoder",
                                                       "sliding window 5"),
         Case("qwen2", qwen2, "decoder", "GQA"),
         Case("gemma2", gemma2, "decoder", "softcap 2, sliding window 4"),
         Case("t5", t5, "seq2seq", "relative position bias"), Case("vit", vit, "image"),
         Case("whisper", whisper, "audio", "speech encoder-decoder"),
         Case("gpt_oss", lambda: with_sinks(gpt_oss()), "decoder",
              "learned sinks (s_aux), sliding window 4, MoE"),
         Case("gemma3", gemma3, "decoder", "sliding window 4 / full layers"),
         Case("phi3", phi3, "decoder", "fused qkv, GQA")]
# models that add to the mask themselves (ALiBi added to a tensor mask): refused by name
REFUSED = [Case("bloom", bloom, "decoder", "ALiBi added to the mask by the model")]


def save(case: Case, path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = case.build()
    model.eval()
    model.save_pretrained(path)
    return str(path)


def batch(case: Case, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Model inputs (a padded batch of 2: left padding for decoders, right for encoders)
    and a bool (B, T) of the real query positions to compare."""
    g = torch.Generator().manual_seed(seed)
    if case.kind == "image":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}, torch.ones(2, 17,
                                                                                   dtype=bool)
    if case.kind == "audio":
        feats = torch.randn(2, 8, 32, generator=g)
        dec = torch.randint(3, V, (2, 6), generator=g)
        return {"input_features": feats, "decoder_input_ids": dec}, torch.ones(2, 6, dtype=bool)
    T = 11
    ids = torch.randint(3, V, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    if case.kind == "decoder":
        mask[1, :4] = 0                        # left padding
    else:
        mask[1, -4:] = 0                       # right padding
    inputs = {"input_ids": ids, "attention_mask": mask}
    if case.kind == "seq2seq":
        inputs["decoder_input_ids"] = torch.randint(3, V, (2, 7), generator=g)
        return inputs, torch.ones(2, 7, dtype=bool)
    return inputs, mask.bool()

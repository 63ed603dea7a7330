"""Models built from :mod:`attnkit.modules`; the attention models switch backend and
sparse pattern by ``model.set_attention(backend=..., pattern=...)``.

``Transformer`` (2017 encoder-decoder), ``GPT`` (GPT-2 / Llama-style), ``BERT``,
``ViT``, ``GAT`` (graph attention) and ``SSM`` (Mamba-style linear-time baseline).
"""
from .bert import BERT, BERTConfig
from .gat import GAT, GATConfig, GATLayer
from .gpt import GPT, GPTConfig
from .ssm import SSM, SSMBlock, SSMConfig
from .transformer import Transformer, TransformerConfig
from .vit import ViT, ViTConfig

__all__ = ["BERT", "BERTConfig", "GAT", "GATConfig", "GATLayer", "GPT", "GPTConfig", "SSM",
           "SSMBlock", "SSMConfig", "Transformer", "TransformerConfig", "ViT", "ViTConfig"]

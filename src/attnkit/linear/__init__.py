"""Linear (kernel) attention: the readable math (:mod:`.naive`), the fast forms
(:mod:`.chunk`: parallel, chunked-causal, recurrent) and the feature maps (:mod:`.features`;
the learnable one: :mod:`.learned`)."""
from .chunk import LinearAttentionState, linear_attention, linear_attention_step
from .features import EluFeatureMap, FavorPlus, FeatureMap, ReluFeatureMap, make_feature_map
from .learned import GivenFeatures, HedgehogFeatureMap
from .naive import linear_attention_naive

__all__ = ["FeatureMap", "EluFeatureMap", "ReluFeatureMap", "FavorPlus", "make_feature_map",
           "linear_attention", "linear_attention_naive", "LinearAttentionState",
           "linear_attention_step", "HedgehogFeatureMap", "GivenFeatures"]

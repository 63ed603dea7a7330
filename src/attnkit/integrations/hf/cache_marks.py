"""The attributes a bounded cache layer (:mod:`.cache_layers`) sets on the keys it returns,
read by the attention function (:mod:`.cache`): a module of its own, so neither of the two
imports the other."""
KEPT = "_attnkit_kept"      # a SinkWindowLayer's keys: (G, Tk of the full cache)
STATE = "_attnkit_state"    # a LinearStateLayer's keys: the layer

"""The one configuration of a training run (saved as ``config.json`` beside its checkpoints)."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from dataclasses import dataclass, field

import torch

from ..tasks import make_task, task_names
from ..tasks.base import parse_task_args
from ..engine.variants import parse_variant
from .recipe import DEFAULT_EMBED_STD, INITS, LEGACY, SCHEDULES

__all__ = ["TrainConfig", "parse_task_spec", "run_slug", "MODELS", "MAIN_METRIC"]

MAIN_METRIC = {"lm": "accuracy", "seq2seq": "exact_match", "image": "accuracy",
               "graph": "accuracy"}
# fields added after config.json files were written: a file without them had these values
ADDED = {"kv_heads": None, "text": None}
POSITIONS = ("rope", "learned", "sinusoidal", "alibi")

# model family -> the task kind it serves
MODELS = {"gpt": "lm", "ssm": "lm", "transformer": "seq2seq", "vit": "image", "gat": "graph",
          "llama": "lm"}
_DEFAULT_MODEL = {"lm": "gpt", "seq2seq": "transformer", "image": "vit", "graph": "gat"}


def run_slug(text: str) -> str:
    """A run-directory name from a task/variant description (``mqar:seq_len=128`` ->
    ``mqar-seq_len=128``)."""
    return re.sub(r"[^A-Za-z0-9=.]+", "-", text).strip("-")


def parse_task_spec(text: str) -> tuple[str, dict]:
    """``"mqar:seq_len=128:n_pairs=8"`` -> ``("mqar", {"seq_len": 128, "n_pairs": 8})``
    (the variant grammar: a name, then ``:``-separated ``key=value`` parameters)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"task: expected a name like 'mqar' or 'mqar:seq_len=128', got {text!r}")
    name, *parts = text.strip().split(":")
    if name not in task_names():
        raise ValueError(f"task: expected one of {', '.join(task_names())}, got {name!r}")
    return name, parse_task_args(name, ",".join(parts))


@dataclass
class TrainConfig:
    task: str = "mqar"               # a task spec: name[:key=value...]
    model: str | None = None         # gpt | ssm | transformer | vit | gat | llama (by task)
    attention: str = "dense"         # a variant (attnkit.engine.variants): dense, window:64, linear:elu, ...
    width: int = 64                  # d_model
    layers: int = 2
    heads: int | None = None         # default 2 (GAT: 8)
    kv_heads: int | None = None      # llama: key/value heads (GQA), default heads
    ffn: int | None = None           # FFN width, default 2 * width
    positions: str = "rope"          # GPT: rope | learned | sinusoidal | alibi
    patch: int = 2                   # ViT patch size
    dropout: float = 0.0
    # the recipe (train/recipe.py): init, output layer, schedule, stopping
    init: str | None = None          # scaled | normal | torch (GPT, SSM); others: model
    embed_std: float | None = None   # token-embedding std (default: by init; scaled 1.0)
    tie_output: bool = False         # output layer = token embedding (GPT, SSM, llama)
    schedule: str = "constant"       # constant | cosine (after the linear warm-up)
    steps: int = 1000
    target_acc: float | None = None  # stop at the first evaluation with score >= this
    batch_size: int = 64             # global: split across data-parallel processes
    lr: float = 1e-3
    min_lr_ratio: float = 0.1        # cosine decay to lr * this
    warmup: int = 50                 # linear warm-up steps
    weight_decay: float = 0.1        # AdamW, on matrices only
    grad_clip: float = 1.0           # max global grad norm (0 = off)
    eval_every: int = 200
    eval_batch_size: int = 250
    ckpt_every: int = 200
    keep_ckpts: int = 2
    seed: int = 0                    # init, dropout and (unless the task spec says) data
    device: str = "cpu"
    text: list | None = None         # task lm: the text files (paths)
    task_params: dict = field(default_factory=dict, repr=False)  # parsed from ``task``

    def __post_init__(self):
        for f in ("task", "attention", "positions", "device", "schedule"):
            if not isinstance(getattr(self, f), str):
                raise ValueError(f"{f}: expected a string, got {getattr(self, f)!r}")
        for f in ("model", "init"):
            if getattr(self, f) is not None and not isinstance(getattr(self, f), str):
                raise ValueError(f"{f}: expected a string or null, got {getattr(self, f)!r}")
        name, params = parse_task_spec(self.task)
        params.setdefault("seed", self.seed)
        self._check_text(name, params)
        self.task_params = {"name": name, **params}
        kind = make_task(name, **params).kind
        if self.model is None:
            self.model = "llama" if name == "lm" else _DEFAULT_MODEL[kind]
        if (name == "lm") != (self.model == "llama"):
            raise ValueError(f"model: the lm task trains the llama model (a Llama-style "
                             f"decoder in Hugging Face format) and only it; got task {name!r} "
                             f"with model {self.model!r}")
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {', '.join(MODELS)}, got {self.model!r}")
        if MODELS[self.model] != kind:
            fits = [m for m, k in MODELS.items() if k == kind]
            raise ValueError(f"model: task {name!r} is a {kind} task, served by "
                             f"{' or '.join(fits)}; got {self.model!r}")
        v = parse_variant(self.attention)
        if v.is_model:                            # `--attention ssm` names the SSM model
            if kind != "lm":
                raise ValueError(f"attention: 'ssm' is a language model; task {name!r} is {kind}")
            self.model = "ssm"
        elif self.model == "ssm" and v.name != "dense":
            raise ValueError(f"attention: the ssm model has no attention; got {self.attention!r}")
        if self.model == "llama" and v.name != "dense":
            raise ValueError(f"attention: the lm task trains the dense decoder (its Hugging "
                             f"Face export has no field for a variant, so it would load as a "
                             f"different model); got {self.attention!r}")
        if self.model == "transformer" and v.is_linear:
            raise ValueError(f"attention: {self.attention!r} takes no padding mask, and "
                             f"{name!r} sources are padded; use a softmax variant")
        if self.model == "gat" and v.name != "dense":
            raise ValueError(f"attention: GAT attends over graph edges only; got "
                             f"{self.attention!r} (use 'dense')")
        if self.heads is None:
            self.heads = 8 if self.model == "gat" else 2
        self._check_recipe()
        for f in ("width", "layers", "heads", "steps", "batch_size", "eval_every",
                  "eval_batch_size", "ckpt_every", "keep_ckpts", "patch"):
            val = getattr(self, f)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{f}: expected an int >= 1, got {val!r}")
        if self.ffn is not None and (not isinstance(self.ffn, int) or self.ffn < 1):
            raise ValueError(f"ffn: expected an int >= 1, got {self.ffn!r}")
        if self.width % self.heads:
            raise ValueError(f"heads: expected a divisor of width={self.width}, got {self.heads}")
        if self.kv_heads is not None and (self.model != "llama" or isinstance(self.kv_heads, bool)
                                          or not isinstance(self.kv_heads, int)
                                          or self.kv_heads < 1 or self.heads % self.kv_heads):
            raise ValueError(f"kv_heads: expected a divisor of heads={self.heads} (llama model "
                             f"only), got {self.kv_heads!r} for model {self.model!r}")
        for f, lo, hi in (("lr", 0, 10), ("min_lr_ratio", 0, 1), ("dropout", 0, 0.99),
                          ("weight_decay", 0, 10), ("grad_clip", 0, 1e9)):
            val = getattr(self, f)
            if isinstance(val, bool) or not isinstance(val, (int, float)) or \
                    not lo <= val <= hi or (f == "lr" and val == 0):
                raise ValueError(f"{f}: expected a number in [{lo}, {hi}]"
                                 f"{' (> 0)' if f == 'lr' else ''}, got {val!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup: expected an int >= 0, got {self.warmup!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device: expected 'cpu' or 'cuda[:i]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device: {self.device!r} requested but CUDA is not available")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {self.seed!r}")

    def _check_text(self, name: str, params: dict) -> None:
        """``text``: a non-empty list of paths for the lm task, nothing for the others."""
        if "text" in params:
            raise ValueError("task: the lm task's files are given by --text (TrainConfig.text), "
                             "not in the task spec")
        if name != "lm":
            if self.text is not None:
                raise ValueError(f"text: only the lm task reads text files; task {name!r} "
                                 f"generates its data")
            return
        if isinstance(self.text, (str, Path)):
            self.text = [self.text]
        if not isinstance(self.text, (list, tuple)) or not self.text:
            raise ValueError(f"text: the lm task needs one or more text files, got "
                             f"{self.text!r}")
        self.text = [str(Path(p).absolute()) for p in self.text]   # resumable from anywhere
        params["text"] = tuple(self.text)

    def _check_recipe(self) -> None:
        lm = self.model in ("gpt", "ssm")
        if self.init is None:
            self.init = "scaled" if lm else "model"
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {', '.join(INITS)}, got {self.init!r}")
        if lm == (self.init == "model"):
            raise ValueError(f"init: {'scaled, normal or torch' if lm else 'model'} for the "
                             f"{self.model} model, got {self.init!r}")
        if self.embed_std is None:
            self.embed_std = DEFAULT_EMBED_STD[self.init]
        if self.init == "model":
            if self.embed_std is not None:
                raise ValueError(f"embed_std: the {self.model} model keeps its own init; "
                                 f"got {self.embed_std!r}")
        elif isinstance(self.embed_std, bool) or not isinstance(self.embed_std, (int, float)) \
                or not 0 < self.embed_std <= 100:
            raise ValueError(f"embed_std: expected a number in (0, 100], got {self.embed_std!r}")
        if not isinstance(self.tie_output, bool):
            raise ValueError(f"tie_output: expected true or false, got {self.tie_output!r}")
        if self.tie_output and not (lm or self.model == "llama"):
            raise ValueError(f"tie_output: only the gpt and ssm models (and task lm's llama) "
                             f"have a tied output layer; the {self.model} model has none")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions: expected one of {', '.join(POSITIONS)}, got "
                             f"{self.positions!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got "
                             f"{self.schedule!r}")
        t = self.target_acc
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                              or not 0 < t <= 1):
            raise ValueError(f"target_acc: expected a number in (0, 1] or null, got {t!r}")

    @property
    def main_metric(self) -> str:
        """The score of the table and of ``target_acc``: accuracy, or exact match (seq2seq)."""
        return MAIN_METRIC[MODELS[self.model]]

    def make_task(self):
        p = dict(self.task_params)
        return make_task(p.pop("name"), **p)

    def label(self) -> str:
        return f"{self.task} {self.model}/{self.attention} d{self.width}"

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("task_params")
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """A run's ``config.json``: every field present (a missing or unknown one is
        refused, naming it); one written before the recipe fields existed gets the
        recipe it was trained with (:data:`~attnkit.train.recipe.LEGACY`)."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ValueError(f"not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object of TrainConfig fields, got "
                             f"{type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"task_params"}
        for k, v in ADDED.items():               # fields added later: absent = the default
            d.setdefault(k, v)
        missing = fields - set(d)
        if missing == set(LEGACY):
            d.update(LEGACY)
            if d.get("model") not in ("gpt", "ssm"):
                d.update(init="model", embed_std=None, tie_output=False)
            missing = set()
        bad = sorted(set(d) - fields)
        problems = ([f"unknown field(s) {', '.join(bad)}"] if bad else []) + \
            ([f"missing field(s) {', '.join(sorted(missing))}"] if missing else [])
        if problems:
            raise ValueError("; ".join(problems) + " (a run's config.json holds every "
                             "TrainConfig field, as the run wrote it)")
        return cls(**d)

"""One TrainConfig: defaults listed once, presets (paper, tiny), validation.

Resolution order: dataclass defaults -> paper settings for (dataset, attribute) -> preset
-> config file (JSON) -> --set key=value overrides. `validate()` refuses out-of-range values
with a message that names the field and the value.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("fairvision", "fairvlmed")
# MultiFair's ablation modes (the paper's Fig. 3). Every training method, these included, is in
# the registry: trainer.methods.available_methods() (the `--mode` choices).
MODES = ("baseline", "modality", "fairness", "full")
MODULATION_TARGETS = ("gradient", "update")
MODALITIES = ("slo", "oct", "note")
# gpt4_summary_or_note: the CSV's summary where it is not blank, the npz note otherwise (the
# vision-language family's text, trainer/models/clip.py)
NOTE_SOURCES = ("note", "note_extra", "gpt4_summary", "gpt4_summary_or_note")
DEFAULT_MODALITIES = {"fairvision": ("slo", "oct"), "fairvlmed": ("slo", "note")}

# Attribute name -> {code: group name}. Codes as released; -1 means unknown.
ATTRIBUTES: dict[str, dict[int, str]] = {
    "gender": {0: "female", 1: "male"},
    "race": {0: "asian", 1: "black", 2: "white"},
    "ethnicity": {0: "non_hispanic", 1: "hispanic"},
    "language": {0: "english", 1: "spanish", 2: "other"},
    "maritalstatus": {0: "married", 1: "single", 2: "divorced", 3: "widowed", 4: "legally_separated"},
}
ATTRIBUTE_ALIASES = {"marital": "maritalstatus", "marital_status": "maritalstatus", "sex": "gender",
                     "hispanic": "ethnicity"}


def canonical_attribute(name: str) -> str:
    key = ATTRIBUTE_ALIASES.get(name.lower(), name.lower())
    if key not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {name!r}; choose one of {sorted(ATTRIBUTES)}")
    return key


@dataclass
class TrainConfig:
    # --- data ---
    dataset: str = "fairvision"
    data_root: str = ""
    shift_root: str = ""                    # another site's data root (same layout): test["shift"]
    attribute: str = "gender"
    modalities: tuple[str, ...] = ()        # () -> DEFAULT_MODALITIES[dataset]
    note_source: str = "note"               # note | note_extra | gpt4_summary (CSV)
    image_size: int = 224                   # SLO and OCT slices resized to this
    oct_slices: int = 10                    # K slices evenly spaced along axis 0
    note_max_length: int = 128
    cache_dir: str = ""                     # "" -> ~/.cache/multifair-tune (or $MULTIFAIR_CACHE)
    num_workers: int = 0                    # >0: worker processes read batches ahead (GPU runs)
    allow_duplicates: bool = False          # go on knowingly past identical images (data audit)
    resplit_folds: int = 0                  # >=2: train/val re-split from train+val (data/resplit.py)
    resplit_fold: int = 0                   # which: fold r % K of the partition drawn with seed r // K
    # --- model ---
    preset: str = "paper"
    slo_encoder: str = "vit_base_patch16_224.augreg_in21k"
    oct_encoder: str = "vit_base_patch16_224.augreg_in21k"
    note_encoder: str = "bert-base-uncased"
    pretrained: bool = True                 # hub cache or local path; False -> random init
    slo_weights: str = ""                   # optional local weights file for the SLO backbone
    oct_weights: str = ""                   # optional local weights file for the OCT backbone
    oct_slice_layers: int = 2               # transformer layers over the K slice embeddings
    proj_dim: int = 128
    fusion_heads: int = 4
    fusion_layers: int = 2
    head_hidden: int = 128                  # fusion head and modality classifiers share it (L_gm)
    dropout: float = 0.1
    # --- optimisation ---
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-5
    classifier_lr: float = 1e-5
    weight_decay: float = 6e-3
    classifier_weight_decay: float = 3e-3
    grad_clip: float = 0.8
    amp: bool = True                        # bf16 autocast on CUDA only
    fused_optimizer: bool = True            # fused (one-kernel) AdamW on CUDA; foreach on CPU
    compile_encoders: bool = False          # torch.compile each encoder (docs/results.md: GPU figures)
    seed: int = 0
    device: str = "auto"
    max_gpu_memory_fraction: float = 1.0    # <1 caps this process's share of the GPU
    # --- MultiFair ---
    mode: str = "full"
    rho: float = 1.2
    lambda_gm: float = 0.15
    tau: float = 0.04
    delta: float = 0.3
    lambda_f: float = 0.5
    ema_decay: float = 0.9                  # s in the group-AUC EMA (authors: 0.9, start 0.5)
    speed_ema_decay: float = 0.9            # smoothing of per-modality AUC before dA_m
    balance_floor: float = 0.05             # lower bound of B_m and f_m, as a fraction of 1
    surrogate_temperature: float = 0.05     # pairwise sigmoid AUC; -> exact AUC as T -> 0
    modulation_target: str = "gradient"     # per-encoder factors act on: gradient | update (lr)
    # --- comparison methods (trainer/methods/, docs/methods.md) ---
    ogm_alpha: float = 0.5                  # OGM-GE: 1 - tanh(alpha * ratio) for the dominant one
    ogm_start_epoch: int = 0                # OGM-GE modulation window [start, end) in epochs
    ogm_end_epoch: int = 0                  # 0 -> until the last epoch
    fis_c: float = 0.5                      # FIS: share of the group weight (authors: 0.5)
    fis_temperature: float = 1.0            # FIS: softmax temperature of both weights
    sinkhorn_weight: float = 1.0            # sinkhorn: weight of the group Sinkhorn divergence
    modality_dropout_rate: float = 0.3      # modality_dropout: per-sample, per-modality rate
    unimodal_epochs: int = 0                # unimodal_ensemble: stage-1 epochs; 0 -> epochs // 2
    # --- vision-language family (trainer/models/clip.py, trainer/methods/vl.py; docs/methods.md) ---
    clip_model: str = "openai/clip-vit-base-patch16"   # hub name or local dir; tiny: tiny_clip
    fairclip_variant: str = "official"      # official | aligned (the reproducibility study's)
    fairclip_lambda: float = 1e-6           # weight of the summed group Sinkhorn terms (launch script)
    fairclip_blur: float = 1e-6             # geomloss blur (launch script; argparse default 1e-4)
    fairclip_group_batch_size: int = 0      # the extra batch per group; 0 -> batch_size
    dbpm_beta_np: float = 3.0               # noisy pair: mean past loss < mu - beta_np * sigma
    dbpm_beta_fp: float = 3.0               # faulty pair: mean past loss > mu + beta_fp * sigma
    dbpm_warmup_epochs: int = 1             # epochs of plain training before pairs are judged
    vl_context_length: int = 4              # dualfairvl: learnable context tokens per prompt
    vl_visual_prompts: int = 4              # dualfairvl: hypernetwork's visual prompt tokens
    lambda_orth: float = 0.1                # dualfairvl: class/group anchor orthogonality
    lambda_proto: float = 0.1               # dualfairvl: prototype regulariser
    linear_probe: bool = True               # VL family: logistic probe on frozen image features
    # --- selection and reporting ---
    select_metric: str = "es_auc"           # chosen on VALIDATION
    bootstrap: int = 100
    evaluate_test: bool = True
    threshold: float = 0.5
    best_model_dtype: str = "bfloat16"      # the kept best model (weights only): bfloat16 | float16 | float32
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------
    def resolved_modalities(self) -> tuple[str, ...]:
        return tuple(self.modalities) if self.modalities else DEFAULT_MODALITIES[self.dataset]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["modalities"] = list(self.resolved_modalities())
        return d

    def replace(self, **kw) -> "TrainConfig":
        return _coerce(dataclasses.replace(self, **kw))

    def validate(self) -> "TrainConfig":
        def bad(name, why):
            raise ValueError(f"config value {name}={getattr(self, name)!r} is invalid: {why}")

        if self.dataset not in DATASETS:
            bad("dataset", f"choose one of {DATASETS}")
        from trainer.methods import METHODS

        if self.mode not in METHODS:
            bad("mode", f"choose one of {tuple(METHODS)}")
        self.attribute = canonical_attribute(self.attribute)
        mods = self.resolved_modalities()
        if not mods or len(set(mods)) != len(mods) or any(m not in MODALITIES for m in mods):
            bad("modalities", f"need distinct modalities from {MODALITIES}")
        method = METHODS[self.mode]
        if len(mods) < method.min_modalities:
            raise ValueError(f"mode {self.mode!r} needs at least {method.min_modalities} "
                             f"modalities; got modalities={','.join(mods)}")
        self._validate_methods(bad, method)
        method.check_config(self, bad)      # a method's own fields (VL family: trainer/methods/)
        if self.note_source not in NOTE_SOURCES:
            bad("note_source", f"choose one of {NOTE_SOURCES}")
        if self.tau <= 0:
            bad("tau", "the trigger threshold and the divisor in F_m^g = 1 + delta*(Ebar-E)/tau; must be > 0")
        for name in ("rho", "lr", "classifier_lr"):
            if getattr(self, name) <= 0:
                bad(name, "must be > 0")
        for name in ("lambda_gm", "lambda_f", "delta", "weight_decay", "classifier_weight_decay",
                     "grad_clip", "dropout"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        for name in ("ema_decay", "speed_ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                bad(name, "must be in [0, 1)")
        if not 0 < self.balance_floor <= 1:
            bad("balance_floor", "must be in (0, 1]")
        if self.surrogate_temperature <= 0:
            bad("surrogate_temperature", "must be > 0")
        if not 0 < self.max_gpu_memory_fraction <= 1:
            bad("max_gpu_memory_fraction", "must be in (0, 1]")
        if self.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if self.resplit_folds < 0 or self.resplit_folds == 1:
            bad("resplit_folds", "0 (the splits as given) or K >= 2 folds of train+val")
        if self.resplit_fold < 0:
            bad("resplit_fold", "must be >= 0 (repeat r: fold r % K of the partition drawn with seed r // K)")
        for name in ("image_size", "oct_slices", "note_max_length", "proj_dim", "fusion_heads",
                     "fusion_layers", "head_hidden", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        if self.batch_size < 2:
            bad("batch_size", "AUC statistics need at least 2 samples per batch")
        if self.proj_dim % self.fusion_heads:
            bad("fusion_heads", f"must divide proj_dim={self.proj_dim}")
        if self.bootstrap < 0:
            bad("bootstrap", "must be >= 0")
        if not 0 < self.threshold < 1:
            bad("threshold", "must be in (0, 1)")
        if self.select_metric not in ("es_auc", "auc"):
            bad("select_metric", "choose es_auc or auc")
        if self.best_model_dtype not in ("bfloat16", "float16", "float32"):
            bad("best_model_dtype", "choose bfloat16, float16 or float32")
        return self

    def _validate_methods(self, bad, method) -> None:
        """The comparison methods' hyperparameters (trainer/methods/)."""
        if self.modulation_target not in MODULATION_TARGETS:
            bad("modulation_target", f"choose one of {MODULATION_TARGETS}")
        if self.modulation_target == "update" and not method.scales_encoders:
            bad("modulation_target", f"mode {self.mode!r} has no per-encoder factors to move "
                "onto the update; use gradient")
        for name in ("ogm_alpha", "fis_temperature", "sinkhorn_weight"):
            if getattr(self, name) <= 0:
                bad(name, "must be > 0")
        for name in ("ogm_start_epoch", "ogm_end_epoch", "unimodal_epochs"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.ogm_end_epoch and self.ogm_end_epoch <= self.ogm_start_epoch:
            bad("ogm_end_epoch", f"must exceed ogm_start_epoch={self.ogm_start_epoch} (or be 0)")
        if not 0 <= self.fis_c <= 1:
            bad("fis_c", "must be in [0, 1]")
        if not 0 <= self.modality_dropout_rate < 1:
            bad("modality_dropout_rate", "must be in [0, 1)")


# Paper settings (multifair-method.md, Section V-C, and the authors' training defaults).
def paper_settings(dataset: str, attribute: str) -> dict[str, Any]:
    attribute = canonical_attribute(attribute)
    common = dict(lr=3e-5, rho=1.2, lambda_gm=0.15, epochs=10, batch_size=32, classifier_lr=1e-5)
    if dataset == "fairvision":
        fair = dict(tau=0.02, delta=0.6, lambda_f=0.6) if attribute == "race" else \
            dict(tau=0.04, delta=0.3, lambda_f=0.5)
        return {**common, **fair, "proj_dim": 128, "fusion_heads": 4, "fusion_layers": 2,
                "head_hidden": 128}
    if dataset == "fairvlmed":
        return {**common, "tau": 0.07, "delta": 0.5, "lambda_f": 0.5, "proj_dim": 256,
                "fusion_heads": 8, "fusion_layers": 3, "head_hidden": 256}
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")


# Small, randomly initialised encoders and a shipped tokenizer: no download, CPU-friendly.
TINY_PRESET: dict[str, Any] = dict(
    slo_encoder="tiny_vit", oct_encoder="tiny_vit", note_encoder="tiny_bert", pretrained=False,
    image_size=32, oct_slices=4, note_max_length=48, oct_slice_layers=1,
    proj_dim=32, fusion_heads=2, fusion_layers=1, head_hidden=32,
    epochs=3, batch_size=32, lr=1e-3, classifier_lr=1e-3, amp=False, clip_model="tiny_clip",
)
PRESETS = {"paper": {}, "tiny": TINY_PRESET}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _parse_value(name: str, raw: Any, current: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {name}={raw!r}: expected true/false")
    if isinstance(current, tuple):
        return tuple(x for x in raw.split(",") if x)
    try:
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"--set {name}={raw!r}: expected a {type(current).__name__}") from None
    return raw


def _coerce(cfg: TrainConfig) -> TrainConfig:
    if isinstance(cfg.modalities, (list, str)):
        cfg.modalities = tuple(cfg.modalities.split(",")) if isinstance(cfg.modalities, str) \
            else tuple(cfg.modalities)
    return cfg


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any], source: str) -> TrainConfig:
    updates = {}
    for name, raw in overrides.items():
        if name not in _FIELDS:
            raise ValueError(f"{source}: unknown config key {name!r}")
        updates[name] = _parse_value(name, raw, getattr(cfg, name))
    return _coerce(dataclasses.replace(cfg, **updates))


def make_config(dataset: str = "fairvision", attribute: str = "gender", *, preset: str = "paper",
                config_file: str | Path | None = None, sets: list[str] | None = None,
                **fields: Any) -> TrainConfig:
    """Build and validate a config: paper settings -> preset -> file -> fields -> --set."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = TrainConfig(dataset=dataset, attribute=canonical_attribute(attribute), preset=preset)
    cfg = apply_overrides(cfg, paper_settings(dataset, attribute), "paper settings")
    cfg = apply_overrides(cfg, PRESETS[preset], f"preset {preset}")
    data = {}
    if config_file:
        path = Path(config_file)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"config file {path}: {exc}") from None
    parsed = {}
    for item in sets or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        parsed[k.strip()] = v.strip()
    cfg = apply_overrides(cfg, mode_settings(parsed.get("mode") or fields.get("mode")
                                             or data.get("mode") or cfg.mode, preset),
                          "mode settings")
    if data:
        cfg = apply_overrides(cfg, data, f"config file {path}")
    cfg = apply_overrides(cfg, {k: v for k, v in fields.items() if v is not None}, "arguments")
    cfg = apply_overrides(cfg, parsed, "--set")
    # Paths are resolved where the user typed them: Tune runs each trial in its own directory.
    for name in ("data_root", "shift_root", "cache_dir", "slo_weights", "oct_weights"):
        value = getattr(cfg, name)
        if value and "://" not in value:
            setattr(cfg, name, str(Path(value).expanduser().resolve()))
    return cfg.validate()


def mode_settings(mode: str, preset: str) -> dict[str, Any]:
    """A method's own settings at a preset (the VL family: FairCLIP's optimiser, 77 tokens),
    applied after the preset and before a file, the arguments and --set."""
    from trainer.methods import METHODS

    return dict(getattr(METHODS.get(mode), "preset_settings", {}).get(preset, {}))


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Rebuild a config saved with to_dict() (checkpoints, Tune trials)."""
    return apply_overrides(TrainConfig(), d, "saved config").validate()

"""Training options: :class:`TrainConfig` (the CLI's flags as plain values) and the choices they allow."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from shufflenet.devices import AMP_MODES, DEVICES
from shufflenet.training.device_input import INPUT_PIPELINES
from shufflenet.transforms import AUTO_AUGMENT, DEFAULT_CROP_PCT

__all__ = [
    "AMP_MODES",
    "AUTO_AUGMENTS",
    "DEFAULT_WEIGHT_DECAY",
    "DEVICES",
    "INPUT_PIPELINES",
    "OPTIMIZERS",
    "RUNTIME_OPTIONS",
    "SCHEDULES",
    "TrainConfig",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
AUTO_AUGMENTS = tuple(AUTO_AUGMENT)  # the names --auto-augment takes
# Weight decay when none is given: the seed's Adam has none; SGD uses the ShuffleNet papers' 4e-5.
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 0.05, "sgd": 4e-5}
# Options that may change when a run is resumed; the others define the run and are kept from last.pt.
RUNTIME_OPTIONS = (
    "data",
    "out",
    "epochs",
    "device",
    "amp",
    "channels_last",
    "workers",
    "threads",
    "check_every",
    "checkpoint_every",
    "max_bad_images",
    "progress",
    "input_pipeline",
    "compile",
)


@dataclass
class TrainConfig:
    """Every option of a training run (the CLI's flags); the defaults are the seed experiment's."""

    data: str | None = None  # train/ + val/ class folders, or one class tree split by val_split
    out: str | None = None  # run folder
    model: str = "shufflenet_v2_x1_0"
    weights: str | None = None  # pretrained .pth/.safetensors; the classifier is re-initialised if needed
    freeze_backbone: bool = False  # train the classifier only (linear evaluation)
    small_input: bool = False  # the tiny-image stem (no max-pool, models' small_input) for 32-64 px images
    epochs: int = 5
    time_budget: float | None = None  # minutes: the epochs fitted to it from measured steps (replaces epochs)
    batch_size: int = 32  # per process under torchrun
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float | None = None  # None: DEFAULT_WEIGHT_DECAY[optimizer]; never applied to BN or biases
    momentum: float = 0.9  # SGD only
    schedule: str = "constant"  # "cosine" or "linear" decay to 0 (per step, after warm-up)
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    img_size: int = 224
    crop_scale: float = 0.08  # smallest area fraction of RandomResizedCrop
    pad_crop: int = 0  # > 0: the whole image padded by this many pixels and randomly cropped (no RandomResizedCrop)
    hflip: bool = True
    # Recipes (shufflenet.training.recipes) set the fields below and above; explicitly given options win.
    recipe: str | None = None  # finetune, scratch, megvii, torchvision; None: finetune with weights, else scratch
    eval_size: int | None = None  # validation crop size (None: img_size)
    eval_crop: float = DEFAULT_CROP_PCT  # timm's crop_pct: validation resizes the shorter side to eval_size / eval_crop
    auto_augment: str | None = None  # "trivialaugment" (TrivialAugmentWide) or "randaugment"
    random_erase: float = 0.0  # probability of RandomErasing per image
    mixup_alpha: float = 0.0  # MixUp's Beta(alpha, alpha) on batches (0: off)
    cutmix_alpha: float = 0.0  # CutMix's; with both, each batch gets one of the two
    ema_epochs: float = 0.0  # time constant, in epochs, of an EMA of the weights (0: no EMA)
    chosen: dict[str, str] | None = None  # why the recipe chose each value it fitted to the images, data, budget
    val_split: float = 0.2
    seed: int = 0
    device: str = "auto"  # auto: cuda, then mps, then cpu
    amp: str = "auto"  # auto: bf16 (fp16 without bf16 support) on CUDA GPUs, float32 elsewhere
    channels_last: bool | None = None  # None: on for CPU and CUDA (much faster depthwise convs there)
    workers: int | None = None  # None: picked for the device
    threads: int | None = None  # PyTorch CPU threads (None: its default, one per core); 1 on a busy machine
    sync_bn: bool = False  # under DDP, BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only)
    check_every: int | None = None  # steps between the ranks' stop/NaN checks (None: 1 on CPU, 16 on GPUs)
    cache_images: bool | None = None  # keep decoded, resized images in memory (None: when they fit in 2 GiB)
    max_bad_images: float = 0.1  # fraction of unreadable images (each replaced by the next readable) that stops a run
    checkpoint_every: int | None = None  # steps between mid-epoch last.pt saves (None: at epoch ends only)
    resume: bool | str = False  # True: continue from last.pt; "auto": when last.pt holds this run's options
    overwrite: bool = False
    progress: bool = False  # tqdm bars on stderr (the CLI turns them on unless --quiet)
    input_pipeline: str = "workers"  # workers, device (flip + normalise there), gpu-decode (CUDA: nvJPEG)
    compile: bool = False  # torch.compile the model for the training steps

    def validate(self) -> TrainConfig:
        """Check option values; raises ValueError naming the option and what is allowed."""
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES, "device": DEVICES}
        choices["input_pipeline"] = INPUT_PIPELINES
        choices["auto_augment"] = (None, *AUTO_AUGMENTS)
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and str(value).split(":")[0] in DEVICES):
                allowed = [a for a in allowed if a is not None]
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "img_size": self.img_size, "lr": self.lr}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be > 0 minutes, got {self.time_budget!r}")
        if self.img_size < 16:
            raise ValueError(f"img_size must be >= 16 pixels, got {self.img_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if not 0 <= self.pad_crop < self.img_size:
            raise ValueError(f"pad_crop must be 0 (off) or a padding in pixels below img_size, got {self.pad_crop}")
        if not 0.0 < self.eval_crop <= 1.0:
            raise ValueError(
                f"eval_crop must be in (0, 1] (the fraction of the resized image kept), got {self.eval_crop}"
            )
        if self.eval_size is not None and self.eval_size < 16:
            raise ValueError(f"eval_size must be >= 16 pixels, got {self.eval_size}")
        if not 0.0 <= self.random_erase <= 1.0:
            raise ValueError(f"random_erase must be a probability in [0, 1], got {self.random_erase}")
        if min(self.mixup_alpha, self.cutmix_alpha, self.ema_epochs) < 0:
            raise ValueError("mixup_alpha, cutmix_alpha and ema_epochs must be >= 0")
        if self.warmup_epochs < 0 or (self.weight_decay is not None and self.weight_decay < 0):
            raise ValueError("warmup_epochs and weight_decay must be >= 0")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.check_every is not None and self.check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {self.check_every}")
        if not 0.0 <= self.max_bad_images <= 1.0:
            raise ValueError(f"max_bad_images must be a fraction in [0, 1], got {self.max_bad_images}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 step, got {self.checkpoint_every}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not isinstance(self.small_input, bool):
            raise ValueError(f"small_input must be True or False, got {self.small_input!r}")
        if not self.out:
            raise ValueError("no run folder given: pass --out RUN (e.g. runs/exp1)")
        if self.resume not in (False, True, "auto"):
            raise ValueError(f"resume must be True, False or 'auto', got {self.resume!r}")
        if self.resume is True and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; pass one of them")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (config.json and checkpoints)."""
        return asdict(self)

"""The papers' tables as data: every published number the package builds from or compares against.

Zhang et al. 2018, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices"
(v1), Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design" (v2),
and the official implementation megvii-model/ShuffleNet-Series (channels and complexity of its v1 files).
"""

from __future__ import annotations

# ---------------------------------------------------------------- ShuffleNet v1 (Zhang et al. 2018)
V1_GROUPS: tuple[int, ...] = (1, 2, 3, 4, 8)
V1_WIDTHS: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)
V1_STAGE_REPEATS: tuple[int, int, int] = (4, 8, 4)
V1_STEM_CHANNELS_1X = 24
V1_BOTTLENECK_RATIO = 4  # bottleneck channels = output channels / 4 (Sec. 3.3)

# Table 1: output channels of stages 2/3/4 at 1x, per group count.
V1_TABLE1_STAGE_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
# Table 1: complexity (MFLOPs = million multiply-adds) at 1x, 224x224, 1000 classes.
V1_TABLE1_MFLOPS: dict[int, float] = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
# Table 2: complexity per width (the paper gives one figure per width, for all g).
V1_TABLE2_MFLOPS: dict[float, float] = {1.0: 140, 0.5: 38, 0.25: 13}
# Tolerance of our count against Table 1 / Table 2, per width (see tests/models/test_complexity.py).
V1_PAPER_TOLERANCE: dict[float, float] = {1.0: 0.02, 0.5: 0.10, 0.25: 0.20}

# megvii-model/ShuffleNet-Series (official v1 code): stem + stage 2/3/4 channels for g=3 and g=8,
# used verbatim so that its published checkpoints convert exactly.
V1_MEGVII_CHANNELS: dict[tuple[int, float], tuple[int, int, int, int]] = {
    (3, 0.5): (12, 120, 240, 480),
    (3, 1.0): (24, 240, 480, 960),
    (3, 1.5): (24, 360, 720, 1440),
    (3, 2.0): (48, 480, 960, 1920),
    (8, 0.5): (16, 192, 384, 768),
    (8, 1.0): (24, 384, 768, 1536),
    (8, 1.5): (24, 576, 1152, 2304),
    (8, 2.0): (48, 768, 1536, 3072),
}
# Complexity megvii reports for those files (MFLOPs).
V1_MEGVII_MFLOPS: dict[tuple[int, float], float] = {
    (3, 0.5): 38,
    (3, 1.0): 138,
    (3, 1.5): 292,
    (3, 2.0): 524,
    (8, 0.5): 40,
    (8, 1.0): 138,
    (8, 1.5): 290,
    (8, 2.0): 522,
}
# Top-1 error megvii reports for its g=3 files (%).
V1_MEGVII_TOP1_ERROR: dict[tuple[int, float], float] = {
    (3, 0.5): 42.7,
    (3, 1.0): 32.2,
    (3, 1.5): 28.4,
    (3, 2.0): 25.9,
}

# ---------------------------------------------------------------- ShuffleNet v2 (Ma et al. 2018)
V2_WIDTHS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
V2_STAGE_REPEATS: tuple[int, int, int] = (4, 8, 4)
# Table 5: conv1, stage 2/3/4, conv5 output channels per width.
V2_TABLE5_CHANNELS: dict[float, tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
# Table 5: FLOPs (millions of multiply-adds) and parameters (millions) with 1000 classes.
V2_TABLE5_MFLOPS: dict[float, float] = {0.5: 41, 1.0: 146, 1.5: 299, 2.0: 591}
V2_TABLE5_MPARAMS: dict[float, float] = {0.5: 1.4, 1.0: 2.3, 1.5: 3.5, 2.0: 7.4}
# Exact parameter counts of torchvision's implementation (1000 classes), which ours must equal.
V2_TORCHVISION_PARAMS: dict[float, int] = {
    0.5: 1_366_792,
    1.0: 2_278_604,
    1.5: 3_503_624,
    2.0: 7_393_996,
}

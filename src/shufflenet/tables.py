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

# ---------------------------------------------------------------- ShuffleNet v2 guideline experiments (Ma et al. 2018)
# Section 2, Tables 1-4: micro-benchmarks on 56x56 inputs, each block stacked 10 times, FLOPs held fixed across
# the rows of a table by choosing the channel widths. Columns are channel multipliers x1/x2/x4 (channels times
# 1, 2, 4). GPU: one GTX 1080Ti, cuDNN 7.0 with its benchmark mode, in batches/sec (Fig. 1 states batch size 8
# for the GPU and 1 for ARM; Tables 1-4 do not restate it). ARM: Snapdragon 810, one thread, in images/sec
# (Tables 2-4 label the ARM column "CPU"). The block structures of Table 3 are drawn only in the paper's
# Appendix Fig. 1, which gives no numbers; shufflenet.guidelines documents how it builds them.
V2_GUIDELINE_INPUT_SIZE = 56
V2_GUIDELINE_BLOCKS = 10
V2_GUIDELINE_MULTIPLIERS: tuple[int, int, int] = (1, 2, 4)

# Table 1 (G1): two 1x1 convs per block, c1 -> c2 then c2 -> c1. Per c1:c2 ratio: the (c1, c2) at x1 and the
# speeds at x1/x2/x4, for GPU and ARM (the two platforms use different widths).
V2_TABLE1_G1: dict[str, dict[str, tuple]] = {
    "1:1": {"gpu_channels": (128, 128), "gpu": (1480, 723, 232), "arm_channels": (32, 32), "arm": (76.2, 21.7, 5.3)},
    "1:2": {"gpu_channels": (90, 180), "gpu": (1296, 586, 206), "arm_channels": (22, 44), "arm": (72.9, 20.5, 5.1)},
    "1:6": {"gpu_channels": (52, 312), "gpu": (876, 489, 189), "arm_channels": (13, 78), "arm": (69.1, 17.9, 4.6)},
    "1:12": {"gpu_channels": (36, 432), "gpu": (748, 392, 163), "arm_channels": (9, 108), "arm": (57.6, 15.1, 4.4)},
}

# Table 2 (G2): 10 stacked 1x1 group convs c -> c with g groups; c at x1 per platform and the speeds at x1/x2/x4.
V2_TABLE2_G2: dict[int, dict[str, tuple | int]] = {
    1: {"gpu_channels": 128, "gpu": (2451, 1289, 437), "arm_channels": 64, "arm": (40.0, 10.2, 2.3)},
    2: {"gpu_channels": 180, "gpu": (1725, 873, 341), "arm_channels": 90, "arm": (35.0, 9.5, 2.2)},
    4: {"gpu_channels": 256, "gpu": (1026, 644, 338), "arm_channels": 128, "arm": (32.9, 8.7, 2.1)},
    8: {"gpu_channels": 360, "gpu": (634, 445, 230), "arm_channels": 180, "arm": (27.8, 7.5, 1.8)},
}

# Table 3 (G3): blocks of 1 to 4 1x1 convs in series or in parallel. c is the width of the 1-fragment block
# (GPU c = 128/256/512, ARM c = 64/128/256 for the three columns); the other blocks' widths are adjusted so
# that FLOPs equal the 1-fragment's.
V2_TABLE3_CHANNELS: dict[str, tuple[int, int, int]] = {"gpu": (128, 256, 512), "arm": (64, 128, 256)}
V2_TABLE3_G3: dict[str, dict[str, tuple]] = {
    "1-fragment": {"gpu": (2446, 1274, 434), "arm": (40.2, 10.1, 2.3)},
    "2-fragment-series": {"gpu": (1790, 909, 336), "arm": (38.6, 10.1, 2.2)},
    "4-fragment-series": {"gpu": (752, 745, 349), "arm": (38.4, 10.1, 2.3)},
    "2-fragment-parallel": {"gpu": (1537, 803, 320), "arm": (33.4, 9.1, 2.2)},
    "4-fragment-parallel": {"gpu": (691, 572, 292), "arm": (35.0, 8.4, 2.1)},
}

# Table 4 (G4): ResNet "bottleneck" unit (1x1, 3x3, 1x1 conv) with ReLU and shortcut removed separately, stacked
# 10 times; c = 32/64/128 channels in the unit for the three columns on both platforms. Keyed by (relu, shortcut).
V2_TABLE4_CHANNELS: tuple[int, int, int] = (32, 64, 128)
V2_TABLE4_G4: dict[tuple[bool, bool], dict[str, tuple]] = {
    (True, True): {"gpu": (2427, 2066, 1436), "arm": (56.7, 16.9, 5.0)},
    (True, False): {"gpu": (2647, 2256, 1735), "arm": (61.9, 18.8, 5.2)},
    (False, True): {"gpu": (2672, 2121, 1458), "arm": (57.3, 18.2, 5.1)},
    (False, False): {"gpu": (2842, 2376, 1782), "arm": (66.3, 20.2, 5.4)},
}

# Table 8, the ShuffleNet rows: complexity (MFLOPs), top-1 error (%), GPU speed (batches/sec, batch 8) and ARM
# speed (images/sec, batch 1) at 224x224, keyed by this package's registry name (v1 rows are g=3).
V2_TABLE8_SHUFFLENET: dict[str, dict[str, float]] = {
    "shufflenet_v2_x0_5": {"mflops": 41, "top1_err": 39.7, "gpu": 417, "arm": 57.0},
    "shufflenet_v1_g3_x0_5": {"mflops": 38, "top1_err": 43.2, "gpu": 347, "arm": 56.8},
    "shufflenet_v2_x1_0": {"mflops": 146, "top1_err": 30.6, "gpu": 341, "arm": 24.4},
    "shufflenet_v1_g3_x1_0": {"mflops": 140, "top1_err": 32.6, "gpu": 213, "arm": 21.8},
    "shufflenet_v2_x1_5": {"mflops": 299, "top1_err": 27.4, "gpu": 255, "arm": 11.8},
    "shufflenet_v1_g3_x1_5": {"mflops": 292, "top1_err": 28.5, "gpu": 164, "arm": 10.3},
    "shufflenet_v2_x2_0": {"mflops": 591, "top1_err": 25.1, "gpu": 217, "arm": 6.7},
    "shufflenet_v1_g3_x2_0": {"mflops": 524, "top1_err": 26.3, "gpu": 133, "arm": 6.4},
}

# ---------------------------------------------------------------- ShuffleNetV2+ (megvii-model/ShuffleNet-Series)
# The V2 authors' own extension (ShuffleNetV2+/network.py, blocks.py, README.md): v2 units with 3x3/5x5/7x7
# depthwise kernels, an Xception-style unit, squeeze-excitation and h-swish. No paper; the code is the source.
V2_PLUS_SIZES: tuple[str, ...] = ("small", "medium", "large")
V2_PLUS_STEM_CHANNELS = 16
V2_PLUS_STAGE_REPEATS: tuple[int, int, int, int] = (4, 4, 8, 4)
# Output channels of stages 1-4 per size (network.py's stage_out_channels[2:6]).
V2_PLUS_STAGE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "small": (36, 104, 208, 416),
    "medium": (48, 128, 256, 512),
    "large": (68, 168, 336, 672),
}
V2_PLUS_HEAD_CHANNELS = 1280  # conv_last, the head's SE and its hidden linear layer
# The unit at each of the 20 positions (train.py's `architecture`, the same for every size):
# 0/1/2 = shuffle unit with a 3x3/5x5/7x7 depthwise kernel, 3 = Xception unit (three depthwise-3x3 + 1x1 pairs).
V2_PLUS_ARCHITECTURE: tuple[int, ...] = (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2)
V2_PLUS_UNIT_KERNELS: dict[int, int] = {0: 3, 1: 5, 2: 7}
V2_PLUS_XCEPTION = 3
V2_PLUS_HSWISH_FROM_STAGE = 2  # stage 1 uses ReLU, stages 2-4 h-swish
V2_PLUS_SE_FROM_STAGE = 3  # squeeze-excitation at the end of the main branch in stages 3 and 4
V2_PLUS_SE_REDUCTION = 4
V2_PLUS_DROPOUT = 0.2
# README.md's table: FLOPs (millions of multiply-adds), params (millions), top-1 / top-5 error (%), 224x224.
V2_PLUS_README: dict[str, dict[str, float]] = {
    "large": {"mflops": 360, "mparams": 6.7, "top1_err": 22.9, "top5_err": 6.7},
    "medium": {"mflops": 222, "mparams": 5.6, "top1_err": 24.3, "top5_err": 7.4},
    "small": {"mflops": 156, "mparams": 5.1, "top1_err": 25.9, "top5_err": 8.3},
}
# Exact parameter counts of the official network.py (1000 classes), which ours must equal.
V2_PLUS_OFFICIAL_PARAMS: dict[str, int] = {"large": 6_768_220, "medium": 5_679_840, "small": 5_137_116}

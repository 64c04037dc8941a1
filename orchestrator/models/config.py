"""Config keys of FCOS, BlendMask and CondInst (the reference toolbox's names and defaults).

Each ``add_*_config`` changes only the cfg it is given, never detectron2's global defaults, so
importing this module has no side effects on other models, tests or Ray workers.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_fcos_config", "add_blendmask_config", "add_condinst_config",
           "add_backbone_config"]


def add_fcos_config(cfg: CN) -> None:
    """FCOS proposal generator keys (MODEL.FCOS), the P6/P7 backbone keys and
    MODEL.RESNETS.DEFORM_INTERVAL."""
    add_backbone_config(cfg)
    cfg.MODEL.FCOS = CN()
    fcos = cfg.MODEL.FCOS
    fcos.NUM_CLASSES = 80
    fcos.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    fcos.FPN_STRIDES = [8, 16, 32, 64, 128]
    fcos.PRIOR_PROB = 0.01
    fcos.INFERENCE_TH_TRAIN = 0.05
    fcos.INFERENCE_TH_TEST = 0.05
    fcos.NMS_TH = 0.6
    fcos.PRE_NMS_TOPK_TRAIN = 1000
    fcos.PRE_NMS_TOPK_TEST = 1000
    fcos.POST_NMS_TOPK_TRAIN = 100
    fcos.POST_NMS_TOPK_TEST = 100
    fcos.TOP_LEVELS = 2
    fcos.NORM = "GN"
    fcos.USE_SCALE = True
    fcos.BOX_QUALITY = "ctrness"
    fcos.THRESH_WITH_CTR = False
    fcos.LOSS_ALPHA = 0.25
    fcos.LOSS_GAMMA = 2.0
    fcos.LOSS_NORMALIZER_CLS = "fg"
    fcos.LOSS_WEIGHT_CLS = 1.0
    fcos.SIZES_OF_INTEREST = [64, 128, 256, 512]
    fcos.USE_RELU = True
    fcos.USE_DEFORMABLE = False
    fcos.NUM_CLS_CONVS = 4
    fcos.NUM_BOX_CONVS = 4
    fcos.NUM_SHARE_CONVS = 0
    fcos.CENTER_SAMPLE = True
    fcos.POS_RADIUS = 1.5
    fcos.LOC_LOSS_TYPE = "giou"
    fcos.YIELD_PROPOSAL = False
    fcos.YIELD_BOX_FEATURES = False
    # In a stage of DEFORM_ON_PER_STAGE, only every DEFORM_INTERVAL-th block is deformable.
    cfg.MODEL.RESNETS.DEFORM_INTERVAL = 1


def add_blendmask_config(cfg: CN) -> None:
    """FCOS keys plus the basis module (MODEL.BASIS_MODULE) and blender (MODEL.BLENDMASK)."""
    add_fcos_config(cfg)
    cfg.MODEL.BASIS_MODULE = CN()
    basis = cfg.MODEL.BASIS_MODULE
    basis.NAME = "ProtoNet"
    basis.NUM_BASES = 4
    basis.LOSS_ON = False
    basis.ANN_SET = "coco"
    basis.CONVS_DIM = 128
    basis.IN_FEATURES = ["p3", "p4", "p5"]
    basis.NORM = "SyncBN"
    basis.NUM_CONVS = 3
    basis.COMMON_STRIDE = 8
    basis.NUM_CLASSES = 80
    basis.LOSS_WEIGHT = 0.3

    cfg.MODEL.BLENDMASK = CN()
    blend = cfg.MODEL.BLENDMASK
    blend.ATTN_SIZE = 14
    blend.TOP_INTERP = "bilinear"
    blend.BOTTOM_RESOLUTION = 56
    blend.POOLER_TYPE = "ROIAlignV2"
    blend.POOLER_SAMPLING_RATIO = 1
    blend.POOLER_SCALES = (0.25,)
    blend.INSTANCE_LOSS_WEIGHT = 1.0
    blend.VISUALIZE = False


def add_condinst_config(cfg: CN) -> None:
    """FCOS keys plus MODEL.CONDINST (mask branch, dynamic mask head, proposal sampling)."""
    add_fcos_config(cfg)
    cfg.MODEL.CONDINST = CN()
    cond = cfg.MODEL.CONDINST
    cond.MASK_OUT_STRIDE = 4
    cond.BOTTOM_PIXELS_REMOVED = -1
    # Training-time cap on the instances the mask loss sees (-1 = all), or top-k per image.
    cond.MAX_PROPOSALS = -1
    cond.TOPK_PROPOSALS_PER_IM = -1

    cond.MASK_HEAD = CN()
    cond.MASK_HEAD.CHANNELS = 8
    cond.MASK_HEAD.NUM_LAYERS = 3
    cond.MASK_HEAD.USE_FP16 = False
    cond.MASK_HEAD.DISABLE_REL_COORDS = False

    cond.MASK_BRANCH = CN()
    branch = cond.MASK_BRANCH
    branch.OUT_CHANNELS = 8
    branch.IN_FEATURES = ["p3", "p4", "p5"]
    branch.CHANNELS = 128
    branch.NORM = "BN"
    branch.NUM_CONVS = 4
    branch.SEMANTIC_LOSS_ON = False


def add_backbone_config(cfg: CN) -> None:
    """Keys of the BiFPN and DLA backbones (MODEL.BiFPN, MODEL.DLA), the reference's defaults."""
    cfg.MODEL.BiFPN = CN()
    cfg.MODEL.BiFPN.IN_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.BiFPN.OUT_CHANNELS = 160
    cfg.MODEL.BiFPN.NUM_REPEATS = 6
    cfg.MODEL.BiFPN.NORM = ""

    cfg.MODEL.DLA = CN()
    cfg.MODEL.DLA.CONV_BODY = "DLA34"
    cfg.MODEL.DLA.NORM = "FrozenBN"

"""UNet surgery: removable units, plans, student configs, weight and feature maps, student building."""

from __future__ import annotations

from pruner.unet.config import student_config
from pruner.unet.load import (
    ModelRef,
    architecture_config,
    bundled_teacher,
    load_pipeline,
    load_unet,
    resolve_model,
    unet_config,
)
from pruner.unet.maps import FeatureLevel, feature_map, position_map, weight_map
from pruner.unet.plan import (
    LayerSlot,
    Layout,
    Plan,
    check_expressible,
    compress_names,
    expand_names,
    layout_of,
    nearest_expressible,
    unit_kinds,
)
from pruner.unet.surgery import InitReport, build_student, meta_unet, plan_student_config
from pruner.unet.topology import Topology, topology_of
from pruner.unet.units import Unit, list_units

__all__ = [
    "FeatureLevel",
    "InitReport",
    "LayerSlot",
    "Layout",
    "ModelRef",
    "Plan",
    "Topology",
    "Unit",
    "architecture_config",
    "build_student",
    "bundled_teacher",
    "check_expressible",
    "compress_names",
    "expand_names",
    "feature_map",
    "layout_of",
    "list_units",
    "load_pipeline",
    "load_unet",
    "meta_unet",
    "nearest_expressible",
    "plan_student_config",
    "position_map",
    "resolve_model",
    "student_config",
    "topology_of",
    "unet_config",
    "unit_kinds",
    "weight_map",
]

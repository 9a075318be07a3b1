from __future__ import annotations

from collections import Counter

from conftest import TINY_SDXL

from pruner.cost import CostModel
from pruner.unet import architecture_config, list_units, meta_unet, topology_of


def _units(config):  # type: ignore[no-untyped-def]
    cost = CostModel(config)
    return list_units(cost.topology, cost)


def test_sdxl_units_match_its_published_structure() -> None:
    units = _units(architecture_config("sdxl"))
    kinds = Counter(u.kind for u in units)
    assert kinds == {"transformer_layer": 70, "layer": 6, "stage": 1, "mid_block": 1, "mid_attention": 1}
    names = {u.name for u in units}
    assert "down_blocks.2.attentions.0.transformer_blocks.7" in names
    assert "up_blocks.0.attentions.2.transformer_blocks.9" in names


def test_sd15_units() -> None:
    units = _units(architecture_config("sd15"))
    kinds = Counter(u.kind for u in units)
    assert kinds == {"transformer_layer": 16, "layer": 8, "stage": 1, "mid_block": 1, "mid_attention": 1}


def test_layer_unit_takes_its_skip_partner_and_costs_both() -> None:
    config = architecture_config("sdxl")
    units = {u.name: u for u in _units(config)}
    layer = units["down_blocks.1.resnets.0"]
    # removing down layer 0 of block 1 removes the up layer that consumes its skip: up_blocks.1 layer 1
    assert layer.modules == (
        "down_blocks.1.resnets.0",
        "down_blocks.1.attentions.0",
        "up_blocks.1.resnets.1",
        "up_blocks.1.attentions.1",
    )
    unet = meta_unet(config)
    modules = dict(unet.named_modules())
    same_shape = [
        "down_blocks.1.resnets.1",
        "down_blocks.1.attentions.1",
        "up_blocks.1.resnets.1",
        "up_blocks.1.attentions.1",
    ]
    assert layer.params == sum(sum(p.numel() for p in modules[m].parameters()) for m in same_shape)


def test_transformer_layer_params_are_the_module_params() -> None:
    unet = meta_unet(TINY_SDXL)
    units = _units(TINY_SDXL)
    modules = dict(unet.named_modules())
    for u in units:
        if u.kind == "transformer_layer":
            assert u.params == sum(p.numel() for p in modules[u.name].parameters())


def test_parents_and_couplings() -> None:
    units = {u.name: u for u in _units(architecture_config("sdxl"))}
    assert units["down_blocks.1.attentions.1.transformer_blocks.0"].parent == "down_blocks.1.resnets.1"
    assert units["up_blocks.1.attentions.0.transformer_blocks.1"].parent == "down_blocks.1.resnets.1"
    assert units["up_blocks.1.attentions.2.transformer_blocks.1"].parent is None  # the tail up layer stays
    assert units["mid_block.attentions.0.transformer_blocks.3"].parent == "mid_block.attentions.0"
    assert units["mid_block.attentions.0"].parent == "mid_block"
    mid_layer = units["mid_block.attentions.0.transformer_blocks.3"]
    assert "down_blocks.2.attentions.0.transformer_blocks.0" in mid_layer.coupled


def test_already_pruned_student_topologies() -> None:
    ssd = dict(architecture_config("sdxl"), mid_block_type="UNetMidBlock2D")
    ssd.update(transformer_layers_per_block=[1, [2, 2], [4, 4]],
               reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], 1])  # fmt: skip
    topo = topology_of(meta_unet(ssd))
    assert topo.up[0].depths == (4, 4, 10) and topo.mid == "resnet"
    kinds = Counter(u.kind for u in _units(ssd))
    assert (
        kinds["transformer_layer"] == 2 * 2 + 2 * 4 + 18 + 4 and kinds["mid_attention"] == 0 and kinds["mid_block"] == 1
    )
    koala = dict(
        architecture_config("sdxl"), layers_per_block=1, transformer_layers_per_block=[1, 2, 5], mid_block_type=None
    )
    kinds = Counter(u.kind for u in _units(koala))
    assert kinds["layer"] == 3 and kinds["mid_block"] == 0 and kinds["mid_attention"] == 0

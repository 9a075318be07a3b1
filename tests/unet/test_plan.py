from __future__ import annotations

import pytest
from conftest import TINY_SDXL, random_plans

from pruner.errors import InexpressiblePlanError, UnknownUnitError
from pruner.unet import (
    Plan,
    architecture_config,
    check_expressible,
    compress_names,
    expand_names,
    meta_unet,
    plan_student_config,
    topology_of,
)


@pytest.fixture(scope="module")
def sdxl_topo():  # type: ignore[no-untyped-def]
    return topology_of(meta_unet(architecture_config("sdxl")))


def test_range_names_round_trip() -> None:
    names = ["a.transformer_blocks.2-4", "mid_block", "b.transformer_blocks.7"]
    expanded = expand_names(names)
    assert expanded == [
        "a.transformer_blocks.2",
        "a.transformer_blocks.3",
        "a.transformer_blocks.4",
        "mid_block",
        "b.transformer_blocks.7",
    ]
    assert sorted(compress_names(expanded)) == sorted(names)
    with pytest.raises(UnknownUnitError, match="backwards"):
        expand_names(["a.transformer_blocks.4-2"])


def test_unknown_unit_suggests_the_closest(sdxl_topo) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownUnitError, match=r"did you mean down_blocks\.2\.attentions\.0\.transformer_blocks\.7"):
        check_expressible(Plan.removing(["down_blocks.2.attentions.0.transformer_block.7"]), sdxl_topo)


def test_mid_depth_coupling_names_the_coupling_and_the_nearest_plan(sdxl_topo) -> None:  # type: ignore[no-untyped-def]
    plan = Plan.removing(["mid_block.attentions.0.transformer_blocks.4-9"])
    with pytest.raises(InexpressiblePlanError, match=r"transformer_layers_per_block\[-1\]") as info:
        check_expressible(plan, sdxl_topo)
    assert "keep mid_block.attentions.0.transformer_blocks.4-9" in str(info.value)
    check_expressible(info.value.nearest, sdxl_topo)  # type: ignore[arg-type]
    both = plan | Plan.removing([f"down_blocks.2.attentions.0.transformer_blocks.{m}" for m in range(4, 10)])
    assert plan_student_config(architecture_config("sdxl"), both)["reverse_transformer_layers_per_block"] is not None


def test_removing_every_layer_of_a_block_is_inexpressible(sdxl_topo) -> None:  # type: ignore[no-untyped-def]
    plan = Plan.removing(["down_blocks.1.resnets.0", "down_blocks.1.resnets.1"])
    with pytest.raises(InexpressiblePlanError, match="layers_per_block >= 1") as info:
        check_expressible(plan, sdxl_topo)
    assert info.value.nearest == Plan.removing(["down_blocks.1.resnets.1"])


def test_nearest_expressible_always_expresses() -> None:
    topo = topology_of(meta_unet(TINY_SDXL))
    for plan in random_plans(topo, 60, seed=3, p=0.5):
        layout = check_expressible(plan, topo)
        config = plan_student_config(TINY_SDXL, plan, topo)
        assert topology_of(meta_unet(config)).up[0].layers == len(layout.up[0])


@pytest.mark.parametrize(
    ("remove", "expected"),
    [
        (
            [],
            {
                "layers_per_block": 2,
                "transformer_layers_per_block": [1, 2, 10],
                "reverse_transformer_layers_per_block": None,
            },
        ),
        (["mid_block"], {"mid_block_type": None}),
        (["mid_block.attentions.0"], {"mid_block_type": "UNetMidBlock2D"}),
        (["down_blocks.0.resnets.0", "down_blocks.1.resnets.1", "down_blocks.2.resnets.0"], {"layers_per_block": 1}),
    ],
)
def test_student_config_uses_the_plainest_form(remove, expected) -> None:  # type: ignore[no-untyped-def]
    config = plan_student_config(architecture_config("sdxl"), Plan.removing(remove))
    for key, value in expected.items():
        assert config[key] == value

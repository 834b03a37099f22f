"""Compile modes are parsed in the order asked, an unknown one refused; the recipe's inductor settings apply inside
the block only, and freezing (which would ignore in-place LoRA swaps) is off whatever was set before."""

import pytest
from torch._inductor import config

from gpu.bench.compile_modes import DEFAULT_ORDER, FAST_RECIPE, CompileMode, inductor_settings, parse_modes


def test_modes_keep_the_order_asked_and_the_vae_suffix() -> None:
    assert parse_modes("reduce-overhead,default+vae") == (
        CompileMode("reduce-overhead", "reduce-overhead", False),
        CompileMode("default+vae", None, True),
    )
    assert [m.name for m in parse_modes(",".join(DEFAULT_ORDER))] == list(DEFAULT_ORDER)
    assert parse_modes("") == ()


@pytest.mark.parametrize("text", ["max-autotune", "default+unet", "fast"])
def test_an_unknown_mode_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="unknown compile mode"):
        parse_modes(text)


def test_the_recipe_applies_inside_the_block_and_freezing_stays_off() -> None:
    # config.patch, not monkeypatch: undoing a monkeypatch on inductor's config module deletes the entry (its
    # settings are not module attributes), and every later compile in the process fails.
    with config.patch(freezing=True):
        before = {name: getattr(config, name) for name in FAST_RECIPE}
        with inductor_settings(recipe=True) as settings:
            assert config.freezing is False and settings["freezing"] is False
            assert all(getattr(config, name) == value for name, value in FAST_RECIPE.items())
        assert {name: getattr(config, name) for name in FAST_RECIPE} == before and config.freezing is True
    with inductor_settings(recipe=False) as settings:
        assert settings == {"freezing": False}
    assert config.freezing is False

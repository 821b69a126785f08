"""The precision records: names match the option, storage cost matches the libraries."""

from __future__ import annotations

import pytest
import torch

from simpletuner.config.options import OPTIONS_BY_NAME
from simpletuner.errors import ConfigError
from simpletuner.quantisation.precisions import PRECISION_NAMES, bytes_per_parameter, get_precision


def test_the_option_offers_exactly_the_precisions():
    assert OPTIONS_BY_NAME["base_model_precision"].choices == PRECISION_NAMES
    assert {"no_change", "int8-quanto", "int4-quanto", "int2-quanto", "fp8-quanto", "fp8uz-quanto",
            "int8-torchao", "fp8-torchao", "nf4-bnb"} == set(PRECISION_NAMES)


def test_nominal_bytes():
    assert bytes_per_parameter("int8-quanto") == 1
    assert bytes_per_parameter("fp8-torchao") == 1
    assert bytes_per_parameter("int4-quanto", include_scales=False) == 0.5
    assert bytes_per_parameter("int2-quanto", include_scales=False) == 0.25
    assert bytes_per_parameter("nf4-bnb", include_scales=False) == 0.5
    assert bytes_per_parameter("no_change") == 2
    assert bytes_per_parameter("no_change", unquantised_bytes=4) == 4


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="int3-quanto.*choose one of: no_change"):
        get_precision("int3-quanto")


def _storage_bytes(tensor) -> int:
    """Bytes of every plain tensor inside a (possibly nested) tensor subclass."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(_storage_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def _quantised_weight(name: str, linear: torch.nn.Module):
    model = torch.nn.Sequential(linear)
    if name.endswith("-quanto"):
        from optimum.quanto import freeze, qfloat8, qfloat8_e4m3fnuz, qint2, qint4, qint8, quantize

        weights = {"int8": qint8, "int4": qint4, "int2": qint2, "fp8": qfloat8, "fp8uz": qfloat8_e4m3fnuz}
        quantize(model, weights=weights[name.split("-")[0]])
        freeze(model)
        return model[0].weight
    if name.endswith("-torchao"):
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig() if name.startswith("int8") else Float8WeightOnlyConfig())
        return model[0].weight
    from bitsandbytes.functional import quantize_4bit

    packed, state = quantize_4bit(linear.weight.data, quant_type="nf4", compress_statistics=True)
    return [packed, state.absmax, state.state2.absmax, state.offset]


@pytest.mark.parametrize("name", [n for n in PRECISION_NAMES if n != "no_change"])
def test_bytes_per_parameter_matches_what_the_library_stores(name):
    # 512 inputs: per-row scales cost ~1/512 byte per weight, inside the tolerance;
    # grouped scales (int4/int2: +1/32, nf4: +1/64) are not, so they must be counted.
    linear = torch.nn.Linear(512, 256, bias=False).to(torch.bfloat16)
    weight = _quantised_weight(name, linear)
    parts = weight if isinstance(weight, list) else [weight]
    measured = sum(_storage_bytes(t) for t in parts) / (512 * 256)
    assert measured == pytest.approx(bytes_per_parameter(name), abs=0.012)

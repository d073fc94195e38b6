from __future__ import annotations

import pytest
import timm
import torch

from runtime.pretrained import lite_timm_state_dict, load_lite_weights


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_weights_cover_every_tensor(variant: int) -> None:
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    unused = load_lite_weights(model, variant)
    assert unused == []
    weights = lite_timm_state_dict(variant)
    for key, tensor in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(tensor, weights[key]), key


def test_features_only_model_loads_and_reports_unused_head() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    unused = load_lite_weights(model, 0)
    assert "classifier.weight" in unused and "conv_head.weight" in unused


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="Lite3"):
        lite_timm_state_dict(3)

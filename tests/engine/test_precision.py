"""fp32 vs bf16 autocast on CPU, and channels_last, within tolerance."""

import torch

import msfusion as mf


def test_bf16_autocast_close_to_fp32():
    model = mf.create_model("segnext_t").eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).abs().max() / ref.abs().max()
    assert rel < 5e-2
    # The decision that matters: most pixels keep their class.
    assert (low.float().argmax(1) == ref.argmax(1)).float().mean() > 0.9


def test_channels_last_matches_fp32():
    model = mf.create_model("segnext_t").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)

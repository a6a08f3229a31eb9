"""The cost model on every zoo model and profile, and agreement of the two op tracers."""
import pytest
import torch

from npu_compress import estimate, list_profiles, load_profile, models
from npu_compress.hardware.cost import report_from_records
from npu_compress.hardware.dispatch_trace import trace_ops
from npu_compress.hardware.export_records import records_from_exported


@pytest.mark.parametrize("name", models.names())
def test_estimate_every_zoo_model_on_every_profile(name):
    model, x = models.create(name), models.example_input(name)
    records = trace_ops(model, x)  # the trace does not depend on the profile
    params = sum(p.numel() for p in model.parameters())
    assert estimate(model, x, "generic-4tops") == report_from_records(records, load_profile("generic-4tops"), params)
    for profile in list_profiles():
        r = report_from_records(records, load_profile(profile), params)
        assert r.latency_s > 0 and r.memory_bytes > 0 and r.macs > 0
        assert r.params == sum(p.numel() for p in model.parameters())
        assert r.latency_s == pytest.approx(sum(c.latency_s for c in r.layers))
        assert all(c.macs_padded >= c.macs for c in r.layers)
        # packed weight bytes never exceed params * dtype + bias at accumulator width
        dt = load_profile(profile).compute.dtype
        assert r.weight_bytes <= r.params * dt.bias_bytes


@pytest.mark.parametrize("name", models.names())
def test_dispatch_and_export_tracers_cost_the_same(name):
    model, x = models.create(name).eval(), models.example_input(name)
    p = load_profile("generic-4tops")
    ep = torch.export.export(model, (x,), strict=False)
    a = estimate(model, x, p)
    b = report_from_records(records_from_exported(ep), p, a.params)
    assert b.latency_s == pytest.approx(a.latency_s, rel=1e-12)
    assert (b.memory_bytes, b.macs, b.peak_activation_bytes) == (a.memory_bytes, a.macs, a.peak_activation_bytes)

"""The start-up timeline: phases from the driver's and the worker's marks, memory per phase, and
DeepSpeed imported without MLflow when the run does not log to it."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from llmft.train import startup


def test_phases_are_the_gaps_between_marks_in_order_and_total_counts_from_process_start():
    marks = {"process_started": 100.0, "launched": 101.0, "data_ready": 103.0, "ray_ready": 108.0,
             "fit_called": 108.5, "worker_started": 110.0, "loop_entered": 112.0, "imports_done": 115.0,
             "first_step_done": 130.0}
    phases = startup.phases(marks)
    assert phases == {"command": 1.0, "driver_and_data": 2.0, "ray_start": 5.0, "trainer_setup": 0.5,
                      "worker_group": 1.5, "worker_setup": 2.0, "imports": 3.0, "total": 30.0}
    # Every phase is named once, and each starts where an earlier one ends (no gaps, no overlaps).
    ends = [end for _, _, end in startup.PHASES]
    assert len(set(ends)) == len(ends)
    for _, start, _ in startup.PHASES[1:]:
        assert start in ends


def test_memory_phases_are_growth_between_marks():
    memory = {"loop_entered": 0.3, "imports_done": 0.8, "distributed_ready": 0.8, "data_ready_in_worker": 0.9,
              "model_loaded": 1.4, "engine_ready": 2.0, "resumed": 2.0, "first_step_done": 3.1}
    phases = startup.memory_phases(memory, peak_gib=4.0)
    assert phases["after_imports"] == 0.8
    assert phases["model_load"] == pytest.approx(0.5)
    assert phases["deepspeed_initialize"] == pytest.approx(0.6)
    assert phases["first_step"] == pytest.approx(1.1)
    assert phases["first_step_peak"] == 4.0


def test_resident_memory_of_this_process():
    values = startup.resident_gib()
    assert values["VmHWM"] >= values["RssAnon"] > 0


def test_mlflow_is_hidden_only_while_importing_and_only_when_unused(monkeypatch):
    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    unused = SimpleNamespace(logging=SimpleNamespace(mlflow_tracking_uri=None))
    with startup.without_unused_mlflow(unused):
        with pytest.raises(ImportError):
            import mlflow  # noqa: F401
    assert "mlflow" not in sys.modules  # importable again afterwards
    used = SimpleNamespace(logging=SimpleNamespace(mlflow_tracking_uri="file:///tmp/m"))
    with startup.without_unused_mlflow(used):
        assert sys.modules.get("mlflow", "absent") is not None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap")
def test_memory_marks_count_memory_in_use_not_what_the_allocator_kept():
    # A step's activations, freed: glibc keeps such pages resident once its mmap threshold has
    # grown (it grows when large blocks are freed), so RssAnon alone would count them.
    import torch

    before = startup.resident_gib()["RssAnon"]
    for _ in range(3):
        blocks = [torch.ones(1024, 1024) for _ in range(32)]
        del blocks
    blocks = [torch.ones(512, 1024) for _ in range(256)]  # 0.5 GiB below the grown threshold
    del blocks
    memory = {}
    startup.mark({}, "first_step_done", memory)
    assert memory["first_step_done"] - before < 0.1

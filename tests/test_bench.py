"""The benchmark's ratios (apo_online/benchmarking/workers.py, used by bench/run_bench.py and bench/gpu_bench.py):
apo-online / TRL against both TRL variants, by hand."""

from __future__ import annotations

import pytest

from apo_online.benchmarking.workers import ratios


def test_ratios_against_both_trl_variants_and_the_refit_share():
    summary = {
        "apo_ppo_frozen_rm": {"step_s": 2.0, "peak_cuda_mb": 100.0, "rm_share": 0.0},
        "apo_ppo_refit": {"step_s": 3.0, "peak_cuda_mb": 120.0, "rm_share": 0.25},
        "trl_ppo": {"step_s": 4.0, "peak_cuda_mb": 400.0},
        "trl_ppo_peft": {"step_s": 6.0, "peak_cuda_mb": 300.0},
    }
    out = ratios(summary, "peak_cuda_mb", "peak CUDA memory")
    assert out == pytest.approx({
        "apo_ppo_frozen_rm/trl step time": 0.5, "apo_ppo_frozen_rm/trl peak CUDA memory": 0.25,
        "apo_ppo_refit/trl step time": 0.75, "apo_ppo_refit/trl peak CUDA memory": 0.3,
        "apo_ppo_frozen_rm/trl_peft step time": 2.0 / 6.0, "apo_ppo_frozen_rm/trl_peft peak CUDA memory": 1.0 / 3.0,
        "apo_ppo_refit/trl_peft step time": 0.5, "apo_ppo_refit/trl_peft peak CUDA memory": 0.4,
        "refit overhead share of wall time": 0.25,
    })


def test_ratios_skip_a_missing_memory_figure_and_absent_variants():
    summary = {"apo_ppo_frozen_rm": {"step_s": 2.0, "peak_cuda_mb": None, "rm_share": 0.0},
               "trl_ppo": {"step_s": 4.0, "peak_cuda_mb": None}}
    assert ratios(summary, "peak_cuda_mb", "peak CUDA memory") == {"apo_ppo_frozen_rm/trl step time": 0.5}


def test_merged_sampling_and_allocator_ratios_against_the_refit_variant():
    from apo_online.benchmarking.workers import worker_env

    summary = {"apo_ppo_refit": {"step_s": 3.0, "peak_rss_mb": 3000.0, "rm_share": 0.3,
                                 "generation_tokens_per_s": 30.0},
               "apo_ppo_refit_unmerged": {"step_s": 4.0, "peak_rss_mb": 2900.0, "rm_share": 0.3,
                                          "generation_tokens_per_s": 20.0},
               "apo_ppo_refit_jemalloc": {"step_s": 3.3, "peak_rss_mb": 2400.0, "rm_share": 0.3,
                                          "generation_tokens_per_s": 30.0}}
    out = ratios(summary, "peak_rss_mb", "peak RSS")
    assert out["sampling tokens/s merged / unmerged"] == pytest.approx(1.5)
    assert out["apo_ppo_refit_jemalloc/apo_ppo_refit peak RSS"] == pytest.approx(0.8)
    assert out["apo_ppo_refit_jemalloc/apo_ppo_refit step time"] == pytest.approx(1.1)
    assert "apo_ppo_refit_tcmalloc/apo_ppo_refit peak RSS" not in out
    assert worker_env("apo_ppo_refit_jemalloc") == {"APO_ONLINE_ALLOCATOR": "jemalloc"}
    assert worker_env("apo_ppo_refit_glibc") == {"APO_ONLINE_ALLOCATOR": "system"}
    assert worker_env("apo_ppo_refit_arena2") == {"APO_ONLINE_ALLOCATOR": "system", "MALLOC_ARENA_MAX": "2"}
    assert worker_env("apo_ppo_refit") == {}
    assert worker_env("trl_ppo_fixed_mmap") == {"MALLOC_MMAP_THRESHOLD_": "131072"}


def test_model_flops_utilisation_by_hand():
    from apo_online.benchmarking.workers import model_flops_utilisation

    # 1e9 parameters, 500 tokens/s sampled: 2 * 1e9 * 500 = 1e12 FLOP/s of a 100 TFLOP/s peak = 0.01; a step of
    # 10 s training 2e4 tokens: 6 * 1e9 * 2e4 / 10 = 1.2e13 FLOP/s = 0.12
    out = model_flops_utilisation({"generation_tokens_per_s": 500.0, "step_s": 10.0}, 10**9, 2e4, 100.0)
    assert out == pytest.approx({"sampling": 0.01, "step": 0.12})


def test_time_interleaved_alternates_the_order_and_keeps_each_path_s_last_output():
    from apo_online.benchmarking.apo_game import time_interleaved

    calls = []
    paths = {name: (lambda name=name: calls.append(name) or f"{name}{len(calls)}") for name in ("a", "b")}
    times, outputs = time_interleaved(paths, repeats=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert outputs == {"a": "a5", "b": "b6"}
    assert [len(times[n]) for n in ("a", "b")] == [3, 3] and all(t >= 0 for t in times["a"] + times["b"])

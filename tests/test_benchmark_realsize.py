"""benchmarks.realsize: per-step arithmetic, and one real child run of the demo config."""

import os

import pytest

from benchmarks import realsize


def test_summarize_drops_the_first_window_and_divides_per_step():
    samples = [
        {"step": 3, "time": 10.0, "user": 20.0, "sys": 5.0, "minflt": 1000.0},
        {"step": 6, "time": 13.0, "user": 26.0, "sys": 5.3, "minflt": 1030.0},
        {"step": 9, "time": 16.0, "user": 32.0, "sys": 5.6, "minflt": 1060.0},
    ]
    got = realsize.summarize(samples, batch_size=10)
    assert got["steps"] == 6
    assert got["images_per_s"] == pytest.approx(60 / 6.0)
    assert got["user_s_per_step"] == pytest.approx(2.0)
    assert got["sys_s_per_step"] == pytest.approx(0.1)
    assert got["sys_over_user"] == pytest.approx(0.05)
    assert got["minflt_per_step"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="at least two"):
        realsize.summarize(samples[:1], 10)
    with pytest.raises(ValueError, match="do not increase"):
        realsize.summarize([samples[1], samples[0]], 10)


def test_cases_are_shipped_configs():
    for case in realsize.CASES:
        assert os.path.isfile(os.path.join(realsize.REPO, case.config)), case.config
        assert case.dataset in ("camvid", "shapes")


# Slow tier: about 100 s (two child training processes); the default suite stays under 15 minutes.
@pytest.mark.slow
def test_demo_config_runs_in_a_child_under_both_variants(tmp_path):
    from data_prep import shapes
    from data_prep.folder import convert_folder

    raw = tmp_path / "raw"
    shapes.generate(str(raw), num_train=16, num_val=2, log=lambda m: None)
    convert_folder(str(raw / "images"), str(raw / "masks"), str(tmp_path / "tfr"),
                   ["background", "disk", "square", "triangle"], workers=1, log=lambda m: None)
    case = realsize.Case("configs/unet.cfg", "shapes", log_every=2, windows=1)
    results = {v: realsize.run_case(case, v, str(tmp_path / "tfr"), str(tmp_path / "work"), log=lambda m: None)
               for v in realsize.VARIANTS}
    for variant, res in results.items():
        assert "error" not in res, res
        assert res["steps"] == 2 and [s["step"] for s in res["samples"]] == [2, 4]
        assert res["user_s_per_step"] > 0 and res["config"]["batch_size"] == 16
    assert results["before"]["allocator"] == "system" and results["before"]["config"]["steps_per_loop"] == 1
    assert results["after"]["allocator"] == "tuned" and results["after"]["config"]["steps_per_loop"] == 10
    assert results["after"]["config"]["jit_compile"] is False and results["after_xla"]["config"]["jit_compile"] is True
    # The same workdir again (an interrupted run's model_dir would otherwise resume and train nothing).
    again = realsize.run_case(case, "after", str(tmp_path / "tfr"), str(tmp_path / "work"), log=lambda m: None)
    assert "error" not in again and again["steps"] == 2
    section = realsize.realsize_section({"cases": [vars(case)], "rounds": 1,
                                         "runs": {case.config: {v: [r] for v, r in results.items()}}})
    assert "| `configs/unet.cfg` | before | unet | 64x64 | 16 |" in section
    assert section.count("| `configs/unet.cfg` |") == 4  # three variant rows and the ratio row

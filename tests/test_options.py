"""Options declared once (keras_seg.options): flags, config, flags.txt and validation all come from
the dataclass fields, so none can drift from another."""

import dataclasses

import pytest
from absl import flags as absl_flags

from keras_seg import flags as ks_flags
from keras_seg.options import TrainConfig, from_values, option, options_of, to_flag_lines, validate


def _parsed(argv, config_class=TrainConfig):
    fv = absl_flags.FlagValues()
    ks_flags.define_flags(config_class, flag_values=fv)
    fv(["prog", *argv])
    return fv


def test_every_option_has_a_flag_with_help_and_train_flags_lists_them():
    fields = list(options_of(TrainConfig))
    assert len(fields) == len(dataclasses.fields(TrainConfig))  # no field escapes the declaration
    assert all(f.metadata["help"] for f, _ in fields)
    assert ks_flags.TRAIN_FLAGS == tuple(flag for _, flag in fields)
    fv = _parsed(["--model=enet"])
    assert set(ks_flags.TRAIN_FLAGS) <= set(fv)
    assert fv["model_opt"].help.startswith("Builder option key=value")


def test_flags_txt_replays_to_the_same_config():
    argv = ["--model=enet", "--num_classes=11", "--data_dir=d", "--model_dir=m", "--model_opt=widths=(8, 16, 32)",
            "--crop_size=64,96", "--class_weights=enet", "--noflip", "--optimizer=adamw", "--device=/cpu:0",
            "--eval_scales=0.5,1"]
    cfg = ks_flags.config_from_flags(_parsed(argv))
    assert cfg.model_options == {"widths": (8, 16, 32)} and cfg.crop_size == (64, 96) and not cfg.flip
    assert cfg.eval_scales == (0.5, 1.0)
    text = ks_flags.flags_to_text(_parsed(argv))
    assert "--noflip" in text and "--model_opt=widths=(8, 16, 32)" in text and "--crop_size=64,96" in text
    replayed = ks_flags.config_from_flags(_parsed(text.splitlines()))
    assert replayed == cfg


@pytest.mark.parametrize("argv, match", [
    ([], r"Missing required flags: \['--model', '--num_classes', '--data_dir', '--model_dir'\]"),
    (["--warmup_steps=5", "--train_steps=5"], r"--warmup_steps must be in \[0, train_steps\). Received: warmup_steps=5"),
    (["--data_shards=3"], r"--data_shards must be 0 \(one per worker\) or a divisor of --batch_size=8"),
    (["--crop_size=a,b"], r"--crop_size must be H,W integers"),
    (["--class_weights=1,2"], r"--class_weights lists 2 weights for num_classes=3"),
    (["--model_opt=nope=1"], r"--model_opt keys \['nope'\] are not options of model 'enet'"),
    (["--eval_scales=half"], r"--eval_scales must be comma-separated numbers"),
    (["--eval_scales=0.5,0"], r"--eval_scales must be positive factors. Received: eval_scales=\(0.5, 0.0\)"),
])
def test_validation_names_the_option_and_the_value(argv, match):
    base = [] if not argv else ["--model=enet", "--num_classes=3", "--data_dir=d", "--model_dir=m"]
    with pytest.raises(ValueError, match=match):
        ks_flags.config_from_flags(_parsed(base + argv))


def test_a_new_option_is_a_flag_a_check_and_a_flags_txt_line():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        size: int = option(3, "Side.", check=lambda v, c: v >= 1, want=">= 1")
        mode: str = option("a", "Mode.", choices=("a", "b"))
        names: tuple = option(("x",), "Names.", flag_default=["x"], parse=tuple)

    fv = _parsed(["--size=0", "--mode=b", "--names=p,q"], Toy)
    values = {flag: fv[flag].value for _, flag in options_of(Toy)}
    toy = from_values(Toy, values)
    assert toy == Toy(size=0, mode="b", names=("p", "q"))
    with pytest.raises(ValueError, match=r"--size must be >= 1. Received: size=0"):
        validate(toy)
    with pytest.raises(ValueError, match=r"--mode must be one of \('a', 'b'\). Received: mode='c'"):
        validate(Toy(mode="c"))
    assert to_flag_lines(Toy, values) == "--size=0\n--mode=b\n--names=p,q\n"

"""Known answers for the strict config: every bad key or value is refused in one line naming it.

Pure Python and YAML, no torch work: the whole file runs in well under a second.
"""

from __future__ import annotations

import pytest
import yaml

from lrwa.config import (
    SMALL_PRESET,
    DistillConfig,
    build_config,
    from_mapping,
    load_yaml,
)
from lrwa.errors import LrwaError
from lrwa.yaml_files import MAX_BYTES, MAX_NODES, SHOWN_CHARACTERS, load_yaml_mapping, shown


def refusal(values: dict, base: DistillConfig | None = None) -> str:
    """The one-line message `from_mapping(values)` fails with."""
    with pytest.raises(LrwaError) as caught:
        from_mapping(values, base=base)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- defaults and unknown keys


def test_empty_mapping_gives_the_defaults() -> None:
    assert from_mapping({}) == DistillConfig()


def test_unknown_key_is_named() -> None:
    message = refusal({"epochs": 3, "epoch_count": 5})
    assert "unknown config key 'epoch_count'" in message


def test_unknown_non_string_yaml_key_is_named() -> None:
    # YAML allows integer keys; mixing them with strings must not crash the sort.
    message = refusal({1: "a", "bogus": "b"})
    assert message.startswith("unknown config key '1'")


# ---------------------------------------------------------------- ranges


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("epochs", 0, "[1, 100000]"),
    ("epochs", -3, "[1, 100000]"),
    ("alpha", -0.1, "[0, 100]"),
    ("replay_ratio", 0, "(0, 4]"),
    ("replay_ratio", 4.5, "(0, 4]"),
    ("buffer_size", 0, "[1, 10000000]"),
    ("batch_size", 0, "[1, 1000000]"),
    ("kl_temperature", 0.0, "(0, 100]"),
    ("momentum", 1.5, "[0, 1]"),
    ("seed", -1, "[0, 4294967295]"),
])
def test_out_of_range_names_key_and_range(key: str, value: float, allowed: str) -> None:
    message = refusal({key: value})
    assert f"config key '{key}'" in message
    assert f"allowed range is {allowed}" in message


@pytest.mark.parametrize(("key", "value"), [
    ("epochs", 1), ("alpha", 0.0), ("replay_ratio", 1e-3), ("momentum", 1.0),
])
def test_range_bounds_are_inclusive_where_declared(key: str, value: float) -> None:
    assert getattr(from_mapping({key: value}), key) == value


def test_largest_replay_ratio_is_accepted_with_a_buffer_to_match() -> None:
    config = from_mapping({"replay_ratio": 4.0, "batch_size": 16, "buffer_size": 64})
    assert config.replay_batch_size == 64


# ---------------------------------------------------------------- types


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("epochs", "ten", "an int"),
    ("epochs", 2.5, "an int"),
    ("epochs", True, "an int"),
    ("epochs", [3], "an int"),
    ("alpha", "big", "a float"),
    ("alpha", float("nan"), "a float"),
    ("alpha", float("inf"), "a float"),
    ("alpha", False, "a float"),
    ("download", "maybe", "a bool"),
    ("download", 1, "a bool"),
    ("student", 3, "a str"),
    ("mode", None, "a str"),
])
def test_wrong_type_names_key_and_type(key: str, value: object, kind: str) -> None:
    message = refusal({key: value})
    assert f"config key '{key}' must be {kind}" in message


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("epochs", "10", 10),        # a CLI or YAML string that is a whole number
    ("epochs", 3.0, 3),
    ("alpha", "0.5", 0.5),
    ("alpha", 1, 1.0),
    ("download", "yes", True),
    ("first_order", "false", False),
    ("teacher", None, None),     # optional keys take null
])
def test_values_are_coerced_to_the_field_type(key: str, value: object, expected: object) -> None:
    coerced = getattr(from_mapping({key: value}), key)
    assert coerced == expected
    assert type(coerced) is type(expected)


# ---------------------------------------------------------------- choices


@pytest.mark.parametrize(("key", "value", "choices"), [
    ("mode", "maml", "acquire, joint, meta"),
    ("replay", "ring", "none, memory, generative"),
    ("student_loss", "mse", "l1, kl"),
    ("generator_loss", "gan", "pre-dfkd, dfad, jsd-nats"),
    ("insertion", "lifo", "fifo, reservoir"),
])
def test_unknown_choice_lists_the_choices(key: str, value: str, choices: str) -> None:
    message = refusal({key: value})
    assert f"config key '{key}' is '{value}'; choose from: {choices}" == message


# ---------------------------------------------------------------- keys checked together


@pytest.mark.parametrize("mode", ["meta", "joint"])
def test_mode_that_replays_refuses_replay_none(mode: str) -> None:
    message = refusal({"mode": mode, "replay": "none"})
    assert f"mode '{mode}' needs a replay scheme" in message
    assert "--replay memory" in message


def test_acquire_without_replay_is_fine() -> None:
    assert from_mapping({"mode": "acquire", "replay": "none"}).replay == "none"


# A bank measured in rows, sampled row by row (the defaults are MB-DFKD's slots).
ROWS = {"replay_sampling": "uniform", "memory_slots": 0}


def test_buffer_smaller_than_one_replayed_batch() -> None:
    # 0.125 x 512 = 64 replayed samples per step; a 63-sample bank cannot serve one batch.
    assert DistillConfig().replay_batch_size == 64
    message = refusal({**ROWS, "buffer_size": 63})
    assert "buffer_size 63 is smaller than one replayed batch (64" in message
    assert from_mapping({**ROWS, "buffer_size": 64}).buffer_size == 64


def test_insert_size_larger_than_buffer() -> None:
    message = refusal({**ROWS, "insert_size": 700, "buffer_size": 640})
    assert "insert_size 700 exceeds buffer_size 640" in message


def test_default_bank_is_mb_dfkds_ten_slots_of_one_replayed_batch() -> None:
    config = DistillConfig()
    assert (config.replay_sampling, config.memory_slots, config.insert_every_epochs) == (
        "slot", 10, 5)
    assert config.bank_capacity == 10 * 64
    assert "needs insertion 'fifo'" in refusal({"insertion": "reservoir"})
    assert "insert_size 32 must equal the replayed batch 64" in refusal({"insert_size": 32})


def test_replay_batch_is_at_least_one_sample() -> None:
    assert from_mapping({"replay_ratio": 1e-4, "batch_size": 8}).replay_batch_size == 1


@pytest.mark.parametrize("mode", ["acquire", "joint"])
def test_detach_inner_needs_the_meta_step(mode: str) -> None:
    replay = "none" if mode == "acquire" else "memory"
    message = refusal({"mode": mode, "replay": replay, "detach_inner": True})
    assert f"detach_inner changes only the meta step's theta'; mode '{mode}' has none" in message
    assert from_mapping({"mode": "meta", "detach_inner": True}).detach_inner is True


def test_first_order_and_detach_inner_are_refused_together() -> None:
    message = refusal({"mode": "meta", "first_order": True, "detach_inner": True})
    assert message == "first_order and detach_inner cannot be combined; choose one"


# ---------------------------------------------------------------- replace, round trip


def test_replace_validates_and_leaves_the_original() -> None:
    config = DistillConfig()
    assert config.replace(epochs=3).epochs == 3
    assert config.epochs == 400
    with pytest.raises(LrwaError, match="'epochs'"):
        config.replace(epochs=0)
    with pytest.raises(LrwaError, match="needs a replay scheme"):
        config.replace(replay="none")


def test_to_dict_round_trips_through_yaml() -> None:
    # A run folder's config.yaml is read back on resume; it must rebuild the same config.
    config = build_config("digits", {"teacher": "t.pt", "alpha": 0.25, "first_order": True})
    assert from_mapping(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


# ---------------------------------------------------------------- YAML files


def test_load_yaml_reads_a_mapping(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nmode: joint\n")
    assert load_yaml(path) == {"epochs": 7, "mode": "joint"}


def test_load_yaml_empty_file_is_an_empty_mapping(tmp_path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_yaml(path) == {}


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("bad.yaml", "epochs: [1, 2\nmode: meta\n", "is not valid YAML at line"),
    ("tabs.yaml", "epochs: 1\n\tmode: meta\n", "is not valid YAML"),
    ("binary.yaml", b"\x95\x00\xff\xfe garbage", "is not valid YAML"),
    ("list.yaml", "- epochs\n- 3\n", "must hold a mapping of keys to values"),
    ("scalar.yaml", "just a sentence\n", "must hold a mapping of keys to values"),
])
def test_load_yaml_refuses_what_is_not_a_mapping(tmp_path, name: str, content: str | bytes,
                                                 expected: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(LrwaError) as caught:
        load_yaml(path)
    message = str(caught.value)
    assert message.startswith(f"config file {path} ")
    assert expected in message
    assert "\n" not in message


def write(tmp_path, text: str, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def yaml_refusal(path, what: str = "config file") -> str:
    with pytest.raises(LrwaError) as caught:
        load_yaml_mapping(path, what)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{what} {path} ")
    return message


@pytest.mark.parametrize(("text", "expected"), [
    ("epochs: 3\nalpha: 0.5\nepochs: 30\n", ("at line 3: it repeats the key 'epochs' "
                                             "(first at line 1)")),
    ("study:\n  space:\n    alpha: 1\n    alpha: 2\n", "at line 4: it repeats the key 'alpha'"),
    ("a: {x: 1, y: 2, x: 3}\n", "at line 1: it repeats the key 'x' (first at line 1)"),
    ("1: a\n1.0: b\n", "repeats the key 1.0"),  # equal keys spelt two ways
])
def test_duplicate_keys_are_refused_at_any_depth(tmp_path, text: str, expected: str) -> None:
    assert expected in yaml_refusal(write(tmp_path, text))


def test_merge_keys_may_be_overridden_without_counting_as_duplicates(tmp_path) -> None:
    path = write(tmp_path, "base: &base {alpha: 0.1, epochs: 3}\nrun:\n  <<: *base\n"
                           "  alpha: 0.5\n")
    assert load_yaml_mapping(path, "study file")["run"] == {"alpha": 0.5, "epochs": 3}


def billion_laughs(levels: int = 9) -> str:
    """YAML whose `epochs` expands to 10^(levels + 1) items through nested aliases."""
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    lines.append("epochs: [" + ", ".join([f"*l{levels - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_aliases_that_multiply_are_refused(tmp_path) -> None:
    message = yaml_refusal(write(tmp_path, billion_laughs()))
    assert f"expands to more than {MAX_NODES} values" in message


def test_an_alias_inside_the_collection_it_names_is_refused(tmp_path) -> None:
    message = yaml_refusal(write(tmp_path, "epochs: &loop [1, *loop]\n"))
    assert "has the alias *loop inside the collection it names" in message


def test_modest_aliases_are_read(tmp_path) -> None:
    path = write(tmp_path, "shared: &s [0.1, 0.3]\nalpha: *s\nbeta: *s\n")
    assert load_yaml_mapping(path, "study file") == {"shared": [0.1, 0.3], "alpha": [0.1, 0.3],
                                                     "beta": [0.1, 0.3]}


@pytest.mark.parametrize(("text", "expected"), [
    ("epochs: 3\n---\nepochs: 4\n", "is not valid YAML at line 2 (but found another document)"),
    ("a: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "is nested too deeply to be a config"),
    ("? [1, 2]\n: 3\n", "found unhashable key"),
    ("epochs: " + "9" * 5000 + "\n", "is not valid YAML (Exceeds the limit (4300 digits)"),
])
def test_documents_lrwa_will_not_read(tmp_path, text: str, expected: str) -> None:
    assert expected in yaml_refusal(write(tmp_path, text))


def test_a_file_far_larger_than_a_config_is_refused_unread(tmp_path) -> None:
    path = write(tmp_path, "comment: " + "x" * MAX_BYTES + "\n")
    assert f"lrwa reads YAML files of at most {MAX_BYTES} bytes" in yaml_refusal(path)


def test_shown_bounds_every_value() -> None:
    huge = [0] * 10
    for _ in range(9):
        huge = [huge] * 10  # 10^10 items when walked, a few hundred objects in memory
    for value in (huge, "x" * 10_000, {f"key{i}": i for i in range(1000)}, 10**500,
                  {"deep": [[[[[["bottom"]]]]]]}):
        text = shown(value)
        assert len(text) <= SHOWN_CHARACTERS
    assert shown("alpha") == "'alpha'" and shown(0.5) == "0.5"  # short values as repr gives them
    assert shown(10**5000) == "<int of 16610 bits>"  # repr itself refuses ints this long


def test_a_huge_aliased_value_under_a_known_key_is_reported_shortly() -> None:
    # What a loader without an alias bound would hand over: 10^9 items behind one key.
    huge = [1] * 10
    for _ in range(8):
        huge = [huge] * 10
    for key in ("epochs", "mode", "alpha", "download", "teacher"):
        message = refusal({key: huge})
        assert message.startswith(f"config key '{key}' must be")
        assert len(message) < 200


def test_a_bad_value_in_a_file_is_reported_even_when_an_override_replaces_it() -> None:
    with pytest.raises(LrwaError, match="config key 'alpha' must be a float, got 'fast'"):
        build_config("digits", file_values={"alpha": "fast"}, overrides={"alpha": 0.5})
    with pytest.raises(LrwaError, match=r"config key 'epochs' is 0; allowed range"):
        build_config("digits", file_values={"epochs": 0}, overrides={"epochs": 3})


def test_load_yaml_missing_file(tmp_path) -> None:
    with pytest.raises(LrwaError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")


def test_load_yaml_directory(tmp_path) -> None:
    with pytest.raises(LrwaError, match="is not a file"):
        load_yaml(tmp_path)


# ---------------------------------------------------------------- layering


def test_layers_apply_in_order_defaults_preset_file_overrides() -> None:
    defaults = DistillConfig()
    config = build_config(
        "digits",
        file_values={"epochs": 7, "latent_dim": 50, "alpha": 0.5},
        overrides={"epochs": 3, "alpha": None},  # None: a CLI flag the user did not type
    )
    assert config.epochs == 3                                  # override beats file and preset
    assert config.latent_dim == 50                             # file beats preset
    assert config.alpha == 0.5                                 # an unset override keeps the file
    assert config.student == SMALL_PRESET["student"]           # preset beats defaults
    assert config.momentum == defaults.momentum                # untouched default
    assert build_config("digits").epochs == SMALL_PRESET["epochs"]
    assert build_config(None) == defaults


def test_layers_are_validated_together_not_one_by_one() -> None:
    # 2.0 x 512 = 1024 replayed samples do not fit the default 640-sample bank,
    # but 2.0 x 256 = 512 fit the small preset's 2048: only the layered whole is checked.
    with pytest.raises(LrwaError, match="smaller than one replayed batch"):
        build_config(None, {**ROWS, "replay_ratio": 2.0})
    assert build_config("digits", {"replay_ratio": 2.0}).replay_batch_size == 512


def test_unknown_key_in_any_layer_is_refused() -> None:
    with pytest.raises(LrwaError, match="unknown config key 'epoch'"):
        build_config("digits", file_values={"epoch": 3})
    with pytest.raises(LrwaError, match="unknown config key 'lr'"):
        build_config("digits", overrides={"lr": 0.1})


def test_a_preset_lies_between_the_data_sets_preset_and_the_keys_given_with_it() -> None:
    from lrwa.presets import SYSTEM_PRESETS, preset_values

    # On CIFAR scale the whole of LRA's PRE-DFKD.json: batch 1024, 36 iterations.
    paper = build_config("cifar100", {"preset": "pre-dfkd"})
    assert (paper.batch_size, paper.iters_per_epoch, paper.student) == (1024, 36, "resnet18")
    assert (paper.mode, paper.replay, paper.replay_loss) == ("joint", "generative",
                                                             "concatenated")
    assert paper.vae_lr == pytest.approx(0.02 / 40)
    # On mnist5k its method only: the small preset's sizes stay, the flags win over both.
    small = build_config("mnist5k", {"preset": "mb-dfkd"}, {"student_lr": 0.3})
    assert (small.batch_size, small.student) == (SMALL_PRESET["batch_size"], "lenet5-half")
    assert (small.replay_sampling, small.memory_slots, small.insert_every_epochs) == (
        "slot", 10, 5)
    assert small.student_lr == 0.3 and small.replay_ratio == 0.125
    assert small.bank_capacity == 10 * round(0.125 * SMALL_PRESET["batch_size"])
    # Every preset resolves at both scales, and its method keys all land.
    for name in SYSTEM_PRESETS:
        for dataset, sizes in (("cifar10", True), ("digits", False)):
            config = build_config(dataset, {"preset": name})
            for key, value in preset_values(name, with_sizes=sizes).items():
                assert getattr(config, key) == value, (name, dataset, key)
    assert "choose from: dfad, mb-dfkd" in refusal({"preset": "mb-dfkdd"})

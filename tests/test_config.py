"""Config: presets, groups, YAML round trip, override parsing and one-line errors."""

from __future__ import annotations

import pytest
import yaml

from study.config import (
    GROUPS,
    PRESETS,
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_yaml,
    make_config,
    parse_set,
    save_yaml,
)
from study.errors import UserError


def test_defaults_are_the_papers_table_2():
    c = Config()
    assert (c.model.arch, c.model.n_bins, c.model.z_max, c.model.hidden) == (
        "resnet50_hayat",
        180,
        0.4,
        1024,
    )
    assert (c.optim.lr, c.optim.batch_size, c.optim.epochs) == (1e-3, 128, 50)
    assert (c.optim.plateau_factor, c.optim.plateau_patience) == (0.1, 2)
    assert c.loss.g_l2 == 1e-6
    assert (c.loss.g_flux, c.loss.g_inv, c.loss.g_cde, c.loss.augment) == (0, 0, 0, False)
    assert c.data.universe_n == 607_712


def test_presets():
    archs = {p: make_config(p).model.arch for p in PRESETS}
    assert archs == {
        "paper": "resnet50_hayat",
        "fast": "resnet50",
        "resnet18": "resnet18",
        "demo": "small_cnn",
        "tiny": "tiny_cnn",
    }
    paper = make_config("paper")
    assert (paper.optim.batch_size, paper.optim.epochs, paper.optim.lr) == (128, 50, 1e-3)
    assert paper.data.universe_n == 607_712
    assert make_config("demo").data.universe_n < 20_000
    tiny = make_config("tiny")
    assert tiny.data.universe_n <= 1024 and tiny.optim.epochs == 2


def test_groups():
    w = {
        g: (c.loss.augment, c.loss.g_flux, c.loss.g_inv, c.loss.g_cde)
        for g in GROUPS
        for c in [make_config("tiny", g)]
    }
    assert w == {
        "baseline": (False, 0, 0, 0),
        "baseline_aug": (True, 0, 0, 0),
        "constrained": (True, 0.1, 0.1, 0.1),
        "flux_only": (True, 0.1, 0, 0),
        "inv_only": (True, 0, 0.1, 0),
        "cde_only": (True, 0, 0, 0.1),
    }
    # the CDE term's scale (issue 13): the paper's for constrained and cde_only, so that their
    # g_cde = 0.1 is the paper's effective weight; density (the field's default) elsewhere
    scales = {g: make_config(p, g).loss.cde_scale for g in GROUPS for p in ("paper", "demo")}
    assert scales == {g: "paper" if g in ("constrained", "cde_only") else "density" for g in GROUPS}
    assert make_config("tiny", "custom").loss.cde_scale == "density"
    # the density-scale experiment stays one override away
    dens = make_config("demo", "constrained", overrides={"loss.cde_scale": "density"})
    assert dens.loss.cde_scale == "density" and dens.loss.g_cde == 0.1
    with pytest.raises(UserError, match=r"loss\.cde_scale='per_bin' is not one of density, paper"):
        make_config("tiny", "constrained", overrides={"loss.cde_scale": "per_bin"})
    # a resolved config.yaml from before the field (every loss field of its time, no
    # cde_scale) trained on density and reads so; a partial file gets the group's scale
    old = config_to_dict(make_config("demo", "constrained"))
    del old["loss"]["cde_scale"]
    assert config_from_dict(old).loss.cde_scale == "density"
    partial = {"group": "constrained", "loss": {"g_cde": 0.3, "g_flux": 0.2}}
    assert config_from_dict(partial).loss.cde_scale == "paper"
    # the group never changes the preset's other fields
    base, con = make_config("demo", "baseline"), make_config("demo", "constrained")
    assert (base.model, base.optim, base.data) == (con.model, con.optim, con.data)


def test_seed_and_overrides():
    c = make_config("tiny", "baseline", seed=7, overrides={"optim.lr": 3e-4, "loss.g_cde": 1})
    assert c.run.seed == 7 and c.optim.lr == 3e-4
    assert c.loss.g_cde == 1.0 and isinstance(c.loss.g_cde, float)


def test_cli_strings_are_parsed_by_field_type():
    sets = parse_set(
        [
            "optim.lr=3e-4",
            "optim.epochs=3",
            "loss.augment=true",
            "data.path=none",
            "model.arch=tiny_cnn",
            "run.compile=False",
            "data.universe_n=4_000",
        ]
    )
    c = apply_overrides(make_config("demo"), sets)
    assert c.optim.lr == 3e-4 and c.optim.epochs == 3 and c.loss.augment is True
    assert c.data.path is None and c.model.arch == "tiny_cnn" and c.run.compile is False
    assert c.data.universe_n == 4000
    c = apply_overrides(c, parse_set(["data.path=/x/y.h5"]))
    assert c.data.path == "/x/y.h5"


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("optim.lrr", 1.0, "optim.lrr"),
        ("optimizer.lr", 1.0, "optimizer.lr"),
        ("lr", 1.0, "'lr'"),
        ("optim.lr", "fast", "optim.lr"),
        ("optim.epochs", 2.5, "optim.epochs"),
        ("optim.epochs", "2.5", "optim.epochs"),
        ("optim.epochs", True, "optim.epochs"),
        ("loss.augment", "maybe", "loss.augment"),
        ("model.arch", "vgg", "model.arch"),
        ("data.path", 3, "data.path"),
        ("optim.lr", -1.0, "optim.lr"),
        ("loss.g_flux", -0.1, "loss.g_flux"),
        ("optim.batch_size", 1, "optim.batch_size"),
        ("preset", "demo", "preset"),
    ],
)
def test_bad_override_is_one_line_user_error(key, value, needle):
    with pytest.raises(UserError) as e:
        apply_overrides(make_config("tiny"), {key: value})
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_unknown_preset_or_group():
    with pytest.raises(UserError, match="preset"):
        make_config("huge")
    with pytest.raises(UserError, match="group"):
        make_config("tiny", "everything")


def test_bad_set_syntax():
    with pytest.raises(UserError, match="section.field=value"):
        parse_set(["optim.lr"])


def test_yaml_round_trip(tmp_path):
    c = make_config("demo", "constrained", seed=5, overrides={"optim.lr": 2.5e-4})
    save_yaml(c, tmp_path / "config.yaml")
    d = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert d["loss"]["g_flux"] == 0.1 and d["run"]["seed"] == 5 and d["preset"] == "demo"
    assert load_yaml(tmp_path / "config.yaml") == c
    assert config_from_dict(config_to_dict(c)) == c


def test_partial_yaml_overrides_only_what_it_names(tmp_path):
    (tmp_path / "p.yaml").write_text("preset: demo\ngroup: inv_only\noptim:\n  lr: 3e-4\n")
    c = load_yaml(tmp_path / "p.yaml")
    want = make_config("demo", "inv_only", overrides={"optim.lr": 3e-4})
    assert c == want
    # the CLI's --preset/--group replace the file's
    c = load_yaml(tmp_path / "p.yaml", preset="tiny", group="baseline")
    assert c == make_config("tiny", "baseline", overrides={"optim.lr": 3e-4})


def test_custom_group_keeps_given_weights():
    c = make_config("tiny", "custom", overrides={"loss.g_flux": 0.3, "loss.augment": True})
    assert c.group == "custom" and c.loss.g_flux == 0.3 and c.loss.g_inv == 0
    assert config_from_dict(config_to_dict(c)) == c


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("optim:\n  lrr: 1\n", "optim.lrr"),
        ("optimiser:\n  lr: 1\n", "optimiser"),
        ("optim: 3\n", "optim"),
        ("group: 3\n", "group"),
        ("optim: [1\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_file_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_yaml(path)
    assert needle in str(e.value) and "bad.yaml" in str(e.value) and "\n" not in str(e.value)


def test_small_cnn_fields_tuples_and_refusals():
    c = make_config("tiny", overrides={"model.arch": "small_cnn", "model.apertures": "2, 4,8"})
    assert c.model.apertures == (2.0, 4.0, 8.0)
    assert make_config("demo").model.apertures == (2.0, 4.0, 8.0)
    with pytest.raises(UserError, match="model.crop"):
        make_config("demo", overrides={"model.crop": 25})  # odd: not centred
    with pytest.raises(UserError, match="optim.schedule"):
        make_config("demo", overrides={"optim.schedule": "cosine"})
    # the paper preset keeps the paper's recipe
    p = make_config("paper")
    assert (p.optim.schedule, p.optim.reported, p.loss.target_sigma) == ("plateau", "last", 0.0)
    assert (p.model.crop, p.model.aperture_hidden, p.model.deredden) == (64, 0, False)


def test_demo_config_round_trips_through_yaml(tmp_path):
    c = make_config("demo", "constrained", seed=1)
    save_yaml(c, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml") == c

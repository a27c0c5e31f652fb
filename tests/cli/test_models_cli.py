"""``vitlens models``: lists what capture supports, checked by building each on the meta device."""
from __future__ import annotations

from vitlens.capture import supported_families, supported_models

from .helpers import assert_one_line_error, run


def test_lists_families_by_name():
    res = run("models", "deit_tiny*")
    assert res.exit_code == 0, res.stderr
    *lines, count = res.stdout.splitlines()
    rows = dict(line.split() for line in lines)
    assert rows["deit_tiny_distilled_patch16_224"] == "VisionTransformer"
    assert rows["deit_tiny_patch16_224"] == "VisionTransformer"
    assert count == "2 architectures match 'deit_tiny*': 2 supported, 0 refused"
    assert dict(supported_models("swin_tiny*", family="Swin")) == {"swin_tiny_patch4_window7_224": "Swin"}
    assert dict(supported_models("beitv2_base*"))["beitv2_base_patch16_224"] == "BEiT"


def test_unsupported_and_unknown():
    res = run("models", "resnet1*", "--supported")
    assert res.exit_code == 1 and "no supported model" in res.stderr
    res = run("models", "resnet18")
    assert res.exit_code == 0 and "resnet18  refused: unsupported architecture ResNet: no registered adapter" in res.stdout
    assert res.stdout.splitlines()[-1].endswith(": 0 supported, 1 refused")
    assert run("models", "nothing_is_called_this*").exit_code == 1
    res = run("models", "--family", "ConvNeXt")
    assert res.exit_code == 2 and all(f in res.stderr for f in supported_families()[:2])
    # XCiT: only the class-attention layers are token attention (the XCA channel attention is skipped)
    assert {f for _, f in supported_models("xcit_nano*")} == {"XCiT (class attention)"}
    assert_one_line_error(run("attend", "x.jpg", "--model", "resnet18", "--no-pretrained"),
                          "unsupported architecture", "VisionTransformer", "Swin")


def test_verdicts_are_cached_per_version(monkeypatch, tmp_path):
    """The second call builds nothing and answers the same; another timm version, a
    corrupt cache file or --refresh build again; an unwritable cache still answers."""
    import timm

    monkeypatch.setenv("VITLENS_CACHE_DIR", str(tmp_path / "cache"))
    built: list[str] = []
    real_create = timm.create_model

    def counting_create(name, *a, **kw):
        built.append(name)
        return real_create(name, *a, **kw)

    monkeypatch.setattr(timm, "create_model", counting_create)
    first = supported_models("deit_tiny*")
    assert dict(first) == {"deit_tiny_distilled_patch16_224": "VisionTransformer",
                           "deit_tiny_patch16_224": "VisionTransformer"}
    n_first = len(built)
    assert n_first >= 2 and (tmp_path / "cache" / "model-verdicts.json").is_file()
    assert supported_models("deit_tiny*") == first and len(built) == n_first      # from the cache
    assert supported_models("deit_tiny*", family="Swin") == []                    # filtered, no build
    assert len(built) == n_first
    assert supported_models("deit_tiny*", refresh=True) == first and len(built) == 2 * n_first

    monkeypatch.setattr(timm, "__version__", "0.0.0-other")                       # another timm: stale
    assert supported_models("deit_tiny*") == first and len(built) == 3 * n_first
    (tmp_path / "cache" / "model-verdicts.json").write_text("{not json")       # corrupt: rebuilt
    assert supported_models("deit_tiny*") == first and len(built) == 4 * n_first

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("VITLENS_CACHE_DIR", str(blocker / "cache"))               # cannot be created
    assert supported_models("deit_tiny*") == first


def test_cli_announces_the_first_full_check(monkeypatch, tmp_path):
    monkeypatch.setenv("VITLENS_CACHE_DIR", str(tmp_path))
    res = run("models", "vit_tiny*")
    assert res.exit_code == 0, res.stderr
    assert "checking" in res.stderr and str(tmp_path) in res.stderr
    again = run("models", "vit_tiny*")
    assert again.stdout == res.stdout and "checking" not in again.stderr
    assert run("models", "vit_tiny*", "--refresh").stdout == res.stdout


def test_every_verdict_names_a_family_or_a_reason(monkeypatch, tmp_path):
    from vitlens.capture.adapters import model_verdicts

    monkeypatch.setenv("VITLENS_CACHE_DIR", str(tmp_path))
    rows = model_verdicts("vit_dlittle*") + model_verdicts("deit_tiny_patch16_224") + model_verdicts("xcit_nano_12_p16*")
    for name, module, fam, why in rows:
        assert module and (fam is not None) != bool(why), (name, module, fam, why)
    verdict = {n: (f, w) for n, _m, f, w in rows}
    assert verdict["deit_tiny_patch16_224"] == ("VisionTransformer", "")
    assert any("differential attention" in w for n, (f, w) in verdict.items() if n.startswith("vit_dlittle"))
    res = run("models", "deit_tiny*", "--supported", "--module", "deit")
    assert res.exit_code == 0 and "deit_tiny_patch16_224" in res.stdout

"""Builders and families agree on one cache path: a suite built with ``python -m harness.build``
is the one a run of the family finds and reuses (never silently rebuilt)."""

from __future__ import annotations

import pytest
import torch

from harness.build import main as build_main

torch.set_num_threads(1)

PYTHIA = {"sizes": ["xs"], "steps": 4, "checkpoint_every": 2, "seq_len": 16, "batch_size": 2,
          "vocab_size": 300, "probe_batch_size": 2, "data": {"name": "pydoc", "max_docs": 10}}
PICO = {"widths": [8], "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "vocab_size": 300, "seq_len": 16,
        "batch_size": 2, "steps": 3, "save_every": 3, "warmup": 1, "ld_batch_size": 2, "n_val": 2, "lr": 1e-2}


def _dotlist(params):
    out = []
    for k, v in params.items():
        if isinstance(v, dict):
            out += [f"{k}.{kk}={vv}" for kk, vv in v.items()]
        elif isinstance(v, list):
            out.append(f"{k}=[{','.join(map(str, v))}]")
        else:
            out.append(f"{k}={v}")
    return out


def _no_rebuild(monkeypatch, module):
    def refuse(*a, **k):
        raise AssertionError("the family rebuilt a suite the builder had already built")

    monkeypatch.setattr(module, "_build_into", refuse)


def test_pythia_mini_built_by_the_cli_is_reused_by_the_family(tmp_path, monkeypatch, capsys):
    from harness_plugins.models.pythia import build as B
    from harness_plugins.models.pythia.family import PythiaFamily

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert build_main(["suite=pythia_mini", *_dotlist(PYTHIA)]) == 0
    built = [p for p in tmp_path.iterdir() if p.name.startswith("pythia_mini-")]
    assert len(built) == 1 and (built[0] / "suite.json").is_file()
    _no_rebuild(monkeypatch, B)
    # the runner hands a family the workdir <cache>/families/<name>
    fam = PythiaFamily(source="mini", mini=PYTHIA, workdir=str(tmp_path / "families" / "pythia"))
    assert fam.cache_root == tmp_path
    fam._get_source()
    assert fam.root == built[0]
    assert {r.size for r in fam.checkpoints()} == {"xs"}
    # sizes and steps are validated against what the suite holds, listing it
    from harness.api import ParameterError

    with pytest.raises(ParameterError, match=r"sizes present .*: xs"):
        PythiaFamily(source="mini", mini=PYTHIA, size=["xs", "m"], workdir=str(tmp_path / "families" / "pythia")
                     ).checkpoints()
    with pytest.raises(ParameterError, match=r"steps present .*: 0, 1, 2, 4"):
        PythiaFamily(source="mini", mini=PYTHIA, revisions=[2, 3000], workdir=str(tmp_path / "families" / "pythia")
                     ).checkpoints()


def test_pico_mini_built_by_the_cli_is_reused_by_the_family(tmp_path, monkeypatch):
    from harness_plugins.models.pico import build as B
    from harness_plugins.models.pico.family import PicoFamily

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert build_main(["suite=pico_mini", *_dotlist(PICO)]) == 0
    built = list((tmp_path / "pico_mini").iterdir())
    assert len(built) == 1 and (built[0] / "suite.json").is_file()
    _no_rebuild(monkeypatch, B)
    fam = PicoFamily(source="local", size=None, build=PICO, workdir=str(tmp_path / "families" / "pico"))
    fam.prepare()
    assert [r.size for r in fam.runs.values()] == ["d8"]


def test_pico_sizes_not_in_the_suite_fail_before_building_and_list_what_exists(tmp_path, monkeypatch):
    from harness.api import ParameterError
    from harness_plugins.models.pico import build as B
    from harness_plugins.models.pico.family import PicoFamily

    _no_rebuild(monkeypatch, B)
    fam = PicoFamily(source="local", size=["tiny", "small"], build={"widths": [16, 32]},
                     workdir=str(tmp_path / "families" / "pico"))
    with pytest.raises(ParameterError, match="d16, d32"):
        fam.prepare()


def test_cache_root_without_the_runner_layout_is_the_workdir(tmp_path):
    from harness.api import ModelFamily

    assert ModelFamily(workdir=str(tmp_path / "x")).cache_root == tmp_path / "x"
    assert ModelFamily().cache_root is None


@pytest.mark.parametrize("bad", ["nosuchsuite"])
def test_unknown_suite_names_the_builders(bad, capsys):
    assert build_main([f"suite={bad}"]) == 2
    err = capsys.readouterr().err
    assert "pythia_mini" in err and "pico_mini" in err

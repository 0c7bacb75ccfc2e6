"""The conformance suites of `harness.testing`, run over every registered first-party plugin.

Exactly what an outside author does (see tests/fixtures/outside_plugin/tests): subclass the
suite, name the plugin, give a small instance. A plugin registered without a suite here fails
`test_every_registered_plugin_has_a_suite`.
"""

from __future__ import annotations

import pytest

from harness.registry import metrics, models
from harness.testing import MetricContract, ModelFamilyContract

# ---- metrics: each runs on a few-step toy_softmax through the real runner ----------------------


class TestLoss(MetricContract):
    name = "loss"


class TestLmEval(MetricContract):
    name = "lm_eval"  # toy_softmax has no tokenizer: every unit is a skipped record, deterministically


class TestInterference(MetricContract):
    name = "interference"
    params = {"bins": 10}


class TestSubspace(MetricContract):
    name = "subspace"
    params = {"ks": [1, 2], "n_minibatches": 2, "eig_tol": 1e-2}


class TestTransport(MetricContract):
    name = "transport"
    params = {"n_reps": 1, "n_boot": 10}


class TestDeceleration(MetricContract):
    name = "deceleration"


class TestTimeScaling(MetricContract):
    name = "time_scaling"


# ---- families: small instances built in-process -----------------------------------------------------


class TestToySoftmax(ModelFamilyContract):
    name = "toy_softmax"
    params = {"temperature": [1e-2], "steps": 20, "n_checkpoints": 3, "batch_size": 32, "eval_batches": 1}


class TestLossLog(ModelFamilyContract):
    name = "loss_log"

    @pytest.fixture
    def family_params(self, tmp_path_factory):
        path = tmp_path_factory.mktemp("loss_log") / "run.csv"
        path.write_text("step,loss\n" + "".join(f"{s},{3.0 / (1 + s) ** 0.3:.6f}\n" for s in range(1, 60)))
        return {"path": str(path)}


PICO_MINI = dict(widths=[8, 16], n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=300, seq_len=16, batch_size=4,
                 steps=6, save_every=3, warmup=2, ld_batch_size=2, n_val=4, lr=1e-2)
PYTHIA_MINI = {"sizes": ["xs"], "steps": 8, "checkpoint_every": 4, "seq_len": 32, "batch_size": 4,
               "vocab_size": 300, "probe_batch_size": 4, "data": {"name": "pydoc", "max_docs": 20}}
SMALL_DATA = {"name": "pydoc", "max_docs": 20, "seq_len": 16, "batch_size": 2, "n_batches": 1}


@pytest.fixture(scope="module")
def pico_root(tmp_path_factory):
    from harness_plugins.models.pico.build import build

    return str(build(cache_dir=str(tmp_path_factory.mktemp("pico")), **PICO_MINI))


@pytest.fixture(scope="module")
def pythia_root(tmp_path_factory):
    from harness_plugins.models.pythia.build import build

    return str(build(cache_dir=str(tmp_path_factory.mktemp("pythia")), **PYTHIA_MINI))


class TestPico(ModelFamilyContract):
    name = "pico"
    data = SMALL_DATA

    @pytest.fixture
    def family_params(self, pico_root):
        return {"source": "local", "root": pico_root, "size": None}


class TestPythia(ModelFamilyContract):
    name = "pythia"
    data = SMALL_DATA

    @pytest.fixture
    def family_params(self, pythia_root):
        return {"source": "local", "root": pythia_root}


@pytest.fixture(scope="module")
def captured_root(tmp_path_factory):
    from test_capture import train  # the capture tests' few-step Trainer run

    root = tmp_path_factory.mktemp("capture") / "run"
    train(root)
    return str(root)


class TestLocalRun(ModelFamilyContract):
    name = "local_run"

    @pytest.fixture
    def family_params(self, captured_root):
        return {"root": captured_root}


def test_every_registered_plugin_has_a_suite():
    suites = {c.name: c for c in globals().values() if isinstance(c, type) and issubclass(c, (MetricContract,
                                                                                           ModelFamilyContract))
              and c.name}
    first_party_models = [n for n in models().names() if models().target(n).startswith("harness_plugins")]
    first_party_metrics = [n for n in metrics().names() if metrics().target(n).startswith("harness_plugins")]
    assert set(first_party_models) | set(first_party_metrics) <= set(suites)

"""`TransportMetric`: finite-size gradient-transport observables (D, z, beta, delta, v_rel)
with null controls, closure and one-slope compressibility (issue 6; Wang & Du 2026 as
reconstructed in docs/transport.md, which says what is
reconstructed and which parameter carries each unconfirmed choice).

Checkpoint scope: the configured field is streamed into the TDU-OFC probe for the real field
and the nulls (``task`` = ``real`` | ``R1`` | ``R2``); per-event statistics go to an ``.npz``
artifact (path in ``extra["artifact"]``) and the summaries (and the first events) to records.

Suite scope: at every step shared by >= 3 sizes, OLS fits of log(observable) on log N give
D, z, beta, delta and intercepts with bootstrap CIs over events, leave-one-size-out spread,
closure residuals, compressibility, per-size v_rel / T_norm and real-minus-null departures.

    python -m harness model=pico metric=transport metric.transport.q=0.95
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harness.api import CheckpointContext, Measurement, Metric, ParameterError, Scope, SuiteContext
from harness.params import Params, param

from .field import CHANNELS, Field, collect_field
from .fits import EXPONENTS, SizeEvents, fit_step
from .graph import LatticeGraph, cached_ba_graph
from .probe import driven_events, relax, relax_torch

logger = logging.getLogger(__name__)

ARTIFACT = "events.npz"


def _kinds(value: Any) -> list[str]:
    kinds = [value] if isinstance(value, str) else list(value)
    if not kinds or not all(isinstance(f, str) and f for f in kinds):
        raise ValueError("field")
    return kinds


def _channels(value: Any) -> list[str]:
    chans = [value] if isinstance(value, str) else list(value)
    if not chans or any(ch not in CHANNELS for ch in chans) or len(set(chans)) != len(chans):
        raise ValueError("channels")
    return chans


class TransportMetric(Metric):
    """TDU-OFC avalanche probe on a checkpoint's update field, fitted across sizes."""

    name = "transport"
    version = "1"

    class Params(Params):
        field: list[str] = param(["gradient", "delta"], "field kinds to probe, first one the checkpoint offers wins",
                                 convert=_kinds, allowed="a field kind or a non-empty list of kinds")
        modules: list[str] | None = param(None, "glob patterns on tensor names; null = the family's default set")
        graph: str = param("ba", "[R] ba (Barabasi-Albert) | lattice (4-neighbour grid on each weight matrix)",
                           choices=("ba", "lattice"))
        m: int = param(3, "[R] BA edges per new node", ge=1)
        assignment: str = param("random", "[R] entry -> node map on the BA graph: random (seeded) | index",
                                choices=("random", "index"))
        threshold: str = param("quantile", "[R] quantile: theta = Quantile_q(x) | scale: theta = c (x is in units "
                               "of the tensor scale)", choices=("quantile", "scale"))
        q: float = param(0.99, "[R] quantile for threshold=quantile", gt=0, lt=1)
        c: float = param(3.0, "[R] multiple of the scale for threshold=scale", gt=0)
        alpha: float = param(0.8, "[R] fraction of a toppling node's load passed on (1 - alpha dissipates)",
                             gt=0, lt=1)
        normalisation: str = param("rms", "[R] per-tensor scale: rms | robust (median|u| / 0.6745)",
                                   choices=("rms", "robust"))
        relaxation: str = param("global", "[R] global: one relaxation of the injected field | driven: OFC events "
                                "after it", choices=("global", "driven"))
        n_events: int = param(100, "driven only: events recorded per replicate", ge=1)
        drive: str = param("random_node", "driven only: random_node (top one node up to theta) | uniform "
                           "(classic OFC)", choices=("random_node", "uniform"))
        n_reps: int = param(4, "replicates (node assignment, null realisation) per channel", ge=1)
        n_graphs: int = param(1, "distinct BA graphs cycled over replicates (each cached on disk per N, m, seed)",
                              ge=1)
        graph_seed: int = param(0, "seed of the first BA graph")
        channels: list[str] = param(list(CHANNELS), "real field, R1 permuted within each tensor, R2 iid Gaussian "
                                    "at the tensor's RMS", convert=_channels,
                                    allowed="distinct values among " + ", ".join(CHANNELS))
        subsample_fraction: float = param(1.0, "stratified: keep this fraction of every tensor (use the same value "
                                          "for all sizes)", gt=0, le=1)
        max_sweeps: int = param(100_000, "cap on sweeps; truncated cascades are excluded from fits", ge=1)
        statistic: str = param("mean", "[R] per-size statistic of S and T: mean | max", choices=("mean", "max"))
        transport: str = param("topplings", "[R] V = S/T (topplings) | M/T (load)", choices=("topplings", "load"))
        system_size: str = param("field", "[R] N on the x axis: field (entries = nodes) | params (parameter "
                                 "count)", choices=("field", "params"))
        min_sizes: int = param(3, "fewer included sizes at a step -> skipped records", ge=3)
        n_boot: int = param(200, "bootstrap resamples of events per size", ge=0)
        event_records: int = param(64, "raw per-event S/area/T/M records per channel (all events are in the "
                                   "artifact)", ge=0)
        device: str = param("cpu", "cpu | cuda | auto (torch path for global relaxation on a BA graph)",
                            choices=("cpu", "cuda", "auto"))
        graph_cache_dir: str | None = param(None, "shared graph cache; null = the run's artifact directory")

        def check(self) -> None:
            """A subsample has no matrix geometry for the lattice graph."""
            if self.graph == "lattice" and self.subsample_fraction < 1:
                raise ParameterError("subsample_fraction", self.subsample_fraction,
                                     "1 with graph=lattice (a subsample has no matrix geometry)")

    # ---- checkpoint scope -----------------------------------------------------------
    def _pick_field(self, ckpt: Any) -> tuple[str | None, str]:
        offered = tuple(ckpt.field_kinds())
        for kind in self.field:
            if kind in offered:
                return kind, ""
        return None, f"checkpoint offers fields {list(offered)}, none of the configured {self.field}"

    def _graph(self, n: int, rep: int, fld: Field, cache: Path) -> Any:
        if self.graph == "lattice":
            return LatticeGraph(fld.shapes)
        return cached_ba_graph(n, self.m, self.graph_seed + rep % self.n_graphs, cache)

    def _theta(self, x: np.ndarray) -> float:
        theta = float(np.quantile(x, self.q)) if self.threshold == "quantile" else self.c
        if not theta > 0:
            raise ValueError(
                f"threshold is {theta:g}: more than a fraction q={self.q} of the normalised field is zero; "
                "raise q or use threshold=scale")
        return theta

    def _use_torch(self) -> bool:
        if self.device == "cpu" or self.graph != "ba" or self.relaxation != "global":
            return False
        import torch

        if torch.cuda.is_available():
            return True
        if self.device == "cuda":
            raise RuntimeError("device=cuda but no CUDA device is available")
        return False

    def run_probe(self, fld: Field, seed: int, cache: Path | None) -> dict[str, np.ndarray]:
        """Per-event statistics for every channel and replicate (arrays of equal length)."""
        n = fld.n
        if self.graph == "ba" and n <= self.m:
            raise ValueError(f"field has {n} entries: a Barabasi-Albert graph needs more than m={self.m}")
        rows: dict[str, list] = {k: [] for k in ("channel", "rep", "event", "S", "area", "T", "M", "theta",
                                                 "truncated")}
        use_torch = self._use_torch()
        dev_graph: dict[int, tuple] = {}
        theta_real: float | None = None
        for rep in range(self.n_reps):
            g = self._graph(n, rep, fld, cache)
            # one assignment per replicate, shared by every channel: channels differ only in load
            perm = np.random.default_rng([seed, rep, 0xA5]).permutation(n) if self.assignment == "random" else None
            for ci, ch in enumerate(self.channels):
                x = fld.channel(ch, np.random.default_rng([seed, rep, ci, 0x7A]))
                if ch == "real":
                    theta_real = self._theta(x) if theta_real is None else theta_real
                    theta = theta_real
                else:
                    theta = self._theta(x)
                load = x[perm].astype(np.float64) if perm is not None else x.astype(np.float64)
                del x
                if self.relaxation == "driven":
                    evs = driven_events(load, theta, g, self.alpha, self.n_events, self.drive,
                                        np.random.default_rng([seed, rep, ci, 0xD1]), self.max_sweeps)
                elif use_torch:
                    import torch

                    key = self.graph_seed + rep % self.n_graphs
                    if key not in dev_graph:
                        dev_graph[key] = (torch.as_tensor(np.asarray(g.indptr), dtype=torch.int64, device="cuda"),
                                          torch.as_tensor(np.asarray(g.indices), dtype=torch.int64, device="cuda"))
                    evs = [relax_torch(torch.as_tensor(load, device="cuda"), theta, *dev_graph[key], self.alpha,
                                       self.max_sweeps)]
                else:
                    evs = [relax(load, theta, g, self.alpha, self.max_sweeps)]
                del load
                for k, ev in enumerate(evs):
                    for key_, val in (("channel", ch), ("rep", rep), ("event", k), ("S", ev.S), ("area", ev.area),
                                      ("T", ev.T), ("M", ev.M), ("theta", theta), ("truncated", ev.truncated)):
                        rows[key_].append(val)
            del perm
        out = {k: np.asarray(v) for k, v in rows.items()}
        out["N"] = np.full(out["S"].size, n, dtype=np.int64)
        return out

    def measure_checkpoint(self, ctx: CheckpointContext) -> Iterator[Measurement]:
        """Probe the first configured field the checkpoint offers (real field and nulls)."""
        ckpt = ctx.checkpoint
        ref = ckpt.ref
        kind, reason = self._pick_field(ckpt)
        if kind is None:
            yield Measurement.skipped("N", reason, task="real")
            return
        rng = np.random.default_rng([ctx.seed, 0x5B]) if self.subsample_fraction < 1 else None
        fld = collect_field(ckpt.field(kind, self.modules), self.normalisation, self.subsample_fraction, rng)
        cache = Path(self.graph_cache_dir) if self.graph_cache_dir else ctx.artifact_dir("graphs")
        ev = self.run_probe(fld, ctx.seed, cache)
        art = ctx.artifact_dir("events", ref.model_id, ref.label) / ARTIFACT
        np.savez_compressed(art, **ev, field_kind=np.asarray(kind), n_full=np.asarray(fld.n_full))
        common = {"artifact": str(art), "field_kind": kind, "n_full": fld.n_full, "fraction": self.subsample_fraction,
                  "n_tensors": len(fld.names), "n_params": ref.n_params}
        yield from self._summaries(ev, fld, common)

    def _summaries(self, ev: dict[str, np.ndarray], fld: Field, common: dict) -> Iterator[Measurement]:
        n = fld.n
        t_mean: dict[str, float] = {}
        for ch in self.channels:
            sel = ev["channel"] == ch
            S, T, M, A = (ev[k][sel].astype(float) for k in ("S", "T", "M", "area"))
            k = S.size
            extra = dict(common, theta=float(np.mean(ev["theta"][sel])))

            def mean(name: str, a: np.ndarray, unit: str | None = None) -> Measurement:
                se = float(np.std(a, ddof=1) / math.sqrt(a.size)) if a.size > 1 else None
                return Measurement(name, float(np.mean(a)), stderr=se, n=a.size, unit=unit, task=ch, extra=extra)

            yield Measurement("N", float(n), n=k, unit="entries", task=ch, extra=extra)
            yield Measurement("n_events", float(k), task=ch, extra=extra)
            if common.get("n_params"):
                yield Measurement("N_over_params", n / common["n_params"], task=ch, extra=extra)
            yield mean("S_mean", S, "topplings")
            yield mean("area_mean", A, "nodes")
            yield mean("T_mean", T, "sweeps")
            yield mean("M_mean", M, "load")
            yield Measurement("S_max", float(S.max()), n=k, task=ch, extra=extra)
            yield Measurement("T_max", float(T.max()), n=k, task=ch, extra=extra)
            yield Measurement("theta", extra["theta"], task=ch, extra=extra)
            yield Measurement("truncated_fraction", float(np.mean(ev["truncated"][sel])), n=k, task=ch, extra=extra)
            load = S if self.transport == "topplings" else M
            yield Measurement("V", float(load.mean() / T.mean()), n=k, task=ch, extra=extra)
            yield Measurement("v_rel", float(load.mean() / (n * T.mean())), n=k, task=ch, extra=extra)
            yield mean("v_rel_event", load / (n * T))
            t_mean[ch] = float(T.mean())
            for i in range(min(k, self.event_records)):
                lay = f"event{i:04d}"
                for key in ("S", "area", "T", "M"):
                    yield Measurement(key, float(ev[key][sel][i]), task=ch, layer=lay,
                                      extra={"rep": int(ev["rep"][sel][i])})
        if "real" in t_mean:
            for ch in self.channels:
                if ch != "real":
                    yield Measurement("T_norm", t_mean["real"] / t_mean[ch], task=ch,
                                      extra={"definition": f"T_mean(real) / T_mean({ch})"})

    @classmethod
    def plots(cls, records: Any, out_dir: Path) -> list[Path]:
        """D, z, delta and the closure residual against step, real vs both nulls (see `plots`)."""
        from .plots import draw

        return draw(records, out_dir)

    # ---- suite scope ----------------------------------------------------------------
    def _load_events(self, row: Any, artifact_root: Path) -> dict[str, np.ndarray] | None:
        try:
            extra = json.loads(row["extra"]) if isinstance(row["extra"], str) else (row["extra"] or {})
        except (TypeError, ValueError):
            return None
        path = extra.get("artifact")
        if not path:
            return None
        p = Path(path)
        if not p.exists():
            # the run root may have moved: find the artifact under this context's root
            parts = p.parts
            tail = parts[parts.index("events"):] if "events" in parts else ()
            p = artifact_root.joinpath(*tail) if tail else p
        if not p.exists():
            return None
        with np.load(p) as z:
            return {k: z[k] for k in z.files}

    def _collect(self, ctx: SuiteContext) -> tuple[dict[int, dict[str, dict[str, SizeEvents]]], dict]:
        """step -> channel -> size -> events, from this metric's checkpoint records/artifacts."""
        df = ctx.records
        if df is None or len(df) == 0:
            return {}, {}
        df = df[(df["metric"] == self.name) & (df["scope"] == Scope.CHECKPOINT.value) & (df["status"] == "ok")]
        nrows = df[df["measure"] == "N"]
        nparams = {r.size: r.n_params for r in ctx.refs if r.n_params}
        out: dict[int, dict[str, dict[str, SizeEvents]]] = {}
        notes: dict = {"excluded": []}
        for _, row in nrows.iterrows():
            ch, step, size = row["task"], int(row["step"]), str(row["size"])
            if ch not in self.channels:
                continue
            if self.system_size == "field":
                N = float(row["value"])
            else:
                N = float(row["n_params"]) if "n_params" in row and _finite(row["n_params"]) else nparams.get(size)
                if not N:
                    notes["excluded"].append(f"{size}@{step}: no parameter count")
                    continue
            ev = self._load_events(row, ctx.artifact_root)
            if ev is not None:
                sel = ev["channel"] == ch
                if bool(np.any(ev["truncated"][sel])):
                    notes["excluded"].append(f"{size}@{step}/{ch}: truncated at max_sweeps")
                    continue
                se = SizeEvents(size, N, ev["S"][sel].astype(float), ev["T"][sel].astype(float),
                                ev["M"][sel].astype(float), ev["area"][sel].astype(float))
            else:  # no artifact: one pseudo-event from the summary records (no bootstrap)
                here = df[(df["step"] == step) & (df["size"] == row["size"]) & (df["task"] == ch)]
                vals = {m_: here[here["measure"] == m_]["value"] for m_ in ("S_mean", "T_mean", "M_mean")}
                if any(len(v) == 0 for v in vals.values()):
                    continue
                se = SizeEvents(size, N, *(np.array([float(vals[m_].iloc[0])]) for m_ in ("S_mean", "T_mean", "M_mean")))
                notes.setdefault("no_artifact", []).append(f"{size}@{step}")
            if not (se.S.size and np.all(np.isfinite(se.S)) and se.S.mean() > 0 and se.T.min() >= 1):
                notes["excluded"].append(f"{size}@{step}/{ch}: degenerate cascade (S=0 or T<1)")
                continue
            prev = out.setdefault(step, {}).setdefault(ch, {}).get(size)
            if prev is not None:  # several runs of one size (seeds): pool their events
                se = SizeEvents(size, N, np.concatenate([prev.S, se.S]), np.concatenate([prev.T, se.T]),
                                np.concatenate([prev.M, se.M]), np.concatenate([prev.area, se.area]))
            out[step][ch][size] = se
        return out, notes

    def measure_suite(self, ctx: SuiteContext) -> Iterator[Measurement]:
        """Finite-size fits across sizes at every step shared by >= min_sizes sizes."""
        data, notes = self._collect(ctx)
        all_sizes = sorted({s for by_ch in data.values() for by_size in by_ch.values() for s in by_size})
        if len(all_sizes) < self.min_sizes:
            reason = (f"finite-size fits need >= {self.min_sizes} sizes with transport records; "
                      f"found {len(all_sizes)}: {all_sizes}")
            for ch in self.channels:
                for e in EXPONENTS:
                    yield Measurement.skipped(e, reason, task=ch)
            return
        for step in sorted(data):
            fits = {}
            for ch in self.channels:
                sizes = data[step].get(ch, {})
                if len(sizes) < self.min_sizes:
                    reason = (f"step {step}: {len(sizes)} included sizes ({sorted(sizes)}) < {self.min_sizes}")
                    for e in list(EXPONENTS) + ["closure_residual"]:
                        yield Measurement.skipped(e, reason, task=ch, step=step)
                    continue
                rng = np.random.default_rng([ctx.seed, step, zlib.crc32(ch.encode())])
                fit = fit_step(list(sizes.values()), self.statistic, self.transport, self.n_boot, rng)
                fits[ch] = fit
                yield from self._fit_records(fit, ch, step, notes)
            yield from self._departures(fits, step)

    def _fit_records(self, fit: Any, ch: str, step: int, notes: dict) -> Iterator[Measurement]:
        base = {"sizes": fit.sizes, "N": fit.N.tolist(), "statistic": self.statistic,
                "transport": self.transport, "system_size": self.system_size, "n_boot": self.n_boot}
        if notes.get("excluded"):
            base["excluded"] = notes["excluded"][:20]
        warn = None if fit.boot else "no per-event artifacts or single events: no bootstrap"
        for name in list(EXPONENTS) + ["delta_event"]:
            ci = fit.ci.get(name)
            extra = dict(base, ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None,
                         intercept=fit.intercepts[name], **{k: v for k, v in fit.compress.get(name, {}).items()})
            yield Measurement(name, fit.values[name], stderr=fit.stderr[name], n=len(fit.sizes), task=ch, step=step,
                              extra=extra, warning=warn)
            yield Measurement(name + "_intercept", fit.intercepts[name], stderr=fit.stderr.get(name + "_intercept"),
                              n=len(fit.sizes), task=ch, step=step, extra={"log": "natural", **base})
        for name in ("closure_residual", "closure_residual_rom"):
            ci = fit.ci.get(name)
            yield Measurement(name, fit.values[name], stderr=fit.stderr[name], task=ch, step=step,
                              extra=dict(base, ci_low=ci[0] if ci else None, ci_high=ci[1] if ci else None))
        for name, comp in fit.compress.items():
            yield Measurement(f"{name}_r2", comp["r2"], task=ch, step=step, extra=base)
            for key in ("curvature_t", "curvature_p", "delta_bic", "loso_spread"):
                if key in comp:
                    yield Measurement(f"{name}_{key}", comp[key], task=ch, step=step, extra=base)
                else:
                    yield Measurement.skipped(f"{name}_{key}", f"needs >= 4 sizes, have {len(fit.sizes)}",
                                              task=ch, step=step)
        for size, o in fit.per_size.items():
            b = fit.per_size_boot.get(size)
            se = float(np.std(b["v_rel"], ddof=1)) if b is not None else None
            yield Measurement("v_rel", o["v_rel"], stderr=se, task=ch, step=step, size=size,
                              extra={"N": o["N"], "S": o["S"], "T": o["T"]})

    def _departures(self, fits: dict, step: int) -> Iterator[Measurement]:
        real = fits.get("real")
        if real is None:
            return
        for ch, fit in fits.items():
            if ch == "real":
                continue
            for name in EXPONENTS:
                se = None
                if name in real.boot and name in fit.boot:
                    se = float(math.hypot(np.std(real.boot[name], ddof=1), np.std(fit.boot[name], ddof=1)))
                yield Measurement(f"{name}_departure", real.values[name] - fit.values[name], stderr=se, task=ch,
                                  step=step, extra={"definition": f"{name}(real) - {name}({ch})"})
            for size in set(real.per_size) & set(fit.per_size):
                yield Measurement("T_norm", real.per_size[size]["T"] / fit.per_size[size]["T"], task=ch, step=step,
                                  size=size, extra={"definition": f"T(real) / T({ch}) at this size and step"})


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v)) and float(v) > 0
    except (TypeError, ValueError):
        return False

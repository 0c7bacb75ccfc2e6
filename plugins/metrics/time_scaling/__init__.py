"""time_scaling: the "universal one-third" time-scaling fit of a loss curve (trajectory scope).

Time is the cumulative learning rate tau = sum of the learning rates of the updates applied
so far (the paper's "dynamic time"); when no learning rates are known, tau = step and the
records say so. Input curve: a recorded series (``curve``, default the ``loss`` records) or the
family's training log, resolved by `harness.curves.resolve_curve` (the shared precedence of
``source=auto``, the dropped-row counts reported in the records' ``warning``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from harness.api import Measurement, Metric, ParameterError, TrajectoryContext
from harness.curves import CurveSelector, clean_series, record_series, resolve_curve
from harness.params import Params, param
from harness_plugins.metrics.time_scaling.fit import fit_power_law, local_slopes, log_binned, ols_slope


def _curve_selector(value: Any) -> str:
    try:
        return str(CurveSelector.parse(value, "curve"))
    except ParameterError as exc:
        raise ValueError(exc.allowed) from None


class TimeScalingMetric(Metric):
    """Fits L = c * tau^-alpha + L0 against cumulative learning rate; flags curves that are no power law."""

    name = "time_scaling"
    version = "1"
    reads = ("loss",)

    class Params(Params):
        source: str = param("auto", "auto (the `curve` records when they have min_points, else the training "
                            "log; harness/curves.py) | records | history", choices=("auto", "records", "history"))
        fit_min_step: int | None = param(None, "fit window start in steps (null = from fit_min_fraction)")
        fit_max_step: int | None = param(None, "fit window end in steps (null = the last step)")
        fit_min_fraction: float = param(0.01, "with fit_min_step null: start the window at this fraction of the "
                                        "last step", ge=0, le=1)
        window_decades: float = param(0.5, "width of the local-slope windows, in decades of tau", gt=0)
        min_points: int = param(5, "fewer points in the window -> skipped", ge=3)
        max_slope_ratio: float = param(1.6, "power_law flag: local slopes may vary by at most this factor", ge=1)
        max_rsle: float = param(0.08, "power_law flag: largest root-mean-square log error of the fit", gt=0)
        max_loss_drop: float = param(1e-5, "power_law flag: a loss below this fraction of its start was learned "
                                     "exactly", ge=0, le=1)
        L0: float | None = param(None, "the irreducible loss when it is known (0 for a teacher the student can "
                                 "represent exactly): held fixed instead of fitted (null = fitted)", ge=0,
                                 hash_default=False)  # added later: old results roots still resume
        curve: str = param("loss:loss", "the recorded series to fit, metric:measure[:task] (see harness/curves.py)",
                           convert=_curve_selector, allowed="metric:measure or metric:measure:task",
                           hash_default=False)  # added later: old results roots still resume

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.selector = CurveSelector.parse(self.curve, "curve")

    # -- inputs -------------------------------------------------------------------------
    def _curve(self, ctx: TrajectoryContext) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str, Any]:
        """(steps, loss, logit_std or None, source description, the `harness.curves.Curve`)."""
        cur = resolve_curve(ctx, source=self.source, selector=self.selector, min_points=self.min_points)
        if cur.empty:
            return np.array([]), np.array([]), None, "none", cur
        if cur.source == "history":
            steps, loss = log_binned(cur.step, cur.value)
            return steps, loss, None, "training log (log-binned)", cur
        what = "loss records" if str(self.selector) == "loss:loss" else f"{self.selector} records"
        std = record_series(ctx.records, CurveSelector(self.selector.metric, "logit_std"), ctx.model_id)
        logit_std = None
        if len(std):
            std, _ = clean_series(std, "value")
            logit_std = std.set_index("step")["value"].reindex(cur.step).to_numpy(float)
        return cur.step, cur.value, logit_std, what, cur

    def _tau(self, ctx: TrajectoryContext, steps: np.ndarray) -> tuple[np.ndarray, str]:
        h = ctx.history
        if h is not None and "learning_rate" in h and len(h) and h["learning_rate"].notna().all():
            h, _ = clean_series(h, "learning_rate")  # sorted, one row per step
            cum = np.cumsum(h["learning_rate"].to_numpy(float))
            # tau(step s) = sum of the lrs of updates 1..s  (history row `step` = update number)
            tau = np.interp(steps, h["step"].to_numpy(float), cum, left=0.0)
            return tau, "cumulative learning rate"
        lrs = {r.step: r.learning_rate for r in ctx.refs}
        if lrs and all(v is not None for v in lrs.values()):
            known = sorted(lrs)
            # piecewise-constant between checkpoints: the rate at the left checkpoint applies
            cum, acc = {known[0]: known[0] * lrs[known[0]]}, known[0] * lrs[known[0]]
            for a, b in zip(known, known[1:]):
                acc += (b - a) * lrs[a]
                cum[b] = acc
            return np.array([cum.get(int(s), np.nan) for s in steps]), "cumulative learning rate (checkpoint lrs)"
        return steps.astype(float), "step (no learning rates known)"

    # -- the metric -----------------------------------------------------------------------
    def measure_trajectory(self, ctx: TrajectoryContext) -> Iterator[Measurement]:
        steps, loss, logit_std, source, cur = self._curve(ctx)
        data_warning = cur.warning()
        if len(steps) == 0:
            yield Measurement.skipped("alpha", cur.reason or "no loss curve", warning=data_warning)
            return
        tau, tau_kind = self._tau(ctx, steps)
        lo = self.fit_min_step if self.fit_min_step is not None else max(1.0, self.fit_min_fraction * steps.max())
        hi = self.fit_max_step if self.fit_max_step is not None else steps.max()
        sel = (steps >= lo) & (steps <= hi) & (tau > 0)
        extra: dict[str, Any] = {
            "source": source, "time": tau_kind, "fit_steps": [float(lo), float(hi)],
            "inputs": {"step": steps[sel].tolist(), "tau": tau[sel].tolist(), "loss": loss[sel].tolist()},
            "curve": cur.summary(),
        }
        extra["L0"] = "fitted" if self.L0 is None else f"fixed at {self.L0:g}"
        fit = fit_power_law(tau[sel], loss[sel], self.min_points, l0=self.L0)
        if fit.status != "ok":
            yield Measurement.skipped("alpha", fit.reason or "fit failed", n=fit.n, warning=data_warning, extra=extra)
            return
        extra["rsle"] = fit.rsle
        slopes = local_slopes(tau[sel], loss[sel], fit.params["L0"], self.window_decades)
        drop = float(loss[sel].min() / loss[np.isfinite(loss) & (loss > 0)][0])
        verdict, why = self._power_law_verdict(fit.rsle, [w["slope"] for w in slopes], drop)
        # the fitted parameters of a curve that is no power law are not results: flagged, so
        # tables show "flagged (no power law ...)" instead of a number; dropped input rows follow
        flag = None if verdict else f"flagged: no power law: {why}"
        warn = "; ".join(w for w in (flag, data_warning) if w) or None
        yield Measurement("alpha", fit.params["alpha"], stderr=fit.stderr["alpha"], n=fit.n, unit="exponent",
                          extra=extra, warning=warn)
        if self.L0 is None:  # a fixed L0 is an input, not a result
            yield Measurement("L0", fit.params["L0"], stderr=fit.stderr["L0"], n=fit.n, unit="loss", warning=warn)
        yield Measurement("c", fit.params["c"], stderr=fit.stderr["c"], n=fit.n, warning=warn)
        yield Measurement("fit_rsle", fit.rsle, n=fit.n, unit="log loss")

        # local slopes describe a power law; of a curve that is none they are not results either
        slope_warn = flag or None
        for w in slopes:
            centre = math.sqrt(w["tau_lo"] * w["tau_hi"])
            step_at = int(round(float(np.interp(math.log(centre), np.log(tau[sel]), steps[sel]))))
            yield Measurement("local_slope", w["slope"], stderr=w["stderr"], n=w["n"], step=step_at, unit="exponent",
                              warning=slope_warn, extra={"tau_window": [w["tau_lo"], w["tau_hi"]]})
        if slopes:  # the number the paper compares to 1/3: the slope of the run's last tau window
            w = slopes[-1]
            yield Measurement("asymptotic_slope", w["slope"], stderr=w["stderr"], n=w["n"], unit="exponent",
                              warning=slope_warn, extra={
                                  "tau_window": [w["tau_lo"], w["tau_hi"]], "window_decades": self.window_decades,
                                  "L0": extra["L0"],
                                  "expected": "about 1/3 for peaked targets (Liu et al. 2026); the last local slope"})

        if logit_std is not None:
            ok = sel & np.isfinite(logit_std) & (logit_std > 0)
            if ok.sum() >= self.min_points:
                slope, err = ols_slope(np.log(tau[ok]), np.log(logit_std[ok]))
                yield Measurement("logit_scale_exponent", slope, stderr=err, n=int(ok.sum()), unit="exponent",
                                  extra={"expected": "about +1/3 in the peaked regime"})

        yield Measurement("power_law", float(verdict), n=fit.n, message=why,
                          warning=None if verdict else f"no power law: {why}",
                          extra={"local_slopes": [w["slope"] for w in slopes]})

    def _power_law_verdict(self, rsle: float | None, slopes: list[float], drop: float) -> tuple[bool, str]:
        """A power law has a roughly constant local slope and a good fit. A target that is not
        peaked enough is learned exactly: the loss crashes exponentially (local slopes growing
        window after window) down to the numerical floor, many decades below where it started."""
        if drop < self.max_loss_drop:
            return False, f"loss fell to {drop:.1e} of its initial value: learned exactly (exponential crash)"
        if rsle is not None and rsle > self.max_rsle:
            return False, f"fit RSLE {rsle:.3f} > {self.max_rsle}"
        positive = [s for s in slopes if s > 0]
        if len(slopes) < 2:
            return True, "too few windows to test the local slope (fit only)"
        if len(positive) < len(slopes):
            return False, "local slope is not positive in every window"
        ratio = max(positive) / min(positive)
        if ratio > self.max_slope_ratio:
            return False, f"local slopes vary by a factor {ratio:.2f} > {self.max_slope_ratio}"
        return True, f"local slopes within a factor {ratio:.2f}"

    @classmethod
    def plots(cls, records, out_dir):
        """Loss against tau (log-log) with the fitted power law, and the local slopes against tau
        with the 1/3 line; a curve the metric flagged as no power law gets its data and the
        reason, never a fitted line (see `plots.draw`)."""
        from harness_plugins.metrics.time_scaling.plots import draw

        return draw(records, out_dir, metric=cls.name)

"""The ``deceleration`` metric: a broken-neural-scaling-law fit of one run's loss curve.

Trajectory scope: once per training run (model_id), after its checkpoints. The curve is a
recorded series (``curve``, default the ``loss`` records at the run's checkpoints) or the
family's training-loss log (``ctx.history``), resolved by `harness.curves.resolve_curve` (the
precedence of ``source=auto`` is documented there, shared with ``time_scaling``). The fit
(`bnsl.fit_bnsl`; ``mode=robust`` by default, ``mode=zsl`` is the authors' exact procedure)
gives the loss-deceleration quantities of Mircea et al. 2025:

* ``t_d``: the deceleration point (first break, in steps or tokens),
* ``L_d``: the loss at deceleration, ``r_d``: the log-log rate after it,
* ``loss_extrapolated``: ``L_d * (T / t_d)**-r_d`` at the target ``T``,
* ``rsle``: root mean squared log error of the fit, and ``param_<name>`` per fit parameter,

each with a standard error from the fit covariance. The fitted points (after preprocessing)
go into the ``extra`` of the ``t_d`` record and, with the raw curve, into
``<artifacts>/<model_id>/fit.json``, so every fit can be redone.

Example::

    python -m harness model=loss_log model.path=train_loss.csv metric=deceleration
    python -m harness model=pythia metric='[loss,deceleration]' metric.deceleration.source=records
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.api import (
    Measurement,
    Metric,
    ParameterError,
    Scope,
    TrajectoryContext,
    check_choice,
    check_range,
)

from harness.curves import CurveSelector, resolve_curve

from . import bnsl

logger = logging.getLogger(__name__)

SOURCES = ("auto", "records", "history")
#: the authors' transient cut (100 steps) as a fraction of their run length (262,144 steps):
#: robust mode cuts ``TRANSIENT_FRACTION * last step``, which is 100 on the authors' runs
TRANSIENT_FRACTION = 100 / 262_144
X_KEYS = ("step", "tokens_seen")
AUTO_BOOL = ("auto", True, False)
HEADLINE = ("t_d", "L_d", "r_d", "loss_extrapolated", "rsle")
MAX_BREAKS = 5
#: curves up to this many rows are kept in fit.json as lists; longer ones in curve.npz
RAW_JSON_ROWS = 300_000


def _auto_bool(key: str, value: Any) -> str | bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if value is None:
        value = "auto"
    check_choice(key, value, AUTO_BOOL)
    return value


class DecelerationMetric(Metric):
    """Loss deceleration (t_d, L_d, r_d) from a BNSL fit of a run's loss curve."""

    name = "deceleration"
    version = "1"
    scopes = (Scope.TRAJECTORY,)
    reads = ("loss",)

    def __init__(
        self,
        source: str = "auto",
        x: str = "step",
        mode: str = "robust",
        n_breaks: int = 1,
        break_guess: float | Sequence[float] | None = None,
        smooth: str | bool = "auto",
        subsample: str | bool = "auto",
        min_step: float | None = None,
        target: float | None = None,
        bounds: bool = False,
        n_starts: int | None = None,
        grid: Mapping[str, Sequence[float]] | None = None,
        grid_engine: str = "vectorized",
        maxfev: int | None = None,
        curve: str = "loss:loss",
    ):
        check_choice("source", source, SOURCES)
        check_choice("x", x, X_KEYS)
        check_choice("mode", mode, bnsl.MODES)
        check_range("n_breaks", n_breaks, 1, MAX_BREAKS)
        if int(n_breaks) != n_breaks:
            raise ParameterError("n_breaks", n_breaks, f"an integer from 1 to {MAX_BREAKS}")
        n_breaks = int(n_breaks)
        if break_guess is not None:
            guesses = [break_guess] if isinstance(break_guess, (int, float)) else list(break_guess)
            if len(guesses) != n_breaks:
                raise ParameterError("break_guess", break_guess, f"null or {n_breaks} positive number(s) (one per break)")
            for g in guesses:
                check_range("break_guess", g, 0, low_inclusive=False)
            break_guess = sorted(float(g) for g in guesses)
        smooth, subsample = _auto_bool("smooth", smooth), _auto_bool("subsample", subsample)
        if min_step is not None:
            check_range("min_step", min_step, 0)
        if target is not None:
            check_range("target", target, 0, low_inclusive=False)
        if n_starts is not None:
            check_range("n_starts", n_starts, 1, 100)
            n_starts = int(n_starts)
        selector = CurveSelector.parse(curve, "curve")
        check_choice("grid_engine", grid_engine, bnsl.GRID_ENGINES)
        if maxfev is not None:
            check_range("maxfev", maxfev, 1)
            maxfev = int(maxfev)
        if grid is not None:
            grid = {str(k): [float(v) for v in r] for k, r in dict(grid).items()}
            try:
                bnsl._caballero_ranges(grid, n_breaks)
            except ValueError as exc:
                raise ParameterError("grid", grid, str(exc)) from None
            for k, r in grid.items():
                if len(r) != 3 or not r[2] > 0 or not r[1] > r[0]:
                    raise ParameterError(f"grid.{k}", r, "[start, stop, step] with stop > start and step > 0")
        super().__init__(
            source=source, x=x, mode=mode, n_breaks=n_breaks, break_guess=break_guess, smooth=smooth,
            subsample=subsample, min_step=min_step, target=target, bounds=bool(bounds), n_starts=n_starts,
            grid=grid, grid_engine=grid_engine, maxfev=maxfev, curve=str(selector),
        )
        self.selector = selector
        self.cfg = self.params

    # ---- the input curve ------------------------------------------------------------------
    def curve(self, ctx: TrajectoryContext) -> tuple[pd.DataFrame, str, Any]:
        """The run's curve as a DataFrame (``step``, ``x``, ``loss``) sorted by step, the
        source it came from (``history`` or ``records``) and the `harness.curves.Curve`
        (drop counts, reason when empty)."""
        need = len(bnsl.param_names(self.cfg["mode"], self.cfg["n_breaks"])) + 1
        cur = resolve_curve(ctx, source=self.cfg["source"], selector=self.selector, min_points=need)
        if self.cfg["source"] == "history" and cur.empty and cur.n_rows == 0:
            raise ValueError(f"source=history but the family has no training log for model {ctx.model_id!r}")
        xs = cur.step if self.cfg["x"] == "step" else cur.tokens_seen
        if len(cur) and self.cfg["x"] != "step" and np.isnan(xs).all():
            raise ValueError(f"x={self.cfg['x']} but {cur.what} has no {self.cfg['x']!r} values; use x=step")
        frame = pd.DataFrame({"step": cur.step, "x": xs, "loss": cur.value})
        return frame, cur.source, cur

    def preprocessing(self, curve: pd.DataFrame, source: str) -> dict[str, Any]:
        """Resolve ``auto`` preprocessing: the authors' smoothing and subsampling apply to a
        dense training log in zsl mode, never to the sparse checkpoint records."""
        mode = self.cfg["mode"]
        zsl = mode == "zsl"
        steps = curve["step"].to_numpy()
        uniform = len(steps) > 2 and np.all(np.diff(steps) == steps[1] - steps[0])
        smooth = self.cfg["smooth"]
        if smooth == "auto":
            smooth = bool(zsl and source == "history" and uniform)
        subsample = self.cfg["subsample"]
        if subsample == "auto":
            subsample = bool(zsl and source == "history")
        min_step = self.cfg["min_step"]
        if min_step is None:  # zsl: the authors' 100 steps; robust: the same fraction of this run
            last = float(steps.max()) if len(steps) else 0.0
            min_step = 100.0 if zsl else (TRANSIENT_FRACTION * last if mode == "robust" else 0.0)
        return {"smooth": smooth, "subsample": subsample, "min_step": float(min_step), "uniform_steps": bool(uniform)}

    # ---- measuring -----------------------------------------------------------------------------
    def fit(self, curve: pd.DataFrame, prep: Mapping[str, Any]) -> bnsl.BNSLFit:
        """Preprocess (on steps, the authors' axis) and fit against the chosen x."""
        curve = curve[np.isfinite(curve["loss"].to_numpy(dtype=float))]
        steps = curve["step"].to_numpy(dtype=float)
        loss = curve["loss"].to_numpy(dtype=float)
        xs = curve["x"].to_numpy(dtype=float)
        if prep["smooth"] and len(loss):
            loss = bnsl.log_moving_average(loss)
        keep = bnsl.subsample_mask(steps) if prep["subsample"] and len(steps) else np.ones(len(steps), bool)
        keep &= steps > prep["min_step"]
        return bnsl.fit_bnsl(
            xs[keep], loss[keep], mode=self.cfg["mode"], n_breaks=self.cfg["n_breaks"],
            break_guess=self.cfg["break_guess"], bounds=self.cfg["bounds"], n_starts=self.cfg["n_starts"],
            grid=self.cfg["grid"], grid_engine=self.cfg["grid_engine"], maxfev=self.cfg["maxfev"],
        )

    def measure(self, ctx: TrajectoryContext) -> Iterator[Measurement]:
        if not isinstance(ctx, TrajectoryContext):
            raise TypeError(f"deceleration is a trajectory-scope metric, got {type(ctx).__name__}")
        curve, source, cur = self.curve(ctx)
        unit = "tokens" if self.cfg["x"] == "tokens_seen" else "steps"
        if len(curve) == 0:
            reason = cur.reason or f"no loss curve for {ctx.model_id!r}"
            for m in HEADLINE:
                yield Measurement.skipped(m, reason, warning=cur.warning())
            return
        prep = self.preprocessing(curve, source)
        fit = self.fit(curve, prep)
        finite = curve[np.isfinite(curve["x"].to_numpy(dtype=float))]
        target = float(self.cfg["target"]) if self.cfg["target"] is not None else float(finite["x"].max())
        summary = {**fit.to_dict(), "source": source, "x_key": self.cfg["x"], "unit": unit, "target": target,
                   "preprocessing": prep, "n_raw": int(len(curve)), "curve": cur.summary()}
        self._write_artifact(ctx, summary, curve)
        data_warning = cur.warning()
        if not fit.ok:
            make = Measurement.error if fit.status == "failed" else Measurement.skipped
            reason = fit.message if fit.status == "no_break" else f"BNSL fit {fit.status}: {fit.message}"
            for m in HEADLINE:
                yield make(m, reason, warning=data_warning, extra={"fit": summary} if m == "t_d" else {})
            return
        warn = "; ".join(([data_warning] if data_warning else []) + fit.warnings) or None
        se = fit.derived_stderr(target)
        n = len(fit.x)
        small = {"mode": fit.mode, "n_breaks": fit.n_breaks, "source": source, "x_key": self.cfg["x"]}
        t_d_extra = {"fit": summary, "t_d_range": self._break_range(fit)}
        yield Measurement("t_d", fit.t_d, stderr=_f(se["t_d"]), n=n, unit=unit, warning=warn, extra=t_d_extra)
        yield Measurement("L_d", fit.L_d, stderr=_f(se["L_d"]), n=n, unit="loss", higher_is_better=False,
                          warning=warn, extra=small)
        yield Measurement("r_d", fit.r_d, stderr=_f(se["r_d"]), n=n, higher_is_better=True, warning=warn, extra=small)
        yield Measurement("loss_extrapolated", fit.extrapolate(target), stderr=_f(se["loss_extrapolated"]), n=n,
                          unit="loss", higher_is_better=False, warning=warn,
                          extra={**small, "target": target, "law_at_target": float(fit.predict([target])[0])})
        yield Measurement("rsle", fit.rsle, n=n, higher_is_better=False, warning=warn, extra=small)
        for name, value, err in zip(fit.names, fit.params, fit.stderr().values()):
            yield Measurement(f"param_{name}", float(value), stderr=_f(err), n=n, warning=warn, extra=small)

    @staticmethod
    def _break_range(fit: bnsl.BNSLFit) -> list[float] | None:
        """``d1_min/max`` as the authors report them: exp(d1log -+ sigma) in zsl mode."""
        if "d1log" not in fit.names:
            return None
        s = fit.stderr().get("d1log", math.nan)
        if not math.isfinite(s):
            return None
        d = fit.value("d1log")
        return [math.exp(d - s), math.exp(d + s)]

    def _write_artifact(self, ctx: TrajectoryContext, summary: dict[str, Any], curve: pd.DataFrame) -> None:
        try:
            out = ctx.artifact_dir(ctx.model_id) / "fit.json"
            if len(curve) <= RAW_JSON_ROWS:
                raw: Any = {c: curve[c].astype(float).tolist() for c in ("step", "x", "loss")}
            else:  # bounded memory: a long log goes to a binary file, not into Python lists
                np.savez(out.parent / "curve.npz", **{c: curve[c].to_numpy(float) for c in ("step", "x", "loss")})
                raw = {"file": "curve.npz", "rows": int(len(curve))}
            payload = {**summary, "model_id": ctx.model_id, "config": _jsonable(self.cfg), "raw": raw}
            out.write_text(json.dumps(payload, allow_nan=True, default=_jsonable))
        except OSError as exc:  # an artifact is a convenience; the records carry the fit inputs
            logger.warning("could not write the deceleration artifact for %s: %s", ctx.model_id, exc)

    # ---- plots ---------------------------------------------------------------------------------
    def plots(self, records: pd.DataFrame, out_dir: Path) -> list[Path]:
        """One figure per run: the fitted points, the fitted law out to the target, t_d."""
        from .plots import plot_fits

        return plot_fits(records, Path(out_dir), metric=self.name)


def _f(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)

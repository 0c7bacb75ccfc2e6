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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.api import Measurement, Metric, ParameterError, TrajectoryContext, check_choice
from harness.curves import CurveSelector, resolve_curve
from harness.params import Params, param

from . import bnsl

logger = logging.getLogger(__name__)

SOURCES = ("auto", "records", "history")
#: the authors' run length (OLMo runs of 262,144 steps), against which their constants are set
AUTHORS_STEPS = 262_144
#: the authors' transient cut (100 steps) as a fraction of their run length: ``min_step: auto``
#: cuts ``transient_fraction * last step`` (100 on the authors' runs, 2.3 on a 6000-step run)
TRANSIENT_FRACTION = 100 / AUTHORS_STEPS
#: the authors' break guess (``d1_est = 6000`` steps) as a fraction of their run length: zsl's
#: ``break_guess: auto`` is ``BREAK_FRACTION * last step`` (6000 on the authors' runs)
BREAK_FRACTION = bnsl.ZSL_BREAK_GUESS / AUTHORS_STEPS
AUTO = "auto"
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


def _guesses(value: Any) -> list[float] | str:
    if value is None or (isinstance(value, str) and value.lower() == AUTO):
        return AUTO
    guesses = [value] if isinstance(value, (int, float)) else list(value)
    if any(isinstance(g, bool) or not isinstance(g, (int, float)) for g in guesses):
        raise TypeError("break_guess")
    return sorted(float(g) for g in guesses)


def _min_step(value: Any) -> float | str:
    if value is None or (isinstance(value, str) and value.lower() == AUTO):
        return AUTO
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise TypeError("min_step")
    return float(value)


def _grid(value: Any) -> dict[str, list[float]] | None:
    if value is None:
        return None
    return {str(k): [float(v) for v in r] for k, r in dict(value).items()}


def _curve_selector(value: Any) -> str:
    try:
        return str(CurveSelector.parse(value, "curve"))
    except ParameterError as exc:
        raise ValueError(exc.allowed) from None


class DecelerationMetric(Metric):
    """Loss deceleration (t_d, L_d, r_d) from a BNSL fit of a run's loss curve."""

    name = "deceleration"
    version = "1"
    reads = ("loss",)

    class Params(Params):
        source: str = param("auto", "auto | records | history: the `curve` records when they have enough points, "
                            "else the training log (harness/curves.py)", choices=SOURCES)
        x: str = param("step", "step | tokens_seen: the fit's x axis (t_d and target are in its units)",
                       choices=X_KEYS)
        mode: str = param("robust", "robust (any curve: floor, breaks from the data, multi-start, bounds) | zsl "
                          "(Mircea et al.'s exact fit) | caballero (BNSL repo)", choices=bnsl.MODES)
        n_breaks: int = param(1, "breaks in the law; t_d, L_d, r_d are about the first", ge=1, le=MAX_BREAKS)
        break_guess: Any = param(
            AUTO, "initial break(s); auto = adapted to the run: robust: from the data (hinge fit); zsl: the "
            "authors' 6000/262144 of the last step (6000 on their runs; break_fraction); or n_breaks numbers",
            convert=_guesses, allowed="auto or n_breaks positive number(s) (one per break)")
        smooth: Any = param("auto", "authors' log moving average; auto = on for a uniformly logged history in "
                            "zsl mode", convert=lambda v: _auto_bool("smooth", v), allowed="auto, true or false")
        subsample: Any = param("auto", "authors' log-spaced subsampling; auto = on for a history in zsl mode",
                               convert=lambda v: _auto_bool("subsample", v), allowed="auto, true or false")
        min_step: Any = param(AUTO, "drop transient steps <= this; auto = transient_fraction x the last step "
                              "in robust and zsl (100 on the authors' 262144-step runs), 0 in caballero; "
                              "min_step=100 is the authors' literal cut", convert=_min_step,
                              allowed="auto or a number >= 0")
        transient_fraction: float = param(TRANSIENT_FRACTION, "min_step=auto cuts this fraction of the run "
                                          "(default the authors' 100/262144)", ge=0, lt=1,
                                          hash_default=False)
        break_fraction: float = param(BREAK_FRACTION, "zsl's break_guess=auto: this fraction of the run "
                                      "(default the authors' 6000/262144)", gt=0, lt=1,
                                      hash_default=False)
        target: float | None = param(None, "x at which to extrapolate the loss; null = the curve's last x", gt=0)
        bounds: bool = param(False, "zsl/caballero: f in [1e-3, 10], breaks inside the data range, b > 0, "
                             "a >= 0 (robust: always)")
        n_starts: int | None = param(None, "starts (breaks spread over the data; the best fit wins); null = 1 in "
                                     "zsl/caballero, 6 in robust", ge=1, le=100)
        grid: dict[str, Any] | None = param(None, "caballero grid, {a|p_b|c0|c|p_d|f: [start, stop, step]}; "
                                            "null = the BNSL repo's", convert=_grid,
                                            allowed="null or {name: [start, stop, step]}")
        grid_engine: str = param("vectorized", "vectorized (tabulated, ~12x faster) | brute "
                                 "(scipy.optimize.brute): same grid, same argmin", choices=bnsl.GRID_ENGINES)
        maxfev: int | None = param(None, "optimiser budget per start (function evaluations); null = scipy "
                                   "default in zsl (as the authors), 100000 in caballero", ge=1)
        curve: str = param("loss:loss", "the recorded series to fit, metric:measure[:task] (see "
                           "harness/curves.py for source=auto)", convert=_curve_selector,
                           allowed="metric:measure or metric:measure:task")

        def check(self) -> None:
            """break_guess has one value per break; the caballero grid names known parameters."""
            if self.break_guess != AUTO and (len(self.break_guess) != self.n_breaks
                                             or not all(g > 0 for g in self.break_guess)):
                raise ParameterError("break_guess", self.break_guess,
                                     f"auto or {self.n_breaks} positive number(s) (one per break)")
            if self.grid is not None:
                try:
                    bnsl._caballero_ranges(self.grid, self.n_breaks)
                except ValueError as exc:
                    raise ParameterError("grid", self.grid, str(exc)) from None
                for k, r in self.grid.items():
                    if len(r) != 3 or not r[2] > 0 or not r[1] > r[0]:
                        raise ParameterError(f"grid.{k}", r, "[start, stop, step] with stop > start and step > 0")

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.selector = CurveSelector.parse(self.params["curve"], "curve")
        self.cfg = self.params

    # ---- the input curve ------------------------------------------------------------------
    def loss_curve(self, ctx: TrajectoryContext) -> tuple[pd.DataFrame, str, Any]:
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
        last = float(steps.max()) if len(steps) else 0.0
        min_step = self.cfg["min_step"]
        if min_step == AUTO:  # the authors' cut scaled to this run's length (caballero: none)
            min_step = self.cfg["transient_fraction"] * last if mode in ("robust", "zsl") else 0.0
        guess = self.cfg["break_guess"]
        if guess == AUTO:  # robust: from the data; zsl: the authors' guess scaled to this run
            guess = [self.cfg["break_fraction"] * last] if zsl and self.cfg["n_breaks"] == 1 and last > 0 else None
        return {"smooth": smooth, "subsample": subsample, "min_step": float(min_step), "uniform_steps": bool(uniform),
                "break_guess": guess}

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
            break_guess=prep.get("break_guess"), bounds=self.cfg["bounds"], n_starts=self.cfg["n_starts"],
            grid=self.cfg["grid"], grid_engine=self.cfg["grid_engine"], maxfev=self.cfg["maxfev"],
        )

    def measure_trajectory(self, ctx: TrajectoryContext) -> Iterator[Measurement]:
        curve, source, cur = self.loss_curve(ctx)
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
    @classmethod
    def plots(cls, records: pd.DataFrame, out_dir: Path) -> list[Path]:
        """One figure per run: the fitted points, the fitted law out to the target, t_d."""
        from .plots import plot_fits

        return plot_fits(records, Path(out_dir), metric=cls.name)


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

"""INC autotune for optkit.torch.quantize (optkit.torch.quant): scores every config INC tries, keeps the trials, and
rebuilds the best model when INC's config loader runs dry; INC's relative tolerance rule."""
from __future__ import annotations

from typing import Any

from ._inc import _CFG_FIELDS, _allow_train_eval, _config_dict, _qconfig_of


def _passes(score: float, baseline: float, tolerance: float) -> bool:
    return score >= baseline * (1 - tolerance)  # INC's rule (TuningMonitor.need_stop)


def _rel_loss(score: float, baseline: float) -> float:
    return (baseline - score) / baseline if baseline else float("nan")


def _autotune(exported, autotune, TuningConfig, StaticConfig, eval_fn, run_calib, tolerance, max_trials,
              example_inputs, quiet):
    """INC autotune over the static PT2E config set; returns (model, info) with every trial INC ran."""
    tolerance = 0.01 if tolerance is None else float(tolerance)
    trials: list[dict] = []
    state: dict[str, Any] = {"baseline": None}

    def scored(model):
        cfg = _qconfig_of(model)
        _allow_train_eval(model)
        with quiet.loud():
            score = float(eval_fn(model))
        if cfg is None:  # INC scores the float (exported) model first: the baseline
            if not score > 0:
                raise ValueError(f"eval_fn must return a positive, higher-is-better score (INC's tolerance is "
                                 f"relative to it); it returned {score!r} for the float model")
            state["baseline"] = score
        else:
            trials.append({"trial": len(trials) + 1, "config": _config_dict(cfg), "score": score,
                           "passed": _passes(score, state["baseline"], tolerance)})
        return score

    config_set = StaticConfig.get_config_set_for_tuning()  # act_sym x act_algo, PT2E static (not IPEX, not WOQ)
    tune_config = TuningConfig(config_set=[config_set], tolerable_loss=tolerance, max_trials=int(max_trials))
    qmodel = autotune(exported, tune_config, eval_fn=scored, run_fn=run_calib, example_inputs=example_inputs)
    if not trials:
        raise RuntimeError("INC autotune ran no trial (empty config set)")
    chosen_cfg = _qconfig_of(qmodel) if qmodel is not None else None
    best = max(trials, key=lambda t: t["score"])
    if qmodel is None:  # INC returns None when its config loader ran dry before its stop rule fired
        import copy

        from neural_compressor.torch.quantization import quantize as inc_quantize

        chosen_cfg = StaticConfig(**{k: best["config"][k] for k in _CFG_FIELDS if k in best["config"]})
        model = copy.deepcopy(exported)
        model._exported, model.dynamic_shapes = True, getattr(exported, "dynamic_shapes", None)
        qmodel = inc_quantize(model, chosen_cfg, run_fn=run_calib, example_inputs=example_inputs)
    _allow_train_eval(qmodel)
    chosen = _config_dict(chosen_cfg) if chosen_cfg is not None else best["config"]
    selected = next((t for t in trials if t["config"] == chosen and t["passed"]), None) \
        or next((t for t in trials if t["config"] == chosen), best)
    info = {"config": chosen, "trials": trials, "baseline": state["baseline"], "score": selected["score"],
            "selected_trial": selected["trial"], "tolerance": tolerance,
            "max_trials": min(int(max_trials), int(getattr(tune_config, "max_trials", max_trials))),
            "met_tolerance": any(t["passed"] for t in trials)}
    return qmodel, info

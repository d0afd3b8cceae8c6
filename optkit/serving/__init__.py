"""Serving-spec search (``optkit tune``): the backend, precision, intra-op threads and batch size that serve a model
best under a latency SLO and an accuracy tolerance, found by Bayesian optimization instead of a full load-test grid.

    res = optkit.serving.tune("model.onnx", precisions="fp32,int8", batches="1,2,4,8,16,32", slo="p99<20ms",
                              objective="throughput", tolerance="1%", budget="25%", data="calib.npz")
    res["recommended"]   # {"backend", "precision", "threads", "batch", "artifact", "expected": {p50/p99/throughput}}

How it works:

- **Variants**: each requested (backend, precision) is built once with ``optkit.optimize`` from a built-in recipe
  (``RECIPES``) into ``TUNE_DIR/variants/<backend>-<precision>/<version>/`` and reused by later runs while the input
  model, the recipe and the data are unchanged. Its accuracy against the input model (top-1 with labels, else cosine)
  is judged against ``tolerance``: a variant that misses it is *infeasible* and is not timed (no trial can make it
  accurate). A backend whose ``status()`` is not ok is listed in ``unavailable`` with the reason.
- **Trials**: one trial = (variant, threads, batch). An ``Executor`` runs it; ``LocalExecutor`` starts a child
  process per trial (``python -m optkit.serving.worker``) that loads the variant with that many intra-op threads,
  feeds a batch built from the data (``Samples.batched``), warms up and times ``rounds`` rounds (the bench protocol).
  A crash, hang or error in the child costs that one trial (status ``failed``); the search goes on. One worker by
  default: trials that run at the same time share cores and distort each other's timing.
- **Search**: optuna (``sampler='auto'``: its Gaussian-process sampler when torch is installed, else TPE; or
  ``'gp'``, ``'tpe'``, ``'random'``, ``'grid'`` to measure every point) over the variant (categorical) and the indices of the sorted thread and batch lists
  (integers, so neighbouring batch sizes inform each other). SLO misses are reported to the sampler as constraint
  violations. A point is never measured twice: repeats within a run are answered from memory, and every measured
  point is kept in ``TUNE_DIR/trial-cache.json`` keyed by the variant's sha256, the protocol, the feed and the
  machine, so a re-run measures only new points.
- **Output**: ``serving.json`` (schema ``optkit.serving/1``): the recommended spec, the Pareto set of throughput vs
  p99, every trial, the variants, the unavailable backends; and ``serving.svg`` (throughput vs p99 plot). For an
  ONNX file they go to ``OUTPUT/<name>/tune/``; for an artifact directory ``serving.json`` and ``serving.svg`` go
  into the artifact itself and the working files into ``ARTIFACT/tune/``.

The package, by concern: ``spec`` (SLO, budget and list parsing, shared constants), ``executors`` (where trials run;
child processes through ``optkit.child``), ``worker`` (the child-process side: ``measure``), ``search`` (optuna /
grid, Pareto front, best trial), ``variants`` (building and judging the variants), ``cache`` (the trial cache),
``plot`` (serving.svg) and ``tuning`` (``tune`` itself, step by step).
"""
from __future__ import annotations

from .cache import TrialCache
from .executors import WORKER, Executor, LocalExecutor, ReplayExecutor, TrialSpec, make_executor, trial_key
from .plot import svg_plot
from .search import (Space, best_trial, classify, n_startup_for, objective_value, pareto_front, resolve_sampler,
                     search)
from .spec import (CACHE_FILE, DEFAULT_BATCHES, OBJECTIVES, PRECISIONS, RECIPES, RESULT_MARK, SAMPLERS, SERVING,
                   SERVING_SCHEMA, SERVING_SVG, STATIC_SHAPE_BACKENDS, SloTerm, default_threads, parse_int_list,
                   parse_names, parse_slo, parse_tune_budget)
from .tuning import tune
from .variants import _resolve_input  # noqa: F401  (tests resolve tune's output paths with it)

def __getattr__(name: str):
    # the child-side code loads only where it runs (python -m optkit.serving.worker imports it as __main__)
    if name == "measure":
        from .worker import measure

        return measure
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["tune", "search", "Space", "TrialSpec", "Executor", "LocalExecutor", "ReplayExecutor", "TrialCache",
           "make_executor", "trial_key", "WORKER", "parse_slo", "parse_tune_budget", "parse_int_list", "parse_names",
           "default_threads", "SloTerm", "pareto_front", "best_trial", "classify", "objective_value", "n_startup_for",
           "resolve_sampler", "measure", "svg_plot", "RECIPES", "SERVING", "SERVING_SVG", "SERVING_SCHEMA",
           "CACHE_FILE", "DEFAULT_BATCHES", "OBJECTIVES", "PRECISIONS", "RESULT_MARK", "SAMPLERS",
           "STATIC_SHAPE_BACKENDS"]

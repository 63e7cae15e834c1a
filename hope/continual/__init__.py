"""Continual learning: does a model forget what it learned when it learns something new?

* `metrics`: ACC, backward transfer, Chaudhry forgetting, forward transfer of a result matrix `R`;
* `methods`: experience replay (bounded buffer) and EWC (diagonal Fisher);
* `common`: one (architecture, method) run through a sequence of stages, resumable per stage;
* `lm`: domain-incremental language modelling and forgetting at inference (`hope continual lm`);
* `tasks`, `classify`: class-incremental classification from labelled text, scored by the language
  model's likelihood of each label (`hope continual classify`);
* `report`: results.json, results.md, heatmaps of `R` and forgetting curves.

docs/continual.md describes the benchmarks and our results.
"""
